//! SurfStore: a Dropbox-like file-sync service whose metadata store can be
//! replicated with Raft, wire-compatible with the original Go implementation.
//!
//! ```text
//!   surfstore-client ──GetFileInfoMap/UpdateFile──▶ MetaStore  (meta_store, or raft)
//!        │                                              │ GetBlockStoreAddr
//!        └────────HasBlocks/PutBlock/GetBlock──────▶ BlockStore (block_store)
//! ```
//!
//! * [`proto`]: the wire contract, generated from `proto/surfstore.proto`.
//! * [`hash`], [`config`], [`grpc`], [`backoff`], [`listener`]: shared building
//!   blocks.
//! * [`block_store`], [`meta_store`]: the two non-replicated services.
//! * [`storage`]: the write-ahead log and fsync helpers behind `--data-dir`.
//! * [`security`]: TLS, bearer tokens and roles (all opt-in).
//! * [`cli`], [`advertise`]: what the binaries in `src/bin` share.
//! * [`client`]: the sync client behind `surfstore-client`.
//! * [`gc`]: deleting blocks no file uses any more (`surfstore-ctl gc`).

pub mod advertise;
pub mod backoff;
pub mod block_store;
pub mod cli;
pub mod client;
pub mod config;
pub mod gc;
pub mod grpc;
pub mod hash;
pub mod listener;
pub mod locks;
pub mod meta_store;
pub mod plain_server;
pub mod proto;
pub mod raft;
pub mod security;
pub mod storage;
