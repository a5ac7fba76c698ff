//! The non-replicated server behind `surfstore-server`: a BlockStore, a
//! MetaStore, or both on one listener (SPEC §7). The binary parses its
//! arguments into a [`PlainServer`] and calls [`serve`]; a test can hand
//! over a listener it bound itself, so it never races for a port.

use std::future::Future;
use std::sync::Arc;

use crate::block_store::{BlockBackend, BlockStoreService};
use crate::grpc;
use crate::meta_store::{JournaledMap, MetaStoreService};
use crate::security::ServerSecurity;

/// What one `surfstore-server` serves.
pub struct PlainServer {
    /// The BlockStore's backend, when the server runs a BlockStore.
    pub blocks: Option<Arc<dyn BlockBackend>>,
    /// The MetaStore's map, when the server runs a MetaStore.
    pub meta: Option<JournaledMap>,
    /// The BlockStore address the MetaStore hands to clients.
    pub block_store_addr: String,
    /// TLS and tokens, when asked for.
    pub security: ServerSecurity,
}

/// Serves `server` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    server: PlainServer,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let PlainServer {
        blocks,
        meta,
        block_store_addr,
        security,
    } = server;
    let meta = meta.map(|m| MetaStoreService::with_map(block_store_addr, m));
    let watch = meta.as_ref().map(|m| m.changes().into_server());
    grpc::secure_server(&security)
        .add_optional_service(blocks.map(|b| BlockStoreService::new(b).into_server()))
        .add_optional_service(meta.map(MetaStoreService::into_server))
        .add_optional_service(watch)
        .serve_with_incoming_shutdown(grpc::secure_incoming(listener, &security), shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block_store::MemoryBlocks;
    use crate::hash::hash_block;
    use crate::proto::block_store_client::BlockStoreClient;
    use crate::proto::meta_store_client::MetaStoreClient;
    use crate::proto::{Block, BlockHash, FileMetaData};

    #[tokio::test]
    async fn serves_both_stores_on_a_listener_it_is_handed_until_shutdown() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = PlainServer {
            blocks: Some(Arc::new(MemoryBlocks::default())),
            meta: Some(JournaledMap::in_memory()),
            block_store_addr: addr.clone(),
            security: ServerSecurity::default(),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(serve(listener, server, async {
            let _ = stopped.await;
        }));

        let channel = grpc::channel(&addr).unwrap();
        let mut blocks = BlockStoreClient::new(channel.clone());
        let data = b"hello".to_vec();
        let block = Block {
            block_size: 5,
            block_data: data.clone().into(),
        };
        assert!(blocks.put_block(block).await.unwrap().into_inner().flag);
        let hash = BlockHash {
            hash: hash_block(&data),
        };
        let got = blocks.get_block(hash.clone()).await.unwrap().into_inner();
        assert_eq!(got.block_data, data);

        let mut meta = MetaStoreClient::new(channel);
        let update = FileMetaData {
            filename: "a".into(),
            version: 1,
            block_hash_list: vec![hash.hash],
        };
        assert_eq!(
            meta.update_file(update.clone())
                .await
                .unwrap()
                .into_inner()
                .version,
            1
        );
        let map = meta.get_file_info_map(()).await.unwrap().into_inner();
        assert_eq!(map.file_info_map.get("a"), Some(&update));
        let announced = meta.get_block_store_addr(()).await.unwrap().into_inner();
        assert_eq!(announced.addr, addr);

        stop.send(()).unwrap();
        served.await.unwrap().unwrap();
    }
}
