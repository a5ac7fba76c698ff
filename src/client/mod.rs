//! The sync client behind `surfstore-client` (SPEC §7–8).
//!
//! One run goes through the modules in order, decisions apart from effects:
//!
//! ```text
//!   scan (hash the base directory) ─┐
//!   index (index.txt)              ─┼─▶ plan (pure decision) ─▶ sync (carry it out) ─▶ index
//!   rpc (remote FileInfoMap)       ─┘                               │
//!                                              rpc (blocks, UpdateFile), disk (safe writes)
//! ```
//!
//! [`names`] says which names may be synced and where they live; [`disk`]
//! makes every change to the base directory safely.

pub mod disk;
pub mod index;
pub mod names;
pub mod plan;
pub mod rpc;
pub mod scan;
pub mod sync;

pub use rpc::MetaStore;
pub use sync::{Report, SyncError, sync};
