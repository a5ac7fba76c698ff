//! How large a Raft server's messages can grow, and the check that keeps
//! them within one gRPC message.
//!
//! Nothing is ever dropped from the log (there is no compaction), and
//! `GetInternalState` answers with the whole log and map in one reply. An
//! update that pushed that reply past the message limit would leave a state
//! nobody can read again, so the leader refuses it before it enters the
//! log; AppendEntries is then never a problem: it carries at most one entry
//! beyond the batch budget, and every entry fits a message.

use super::Term;
use crate::grpc::{self, TooLarge};
use crate::meta_store::{FileMap, map_entry_len};
use crate::proto::FileMetaData;

/// An upper bound on an `AppendEntryInput` without its entries: seven
/// int64 fields of at most a one-byte key and a ten-byte varint each.
const APPEND_HEADER_BYTES: usize = 7 * 11;

/// An upper bound on a `RaftInternalState` without its log and map:
/// `isLeader` (two bytes) and `term` (eleven).
const STATE_HEADER_BYTES: usize = 2 + 11;

/// Refuses to append `meta` in `term` to a log of `log_bytes` encoded
/// bytes, of which `unapplied_bytes` are not applied to `map` yet, if its
/// AppendEntries or, once everything is applied, `GetInternalState`'s reply
/// (and so `GetFileInfoMap`'s, a part of it) could exceed `limit`.
///
/// Unapplied entries may still change the map; each adds at most twice its
/// log entry to it (a map entry repeats the file name, which the metadata
/// already holds), which bounds the map without walking those entries.
pub(crate) fn check_proposal(
    log_bytes: usize,
    unapplied_bytes: usize,
    map: &FileMap,
    term: Term,
    meta: &FileMetaData,
    limit: usize,
) -> Result<(), TooLarge> {
    let entry = super::wire_len(term, meta);
    grpc::fits("its AppendEntries", APPEND_HEADER_BYTES + entry, limit)?;
    let map_bound = map.encoded_len() + 2 * unapplied_bytes + map_entry_len(meta);
    let state = STATE_HEADER_BYTES + log_bytes + entry + grpc::field_len(map_bound);
    grpc::fits("GetInternalState's reply", state, limit)
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::proto::{AppendEntryInput, RaftInternalState};
    use crate::raft::RaftCore;

    fn meta(name: &str, version: i32, bytes: usize) -> FileMetaData {
        FileMetaData {
            filename: name.into(),
            version,
            block_hash_list: vec!["h".repeat(bytes)],
        }
    }

    #[test]
    fn headers_bound_the_largest_values() {
        // Negative values take the longest varints.
        let header = AppendEntryInput {
            term: -1,
            prev_log_index: -1,
            prev_log_term: -1,
            entries: vec![],
            leader_commit: -1,
            leader_id: Some(-1),
            last_log_index: -1,
            last_log_term: -1,
        };
        assert_eq!(header.encoded_len(), APPEND_HEADER_BYTES);
        let state = RaftInternalState {
            first_log_index: 0,
            is_leader: true,
            term: -1,
            log: vec![],
            meta_map: None,
        };
        assert_eq!(state.encoded_len(), STATE_HEADER_BYTES);
    }

    /// Proposes and applies updates of `bytes` each on a one-server
    /// cluster until the check refuses one; returns how many it accepted.
    /// Every state reached must be readable in one reply of `limit`.
    fn fill(limit: usize, bytes: usize, name: impl Fn(i32) -> (String, i32)) -> i32 {
        let mut core = RaftCore::new(0, 1);
        core.set_leader().unwrap();
        let mut map = FileMap::default();
        for n in 0.. {
            let (file, version) = name(n);
            let update = meta(&file, version, bytes);
            let checked = check_proposal(
                core.log_bytes(),
                core.unapplied_bytes(),
                &map,
                core.term(),
                &update,
                limit,
            );
            if let Err(err) = checked {
                assert!(err.to_string().contains("message limit"), "{err}");
                return n;
            }
            core.propose(update).unwrap();
            for (_, entry) in core.take_ready().committed {
                map.apply(entry.meta);
            }
            let state = RaftInternalState {
                first_log_index: 0,
                is_leader: true,
                term: core.term(),
                log: core.log().iter().cloned().map(Into::into).collect(),
                meta_map: Some(map.to_proto()),
            };
            assert!(state.encoded_len() <= limit, "update {n} made it too large");
            let log_only = RaftInternalState {
                log: state.log.clone(),
                ..Default::default()
            };
            assert_eq!(core.log_bytes(), log_only.encoded_len());
        }
        unreachable!()
    }

    #[test]
    fn a_proposal_that_would_outgrow_internal_state_is_refused() {
        // One file updated again and again: the log grows, the map does not.
        let same = fill(10_000, 500, |n| ("a".into(), n + 1));
        assert!((17..=19).contains(&same), "{same} updates of one file");
        // New files: log and map both grow.
        let new = fill(10_000, 500, |n| (format!("f{n}"), 1));
        assert!((8..=9).contains(&new), "{new} new files");
    }

    #[test]
    fn an_entry_too_large_for_append_entries_is_refused() {
        let err =
            check_proposal(0, 0, &FileMap::default(), 1, &meta("a", 1, 2000), 1000).unwrap_err();
        assert_eq!(err.what, "its AppendEntries");
        assert!(err.bytes > 2000);
    }
}
