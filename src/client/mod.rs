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
//! makes every change to the base directory safely; [`conflict`] says where
//! a local change that loses to the server is saved; [`cache`] is the optional hash cache
//! that spares a resync re-reading unchanged files; [`buffers`] recycles
//! the upload's read buffers; [`surfignore`] holds the ignore rules.
//! [`watch`] runs syncs over and over as local and remote changes come. [`progress`] draws the
//! bars and [`report`] is the summary of a run.

pub mod buffers;
pub mod cache;
pub mod conflict;
pub mod disk;
pub mod index;
pub mod names;
pub mod plan;
pub mod progress;
pub mod report;
pub mod rpc;
pub mod scan;
pub mod surfignore;
pub mod sync;
pub mod watch;

pub use progress::Progress;
pub use report::Report;
pub use rpc::MetaStore;
pub use sync::{Options, SyncError, dry_run, sync};
