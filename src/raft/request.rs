//! An AppendEntries request as the core takes it: every value checked once,
//! at the service edge, by [`AppendRequest::try_from`].
//!
//! The wire message is all `int64`s that anyone who can reach the port may
//! set. A forged or corrupt one did damage when the core trusted it: an
//! entry of a term above the request's made its follower refuse every later
//! leader (their logs looked older), and a term of `i64::MAX` left SetLeader
//! nothing to raise, so two servers led one term. Here indices become
//! `usize`, "before the first entry" and "nothing committed" become `None`,
//! and anything no correct leader sends is refused with a reason, so the
//! core never sees such a value.

use std::sync::Arc;

use super::election::VoteAsk;
use super::{Entry, LogIndex, MAX_TERM, ServerId, Snapshot, Term};
use crate::proto::{AppendEntryInput, InstallSnapshotInput, RequestVoteInput};

/// A validated AppendEntries request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendRequest {
    pub(crate) term: Term,
    /// `(prevLogIndex, prevLogTerm)`; `None` for `prevLogIndex = -1`, where
    /// SPEC §5 lets `prevLogTerm` say anything.
    pub(crate) prev: Option<(usize, Term)>,
    /// Their terms never decrease, start at or above `prevLogTerm` and end
    /// at or below `term`.
    pub(crate) entries: Vec<Entry>,
    /// `None` for `leaderCommit = -1`.
    pub(crate) leader_commit: Option<usize>,
    /// Who sent it, when the request says (`leaderId`).
    pub(crate) sender: Option<Sender>,
}

/// One validated InstallSnapshot chunk (SPEC §9.2), as the service edge
/// hands it to the node, which puts the chunks together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotChunk {
    pub(crate) term: Term,
    pub(crate) sender: Sender,
    /// `(lastIncludedIndex, lastIncludedTerm)`: which snapshot this is part of.
    pub(crate) last: (LogIndex, Term),
    /// Where `data` starts in the snapshot.
    pub(crate) offset: u64,
    pub(crate) data: bytes::Bytes,
    /// The snapshot ends with this chunk.
    pub(crate) done: bool,
}

impl SnapshotChunk {
    /// The byte after this chunk.
    pub(crate) fn end(&self) -> u64 {
        self.offset.saturating_add(self.data.len() as u64)
    }
}

/// What the core takes of an InstallSnapshot: who sent it, and, once the
/// last chunk arrived, the whole snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRequest {
    pub(crate) term: Term,
    pub(crate) sender: Option<Sender>,
    pub(crate) snapshot: Option<Arc<Snapshot>>,
}

impl From<&super::OutgoingSnapshot> for SnapshotRequest {
    /// The request a whole snapshot a core built makes of another core, as
    /// the node's chunks add up to (for simulations).
    fn from(out: &super::OutgoingSnapshot) -> Self {
        Self {
            term: out.term,
            sender: usize::try_from(out.leader_id).ok().map(|id| Sender {
                id,
                last_log: out.last_log,
            }),
            snapshot: Some(out.snapshot.clone()),
        }
    }
}

impl SnapshotRequest {
    /// The request a chunk makes of the core: `snapshot` once complete.
    pub(crate) fn new(chunk: &SnapshotChunk, snapshot: Option<Arc<Snapshot>>) -> Self {
        Self {
            term: chunk.term,
            sender: Some(chunk.sender),
            snapshot,
        }
    }
}

/// The sender a request names and the last entry of its log, for the vote
/// rule (see [`super::core`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sender {
    pub(crate) id: ServerId,
    /// `(lastLogTerm, lastLogIndex)`, Raft's up-to-date key; `-1` stands for
    /// "none" in either.
    pub(crate) last_log: (Term, LogIndex),
}

/// Why an AppendEntries request was refused at the edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidAppend {
    /// A term outside `0..=MAX_TERM`.
    #[error("{field} {value} is not a term (0 to {MAX_TERM}: SetLeader must be able to raise it)")]
    Term {
        /// The wire field.
        field: &'static str,
        /// Its value.
        value: i64,
    },
    /// A term a leader of the request's term cannot hold in its log.
    #[error("{field} {value} is above the request's term {term}")]
    AboveTerm {
        /// The wire field.
        field: &'static str,
        /// Its value.
        value: Term,
        /// The request's term.
        term: Term,
    },
    /// An index below -1.
    #[error("{field} {value} is below -1")]
    Index {
        /// The wire field.
        field: &'static str,
        /// Its value.
        value: i64,
    },
    /// An entry whose term is above the request's: a leader only sends
    /// entries of terms up to its own.
    #[error("entry {position} has term {entry}, above the request's term {term}")]
    EntryAboveTerm {
        /// Its position in `entries`.
        position: usize,
        /// Its term.
        entry: Term,
        /// The request's term.
        term: Term,
    },
    /// An entry whose term is below the one before it (`prevLogTerm` for
    /// the first): terms never decrease along a log.
    #[error("entry {position} has term {entry}, below the term {before} of the entry before it")]
    EntryBelowPrevious {
        /// Its position in `entries`.
        position: usize,
        /// Its term.
        entry: Term,
        /// The term of the entry before it.
        before: Term,
    },
    /// An entry without the update it carries.
    #[error("entry {position} has no fileMetaData")]
    MissingMetadata {
        /// Its position in `entries`.
        position: usize,
    },
    /// The entries would end past the largest index.
    #[error("prevLogIndex {prev} plus {count} entries passes the largest log index")]
    TooFar {
        /// `prevLogIndex`.
        prev: i64,
        /// How many entries.
        count: usize,
    },
    /// A negative `leaderId`.
    #[error("leaderId {0} is negative")]
    LeaderId(i64),
    /// A negative `candidateId`.
    #[error("candidateId {0} is negative")]
    CandidateId(i64),
}

impl VoteAsk {
    /// A RequestVote (or, with `pre_vote`, a PreVote) as the core takes it,
    /// every value checked as in AppendEntries.
    pub fn from_wire(input: &RequestVoteInput, pre_vote: bool) -> Result<Self, InvalidAppend> {
        let term = term("term", input.term)?;
        Ok(Self {
            term,
            candidate: usize::try_from(input.candidate_id)
                .map_err(|_| InvalidAppend::CandidateId(input.candidate_id))?,
            last_log: (
                last_term(input.last_log_term, term)?,
                log_index("lastLogIndex", input.last_log_index)?,
            ),
            force: input.force,
            pre_vote,
        })
    }
}

impl TryFrom<InstallSnapshotInput> for SnapshotChunk {
    type Error = InvalidAppend;

    fn try_from(input: InstallSnapshotInput) -> Result<Self, InvalidAppend> {
        let term = term("term", input.term)?;
        let last_index =
            index("lastIncludedIndex", input.last_included_index)?.ok_or(InvalidAppend::Index {
                field: "lastIncludedIndex",
                value: -1,
            })?;
        let offset = u64::try_from(input.offset).map_err(|_| InvalidAppend::Index {
            field: "offset",
            value: input.offset,
        })?;
        Ok(SnapshotChunk {
            term,
            sender: Sender {
                id: usize::try_from(input.leader_id)
                    .map_err(|_| InvalidAppend::LeaderId(input.leader_id))?,
                last_log: (
                    last_term(input.last_log_term, term)?,
                    log_index("lastLogIndex", input.last_log_index)?,
                ),
            },
            last: (
                index_of(last_index),
                term_within("lastIncludedTerm", input.last_included_term, term)?,
            ),
            offset,
            data: input.data,
            done: input.done,
        })
    }
}

/// A checked position back as a log index.
fn index_of(at: usize) -> LogIndex {
    LogIndex::try_from(at).unwrap_or(LogIndex::MAX)
}

impl TryFrom<AppendEntryInput> for AppendRequest {
    type Error = InvalidAppend;

    fn try_from(input: AppendEntryInput) -> Result<Self, InvalidAppend> {
        let term = term("term", input.term)?;
        let prev = match index("prevLogIndex", input.prev_log_index)? {
            None => None,
            Some(at) => Some((at, term_within("prevLogTerm", input.prev_log_term, term)?)),
        };
        let leader_commit = index("leaderCommit", input.leader_commit)?;
        let mut before = prev.map_or(0, |(_, t)| t);
        let count = input.entries.len();
        let mut entries = Vec::with_capacity(count);
        for (position, op) in input.entries.into_iter().enumerate() {
            self::term("entry term", op.term)?;
            if op.term > term {
                return Err(InvalidAppend::EntryAboveTerm {
                    position,
                    entry: op.term,
                    term,
                });
            }
            if op.term < before {
                return Err(InvalidAppend::EntryBelowPrevious {
                    position,
                    entry: op.term,
                    before,
                });
            }
            before = op.term;
            let meta = op
                .file_meta_data
                .ok_or(InvalidAppend::MissingMetadata { position })?;
            entries.push(Entry {
                term: op.term,
                meta,
            });
        }
        let first = prev.map_or(0, |(at, _)| at + 1);
        let end = first
            .checked_add(count)
            .filter(|&end| LogIndex::try_from(end).is_ok());
        if end.is_none() {
            return Err(InvalidAppend::TooFar {
                prev: input.prev_log_index,
                count,
            });
        }
        let sender = match input.leader_id {
            None => None,
            Some(id) => Some(Sender {
                id: usize::try_from(id).map_err(|_| InvalidAppend::LeaderId(id))?,
                last_log: (
                    last_term(input.last_log_term, term)?,
                    log_index("lastLogIndex", input.last_log_index)?,
                ),
            }),
        };
        Ok(AppendRequest {
            term,
            prev,
            entries,
            leader_commit,
            sender,
        })
    }
}

/// `value` as a term a server may hold.
fn term(field: &'static str, value: i64) -> Result<Term, InvalidAppend> {
    if (0..=MAX_TERM).contains(&value) {
        Ok(value)
    } else {
        Err(InvalidAppend::Term { field, value })
    }
}

/// `value` as the term of an entry in the log of a leader of `request_term`.
fn term_within(field: &'static str, value: i64, request_term: Term) -> Result<Term, InvalidAppend> {
    let value = term(field, value)?;
    if value > request_term {
        return Err(InvalidAppend::AboveTerm {
            field,
            value,
            term: request_term,
        });
    }
    Ok(value)
}

/// `lastLogTerm`: an entry's term, or -1 for an empty log.
fn last_term(value: i64, request_term: Term) -> Result<Term, InvalidAppend> {
    match value {
        -1 => Ok(-1),
        _ => term_within("lastLogTerm", value, request_term),
    }
}

/// `value` as a log index: -1 or more.
fn log_index(field: &'static str, value: i64) -> Result<LogIndex, InvalidAppend> {
    if value < -1 {
        return Err(InvalidAppend::Index { field, value });
    }
    Ok(value)
}

/// `value` as a position in a log; `None` for -1.
fn index(field: &'static str, value: i64) -> Result<Option<usize>, InvalidAppend> {
    match log_index(field, value)? {
        -1 => Ok(None),
        at => usize::try_from(at)
            .map(Some)
            .map_err(|_| InvalidAppend::Index { field, value }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{FileMetaData, UpdateOperation};

    fn op(term: Term) -> UpdateOperation {
        UpdateOperation {
            term,
            file_meta_data: Some(FileMetaData::default()),
        }
    }

    fn valid() -> AppendEntryInput {
        AppendEntryInput {
            term: 3,
            prev_log_index: 4,
            prev_log_term: 2,
            entries: vec![op(2), op(3)],
            leader_commit: 5,
            leader_id: Some(1),
            last_log_index: 9,
            last_log_term: 3,
        }
    }

    #[test]
    fn a_valid_request_keeps_every_value() {
        let req = AppendRequest::try_from(valid()).unwrap();
        assert_eq!(req.term, 3);
        assert_eq!(req.prev, Some((4, 2)));
        assert_eq!(
            req.entries.iter().map(|e| e.term).collect::<Vec<_>>(),
            [2, 3]
        );
        assert_eq!(req.leader_commit, Some(5));
        assert_eq!(
            req.sender,
            Some(Sender {
                id: 1,
                last_log: (3, 9)
            })
        );
    }

    #[test]
    fn minus_one_means_none_and_prev_term_is_ignored_there() {
        let req = AppendRequest::try_from(AppendEntryInput {
            prev_log_index: -1,
            prev_log_term: i64::MIN,
            leader_commit: -1,
            leader_id: None,
            last_log_index: i64::MIN,
            last_log_term: i64::MAX,
            entries: vec![op(0)],
            ..valid()
        })
        .unwrap();
        assert_eq!(
            (req.prev, req.leader_commit, req.sender),
            (None, None, None)
        );
        let req = AppendRequest::try_from(AppendEntryInput {
            last_log_index: -1,
            last_log_term: -1,
            ..valid()
        })
        .unwrap();
        assert_eq!(req.sender.map(|s| s.last_log), Some((-1, -1)));
    }

    #[test]
    fn values_no_leader_sends_are_refused() {
        let bad = [
            AppendEntryInput {
                term: -1,
                ..valid()
            },
            AppendEntryInput {
                term: i64::MAX,
                ..valid()
            },
            AppendEntryInput {
                prev_log_index: -2,
                ..valid()
            },
            AppendEntryInput {
                prev_log_term: -1,
                ..valid()
            },
            AppendEntryInput {
                prev_log_term: 4,
                ..valid()
            },
            AppendEntryInput {
                leader_commit: -2,
                ..valid()
            },
            AppendEntryInput {
                entries: vec![op(4)],
                ..valid()
            },
            AppendEntryInput {
                entries: vec![op(1)],
                ..valid()
            },
            AppendEntryInput {
                entries: vec![op(3), op(2)],
                ..valid()
            },
            AppendEntryInput {
                prev_log_index: -1,
                entries: vec![op(-1)],
                ..valid()
            },
            AppendEntryInput {
                entries: vec![UpdateOperation {
                    term: 3,
                    file_meta_data: None,
                }],
                ..valid()
            },
            AppendEntryInput {
                prev_log_index: i64::MAX - 1,
                ..valid()
            },
            AppendEntryInput {
                leader_id: Some(-1),
                ..valid()
            },
            AppendEntryInput {
                last_log_index: -2,
                ..valid()
            },
            AppendEntryInput {
                last_log_term: 4,
                ..valid()
            },
            AppendEntryInput {
                last_log_term: -2,
                ..valid()
            },
        ];
        for input in bad {
            let what = format!("{input:?}");
            let err = AppendRequest::try_from(input).expect_err(&what);
            assert!(!err.to_string().is_empty());
        }
        let err = AppendRequest::try_from(AppendEntryInput {
            entries: vec![op(5)],
            ..valid()
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "entry 0 has term 5, above the request's term 3"
        );
    }

    #[test]
    fn the_entries_end_where_one_past_the_last_is_still_an_index() {
        let near = |prev| AppendEntryInput {
            prev_log_index: prev,
            ..valid()
        };
        assert!(AppendRequest::try_from(near(i64::MAX - 3)).is_ok());
        assert_eq!(
            AppendRequest::try_from(near(i64::MAX - 2)),
            Err(InvalidAppend::TooFar {
                prev: i64::MAX - 2,
                count: 2
            })
        );
    }
}
