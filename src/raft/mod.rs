//! The Raft-replicated MetaStore (SPEC §5).
//!
//! The algorithm lives in [`core`], a pure, deterministic state machine: calls
//! and messages in, messages and effects ([`Ready`]) out, no I/O and no clock.
//! Everything else drives it: the node feeds it RPCs and replies, persists
//! what it says must be durable, sends what it says to send, and applies what
//! it says is committed to a [`crate::meta_store::FileMap`].

pub mod core;
pub mod election;
mod limits;
mod log;
pub mod node;
mod progress;
pub mod quorum;
mod request;
pub mod service;
pub mod storage;
pub mod transport;

pub use self::core::{
    NotLeader, Outgoing, OutgoingSnapshot, RaftCore, Ready, ReplicationStatus, SentAppend,
    SnapshotWrite, TermExhausted,
};
pub use self::election::{ElectionConfig, VoteAsk, VoteRequest};
pub use self::progress::MAX_INFLIGHT;
pub use self::request::{AppendRequest, InvalidAppend, SnapshotChunk, SnapshotRequest};

use prost::Message;

use crate::proto::{FileMetaData, UpdateOperation};

/// A Raft term. Every server starts at term 0.
pub type Term = i64;

/// The highest term a server may hold. SetLeader raises the term by one, so
/// at `i64::MAX` it could not start a newer term, and leading the same one
/// again would give a term two leaders; one below leaves no valid term that
/// `+ 1` overflows. SetLeader refuses to go past it, and a request carrying
/// a higher term is refused as forged.
pub const MAX_TERM: Term = i64::MAX - 1;

/// A 0-based log index; -1 means "before the first entry".
pub type LogIndex = i64;

/// A server's position in the cluster config (`MetaStoreAddrs[id]`).
pub type ServerId = usize;

/// One log entry: an `UpdateFile` request stamped with the leader's term.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The term of the leader that appended it.
    pub term: Term,
    /// The update to apply to the MetaStore once committed.
    pub meta: FileMetaData,
}

impl Entry {
    /// The entry a leader elected in `term` appends first (SPEC §9.1): an
    /// update of no file at version 0, which the version rule always
    /// rejects, so applying it changes nothing; its commit shows the leader
    /// everything committed before its term.
    pub fn noop(term: Term) -> Self {
        Self {
            term,
            meta: FileMetaData::default(),
        }
    }

    /// The bytes this entry takes as one `UpdateOperation` of a repeated
    /// field: `AppendEntryInput.entries` or `RaftInternalState.log`.
    pub fn wire_len(&self) -> usize {
        wire_len(self.term, &self.meta)
    }
}

/// [`Entry::wire_len`] of the entry `meta` would become in `term`, without
/// building it.
pub(crate) fn wire_len(term: Term, meta: &FileMetaData) -> usize {
    let term_field = UpdateOperation {
        term,
        file_meta_data: None,
    }
    .encoded_len();
    crate::grpc::field_len(term_field + crate::grpc::field_len(meta.encoded_len()))
}

/// The applied MetaStore map as of a log index: what replaces the log up to
/// there once it is compacted (SPEC §9.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The index of the last entry it covers.
    pub last_index: LogIndex,
    /// That entry's term.
    pub last_term: Term,
    /// The map as an encoded `FileInfoMap`.
    pub data: bytes::Bytes,
}

/// What must survive a process crash (like etcd's HardState).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HardState {
    /// The current term.
    pub term: Term,
    /// Without elections, the leader this server follows (or is) in `term`;
    /// with them, the candidate it voted for.
    pub voted_for: Option<ServerId>,
    /// The highest index known to be committed.
    pub commit: LogIndex,
}

impl Default for HardState {
    fn default() -> Self {
        Self {
            term: 0,
            voted_for: None,
            commit: -1,
        }
    }
}

impl From<Entry> for UpdateOperation {
    fn from(entry: Entry) -> Self {
        UpdateOperation {
            term: entry.term,
            file_meta_data: Some(entry.meta),
        }
    }
}

impl From<UpdateOperation> for Entry {
    fn from(op: UpdateOperation) -> Self {
        Entry {
            term: op.term,
            meta: op.file_meta_data.unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::RaftInternalState;

    #[test]
    fn wire_len_is_what_an_entry_adds_to_a_message() {
        let metas = [
            FileMetaData::default(),
            FileMetaData {
                filename: "a".into(),
                version: 3,
                block_hash_list: vec!["h".repeat(300); 500],
            },
        ];
        for term in [0, 1, 300, MAX_TERM] {
            for meta in &metas {
                let entry = Entry {
                    term,
                    meta: meta.clone(),
                };
                let state = RaftInternalState {
                    log: vec![entry.clone().into()],
                    ..Default::default()
                };
                assert_eq!(entry.wire_len(), state.encoded_len(), "{term}");
            }
        }
    }
}
