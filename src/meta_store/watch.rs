//! The `MapWatch` service (SPEC §9.5): streams the map's version to
//! watching clients, first as it is, then after each change, so a client
//! learns of a change within a round trip instead of polling for it.
//!
//! Whoever applies updates holds the [`MapChanges`] and bumps it; each
//! stream follows a `watch` receiver, which keeps only the newest value: a
//! slow client skips versions, never the last one.

use std::pin::Pin;

use futures::Stream;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::proto::MapVersion;
use crate::proto::map_watch_server::{MapWatch, MapWatchServer};

/// The map's version, as its owner publishes it.
#[derive(Debug, Clone)]
pub struct MapChanges {
    sender: watch::Sender<i64>,
}

impl Default for MapChanges {
    fn default() -> Self {
        Self {
            sender: watch::Sender::new(0),
        }
    }
}

impl MapChanges {
    /// Counts one more change.
    pub fn bump(&self) {
        self.sender.send_modify(|version| *version += 1);
    }

    /// Publishes `version` (e.g. the last applied log index), if it differs.
    pub fn set(&self, version: i64) {
        self.sender.send_if_modified(|current| {
            let changed = *current != version;
            *current = version;
            changed
        });
    }

    /// The `MapWatch` service streaming these changes.
    pub fn into_server(self) -> MapWatchServer<MapWatchService> {
        MapWatchServer::new(MapWatchService {
            changes: self.sender.subscribe(),
        })
    }
}

/// Serves `WatchFileInfoMap` from a [`MapChanges`].
#[derive(Debug, Clone)]
pub struct MapWatchService {
    changes: watch::Receiver<i64>,
}

/// The stream of one watching client.
type VersionStream = Pin<Box<dyn Stream<Item = Result<MapVersion, Status>> + Send>>;

#[tonic::async_trait]
impl MapWatch for MapWatchService {
    type WatchFileInfoMapStream = VersionStream;

    async fn watch_file_info_map(
        &self,
        _request: Request<()>,
    ) -> Result<Response<VersionStream>, Status> {
        let mut changes = self.changes.clone();
        changes.mark_changed();
        // Ends when the owner is gone (the server shuts down).
        let stream = futures::stream::unfold(changes, |mut changes| async move {
            changes.changed().await.ok()?;
            let version = *changes.borrow_and_update();
            Some((Ok(MapVersion { version }), changes))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn a_stream_starts_with_the_current_version_and_follows_changes() {
        let changes = MapChanges::default();
        changes.bump();
        let service = MapWatchService {
            changes: changes.sender.subscribe(),
        };
        let mut stream = service
            .watch_file_info_map(Request::new(()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(stream.next().await.unwrap().unwrap().version, 1);
        changes.bump();
        assert_eq!(stream.next().await.unwrap().unwrap().version, 2);
        changes.set(2);
        changes.set(7);
        assert_eq!(stream.next().await.unwrap().unwrap().version, 7);
        drop(changes);
        assert!(stream.next().await.is_none());
    }
}
