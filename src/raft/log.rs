//! The replicated log of one server and its bookkeeping: the follower side of
//! log matching (SPEC §5's AppendEntries receiver rules), the commit and
//! applied indices, and which part of the log still has to be made durable.
//!
//! Indices are 0-based `LogIndex` values (-1 = "before the first entry"), as
//! on the wire, except the request values [`RaftLog::accept`] takes, which
//! the service edge already turned into positions ([`super::AppendRequest`]);
//! the conversions live here so that the rest of the core never indexes a
//! `Vec` with an unchecked value.

use super::{Entry, LogIndex, Term};

/// The term reported for "no entry" (an empty log, or `prevLogIndex` -1),
/// as the original implementation sends it.
pub(crate) const NO_TERM: Term = -1;

/// Why an AppendEntries request was refused by the log-matching rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// No entry at `prevLogIndex` with `prevLogTerm`. `hint` is the highest
    /// index the leader may still hope to match (below `prevLogIndex` and
    /// within this log), so it can back off more than one step at a time.
    Mismatch { hint: LogIndex },
    /// Accepting would delete a committed entry. A correct leader never asks
    /// for that; refusing keeps what was applied in agreement with the log.
    ConflictsWithCommitted { commit: LogIndex },
}

/// One server's log plus its commit/applied/durability cursors.
///
/// After a snapshot the log keeps only the entries after it: `entries[0]`
/// has index `first`, and the entry before it (the snapshot's last) is
/// known only by its term. Every method takes and returns absolute
/// positions (a position is an index + 1 for "the entries before it"), so
/// nothing outside this type sees the offset.
#[derive(Debug, Clone, Default)]
pub(crate) struct RaftLog {
    entries: Vec<Entry>,
    /// `ends[i]`: the encoded bytes of `entries[0..=i]` ([`Entry::wire_len`]),
    /// so that batching and size checks never walk the log.
    ends: Vec<usize>,
    /// The position of `entries[0]`: how many entries the snapshot covers.
    first: usize,
    /// The term of the last entry the snapshot covers ([`NO_TERM`] without
    /// one).
    snapshot_term: Term,
    committed: LogIndex,
    applied: LogIndex,
    /// Lowest position changed (appended or truncated) since the last
    /// [`RaftLog::take_unpersisted`]; `None` when the durable copy is current.
    unpersisted_from: Option<usize>,
    /// End of the durable copy as of the last `take_unpersisted`.
    durable_end: usize,
}

/// `index` as a position in the log, if it is one (>= 0).
fn position(index: LogIndex) -> Option<usize> {
    usize::try_from(index).ok()
}

/// `position` back as a wire index. A log never holds more than
/// `isize::MAX` entries, so the conversion cannot saturate in practice.
fn index(position: usize) -> LogIndex {
    LogIndex::try_from(position).unwrap_or(LogIndex::MAX)
}

impl RaftLog {
    /// A log rebuilt from durable state: the entries after a snapshot of the
    /// first `first` entries whose last has `snapshot_term`. The snapshot
    /// counts as applied; the committed entries after it are replayed. A
    /// commit index outside what the log can hold (a damaged store) is
    /// clamped rather than trusted.
    pub(crate) fn restore(
        first: usize,
        snapshot_term: Term,
        entries: Vec<Entry>,
        committed: LogIndex,
    ) -> Self {
        let end = first + entries.len();
        let mut log = Self {
            first,
            snapshot_term: if first == 0 { NO_TERM } else { snapshot_term },
            committed: committed.clamp(index(first) - 1, index(end) - 1),
            applied: index(first) - 1,
            unpersisted_from: None,
            durable_end: end,
            ..Self::default()
        };
        log.extend(entries);
        log
    }

    /// The entries after the snapshot, `first_index` first.
    pub(crate) fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The index of the first entry held (0 when nothing was compacted).
    pub(crate) fn first_index(&self) -> LogIndex {
        index(self.first)
    }

    /// The position after the last entry: the length the log would have if
    /// nothing had been compacted.
    pub(crate) fn end(&self) -> usize {
        self.first + self.entries.len()
    }

    /// Index of the last entry (-1 when empty), the snapshot's last when no
    /// entry follows it.
    pub(crate) fn last_index(&self) -> LogIndex {
        index(self.end()) - 1
    }

    /// `entries` position of the log position `at`, if it is held.
    fn offset(&self, at: usize) -> Option<usize> {
        at.checked_sub(self.first)
    }

    /// The term of the entry at `index`, or [`NO_TERM`] for -1, the
    /// snapshot's term for its last entry; `None` when the log has no such
    /// entry or it was compacted away.
    pub(crate) fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index == -1 {
            return Some(NO_TERM);
        }
        let at = position(index)?;
        if at + 1 == self.first {
            return Some(self.snapshot_term);
        }
        self.entries.get(self.offset(at)?).map(|e| e.term)
    }

    /// `(term, index)` of the last of the first `len` entries, the key that
    /// Raft's up-to-date comparison orders logs by.
    pub(crate) fn last_id_within(&self, len: usize) -> (Term, LogIndex) {
        let len = len.clamp(self.first, self.end());
        let last = index(len) - 1;
        (self.term_at(last).unwrap_or(NO_TERM), last)
    }

    /// The position from which the entries at the tail all have `term`
    /// (the end when the last entry is of another term).
    pub(crate) fn tail_start_of_term(&self, term: Term) -> usize {
        self.first
            + self
                .entries
                .iter()
                .rposition(|e| e.term != term)
                .map_or(0, |p| p + 1)
    }

    /// The encoded bytes of the entries held.
    pub(crate) fn bytes(&self) -> usize {
        self.ends.last().copied().unwrap_or(0)
    }

    /// The encoded bytes of the entries not yet handed out for applying.
    pub(crate) fn unapplied_bytes(&self) -> usize {
        self.bytes() - self.bytes_before(index_after(self.applied))
    }

    /// The encoded bytes of the held entries before position `at`.
    fn bytes_before(&self, at: usize) -> usize {
        match at.saturating_sub(self.first).min(self.ends.len()) {
            0 => 0,
            n => self.ends[n - 1],
        }
    }

    /// How many entries from position `from` one request carries: at most
    /// `max` of them, of at most `max_bytes` together, but at least one
    /// whatever its size (while `max` > 0), so that an entry larger than
    /// the budget still goes out, alone. None from a compacted position.
    pub(crate) fn fitting(&self, from: usize, max: usize, max_bytes: usize) -> usize {
        let Some(start) = self.offset(from) else {
            return 0;
        };
        let end = self.ends.len().min(start.saturating_add(max));
        let Some(candidates) = self.ends.get(start..end) else {
            return 0;
        };
        let budget = self.bytes_before(from).saturating_add(max_bytes);
        candidates
            .partition_point(|&total| total <= budget)
            .max(usize::from(!candidates.is_empty()))
    }

    /// Up to `max` entries starting at position `from`, ending before `end`;
    /// none from a compacted position.
    pub(crate) fn slice(&self, from: usize, end: usize, max: usize) -> &[Entry] {
        let Some(start) = self.offset(from) else {
            return &[];
        };
        let end = end
            .min(self.end())
            .min(from.saturating_add(max))
            .saturating_sub(self.first);
        self.entries.get(start..end).unwrap_or_default()
    }

    /// Appends one entry (a leader's proposal) and returns its index.
    pub(crate) fn append(&mut self, entry: Entry) -> LogIndex {
        self.mark_changed(self.end());
        self.extend([entry]);
        self.last_index()
    }

    /// Appends `new` with their sizes; the one way entries are added.
    fn extend(&mut self, new: impl IntoIterator<Item = Entry>) {
        for entry in new {
            self.ends.push(self.bytes() + entry.wire_len());
            self.entries.push(entry);
        }
    }

    /// Keeps the entries before position `end` and their sizes; the one way
    /// entries are removed from the tail. Never below the snapshot.
    fn cut(&mut self, end: usize) {
        let keep = end.saturating_sub(self.first);
        self.entries.truncate(keep);
        self.ends.truncate(keep);
    }

    /// Keeps only the entries before position `end`. Committed entries are
    /// never removed: callers only truncate entries that were never sent.
    pub(crate) fn truncate(&mut self, end: usize) {
        let end = end.max(position(self.committed + 1).unwrap_or(0));
        if end < self.end() {
            self.cut(end);
            self.mark_changed(end);
        }
    }

    /// The AppendEntries receiver's log rules, in SPEC order: the entry at
    /// `prev`'s index must have `prev`'s term (`None`, "before the first
    /// entry", always matches); then only entries that CONFLICT with the
    /// new ones (same index, other term) are deleted, with all that follow
    /// them; entries not already present are appended; and the commit index
    /// becomes `min(leader_commit, index of the last new entry)` if that is
    /// higher. Returns the index of the last new entry (`prev`'s index +
    /// `entries.len()`), which is what the follower reports as matched.
    ///
    /// Entries at or before the snapshot's last are committed, so equal to
    /// any leader's (log matching): a request starting before it is taken
    /// from the snapshot's end, the entries it carries for the snapshot
    /// skipped, as etcd's raft does.
    pub(crate) fn accept(
        &mut self,
        prev: Option<(usize, Term)>,
        new: Vec<Entry>,
        leader_commit: Option<usize>,
    ) -> Result<LogIndex, Rejection> {
        let prev_end = prev.map_or(0, |(at, _)| at + 1);
        let last_new = index(prev_end + new.len()) - 1;
        let (start, new) = if prev_end < self.first {
            let covered = self.first - prev_end;
            (self.first, new.into_iter().skip(covered).collect())
        } else {
            if let Some((at, term)) = prev
                && self.term_at(index(at)) != Some(term)
            {
                let hint = index(at).saturating_sub(1).min(self.last_index());
                return Err(Rejection::Mismatch { hint });
            }
            (prev_end, new)
        };
        let conflict = new.iter().enumerate().find_map(|(offset, entry)| {
            let at = start + offset;
            let existing = self.entries.get(self.offset(at)?)?;
            (existing.term != entry.term).then_some(at)
        });
        let first_new = match conflict {
            Some(at) if index(at) <= self.committed => {
                return Err(Rejection::ConflictsWithCommitted {
                    commit: self.committed,
                });
            }
            Some(at) => {
                self.cut(at);
                self.mark_changed(at);
                at
            }
            None => self.end().max(start),
        };
        let already_present = first_new - start;
        if already_present < new.len() {
            self.mark_changed(first_new);
        }
        self.extend(new.into_iter().skip(already_present));
        self.commit_to(leader_commit.map_or(-1, index).min(last_new));
        Ok(last_new)
    }

    /// The commit index (-1 before anything commits).
    pub(crate) fn committed(&self) -> LogIndex {
        self.committed
    }

    /// The index of the last entry handed out for applying.
    pub(crate) fn applied(&self) -> LogIndex {
        self.applied
    }

    /// Raises the commit index to `index` (never lowers it, never past the
    /// last entry).
    pub(crate) fn commit_to(&mut self, index: LogIndex) {
        self.committed = self.committed.max(index.min(self.last_index()));
    }

    /// The committed entries not yet handed out for applying, in log order;
    /// they count as applied from now on.
    pub(crate) fn take_committed(&mut self) -> Vec<(LogIndex, Entry)> {
        let from = index_after(self.applied);
        let to = index_after(self.committed);
        self.applied = self.committed;
        (from..to)
            .zip(self.slice(from, to, usize::MAX))
            .map(|(at, entry)| (index(at), entry.clone()))
            .collect()
    }

    /// What to write so that the durable log equals the log before position
    /// `stable_end`: `(from, entries)` meaning "keep the durable entries
    /// before position `from`, then write `entries` and drop anything after
    /// them". Entries at or beyond `stable_end` stay pending until a later
    /// call allows them.
    pub(crate) fn take_unpersisted(&mut self, stable_end: usize) -> Option<(LogIndex, Vec<Entry>)> {
        let stable_end = stable_end.min(self.end());
        let from = self.unpersisted_from.filter(|&from| from <= stable_end)?;
        self.unpersisted_from = (stable_end < self.end()).then_some(stable_end);
        let durable_end = std::mem::replace(&mut self.durable_end, stable_end);
        (from < stable_end || durable_end > from).then(|| {
            (
                index(from),
                self.slice(from, stable_end, usize::MAX).to_vec(),
            )
        })
    }

    /// The durable entries after the snapshot: what a rewritten durable
    /// log holds after it.
    pub(crate) fn durable_entries(&self) -> &[Entry] {
        self.slice(self.first, self.durable_end, usize::MAX)
    }

    /// Drops the entries up to `last` (an applied index), which a snapshot
    /// now covers. Nothing happens for an index not past the current
    /// snapshot or not applied yet.
    pub(crate) fn compact(&mut self, last: LogIndex) {
        let Some(term) = self.term_at(last) else {
            return;
        };
        let end = index_after(last);
        if end <= self.first || last > self.applied {
            return;
        }
        let dropped = end - self.first;
        let base = self.bytes_before(end);
        self.entries.drain(..dropped);
        self.ends.drain(..dropped);
        for total in &mut self.ends {
            *total -= base;
        }
        self.first = end;
        self.snapshot_term = term;
        self.durable_end = self.durable_end.max(end);
        self.unpersisted_from = self.unpersisted_from.map(|from| from.max(end));
    }

    /// Takes a leader's snapshot ending at `last` of `term` in place of what
    /// it covers: when this log holds that very entry, the entries after it
    /// stay (log matching: they are the leader's too, as far as they go);
    /// otherwise the whole log is replaced. Everything up to `last` counts as
    /// committed and applied. Returns false, changing nothing, when the
    /// snapshot brings nothing new: this log has committed as far already.
    pub(crate) fn install(&mut self, last: LogIndex, term: Term) -> bool {
        if last <= self.committed {
            return false;
        }
        let end = index_after(last);
        if self.term_at(last) != Some(term) || end < self.first {
            self.entries.clear();
            self.ends.clear();
            self.first = end;
            self.snapshot_term = term;
            self.durable_end = end;
            self.unpersisted_from = None;
        } else {
            // Applied lags `last` here: count the covered entries as applied
            // first, or `compact` would keep them.
            self.applied = last;
            self.compact(last);
        }
        self.committed = last;
        self.applied = last;
        true
    }

    fn mark_changed(&mut self, from: usize) {
        self.unpersisted_from = Some(self.unpersisted_from.map_or(from, |f| f.min(from)));
    }
}

/// The position right after `index` (0 for -1).
fn index_after(index: LogIndex) -> usize {
    position(index + 1).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::FileMetaData;

    fn entry(term: Term, name: &str) -> Entry {
        Entry {
            term,
            meta: FileMetaData {
                filename: name.into(),
                version: 1,
                block_hash_list: vec![],
            },
        }
    }

    fn log_of(terms: &[Term]) -> RaftLog {
        let entries = terms
            .iter()
            .enumerate()
            .map(|(i, &t)| entry(t, &format!("old{i}")))
            .collect();
        RaftLog::restore(0, NO_TERM, entries, -1)
    }

    /// `prevLogIndex`/`prevLogTerm` as the edge turns them into `prev`.
    fn prev(index: LogIndex, term: Term) -> Option<(usize, Term)> {
        usize::try_from(index).ok().map(|at| (at, term))
    }

    /// `leaderCommit` as the edge turns it into a position.
    fn commit(index: LogIndex) -> Option<usize> {
        usize::try_from(index).ok()
    }

    fn terms(log: &RaftLog) -> Vec<Term> {
        log.entries().iter().map(|e| e.term).collect()
    }

    #[test]
    fn prev_index_minus_one_matches_whatever_prev_term_says() {
        let mut log = RaftLog::default();
        assert_eq!(
            log.accept(prev(-1, 42), vec![entry(1, "a")], commit(-1)),
            Ok(0)
        );
        assert_eq!(terms(&log), [1]);
    }

    #[test]
    fn missing_or_mismatching_prev_entry_is_rejected_with_a_hint() {
        let mut log = log_of(&[1, 1]);
        assert_eq!(
            log.accept(prev(4, 1), vec![], commit(-1)),
            Err(Rejection::Mismatch { hint: 1 })
        );
        assert_eq!(
            log.accept(prev(1, 2), vec![], commit(-1)),
            Err(Rejection::Mismatch { hint: 0 })
        );
        assert_eq!(
            log.accept(prev(0, 2), vec![], commit(-1)),
            Err(Rejection::Mismatch { hint: -1 })
        );
        assert_eq!(terms(&log), [1, 1]);
    }

    #[test]
    fn only_conflicting_entries_and_their_followers_are_deleted() {
        let mut log = log_of(&[1, 1, 1, 1]);
        let before = log.entries()[1].clone();
        assert_eq!(
            log.accept(prev(0, 1), vec![before.clone(), entry(2, "x")], commit(-1)),
            Ok(2)
        );
        assert_eq!(terms(&log), [1, 1, 2]);
        assert_eq!(log.entries()[1], before);
    }

    #[test]
    fn a_stale_shorter_request_does_not_truncate() {
        let mut log = log_of(&[1, 1, 1, 1]);
        let dup = log.entries()[1].clone();
        assert_eq!(log.accept(prev(0, 1), vec![dup], commit(-1)), Ok(1));
        assert_eq!(terms(&log), [1, 1, 1, 1]);
        assert_eq!(log.accept(prev(2, 1), vec![], commit(-1)), Ok(2));
        assert_eq!(terms(&log), [1, 1, 1, 1]);
    }

    #[test]
    fn commit_is_min_of_leader_commit_and_last_new_entry_and_never_drops() {
        let mut log = log_of(&[1, 1, 1, 1]);
        // The follower's extra entries beyond the request are not vouched for.
        assert_eq!(log.accept(prev(0, 1), vec![], commit(3)), Ok(0));
        assert_eq!(log.committed(), 0);
        assert_eq!(log.accept(prev(1, 1), vec![], commit(1)), Ok(1));
        assert_eq!(log.committed(), 1);
        assert_eq!(log.accept(prev(0, 1), vec![], commit(0)), Ok(0));
        assert_eq!(log.committed(), 1);
    }

    #[test]
    fn committed_entries_are_never_overwritten() {
        let mut log = log_of(&[1, 1]);
        log.commit_to(0);
        assert_eq!(
            log.accept(prev(-1, -1), vec![entry(2, "x")], commit(-1)),
            Err(Rejection::ConflictsWithCommitted { commit: 0 })
        );
        log.truncate(0);
        assert_eq!(terms(&log), [1]);
    }

    #[test]
    fn committed_entries_are_handed_out_once_in_order() {
        let mut log = log_of(&[1, 1, 1]);
        assert!(log.take_committed().is_empty());
        log.commit_to(1);
        let got: Vec<LogIndex> = log.take_committed().into_iter().map(|(i, _)| i).collect();
        assert_eq!(got, [0, 1]);
        log.commit_to(7);
        let got: Vec<LogIndex> = log.take_committed().into_iter().map(|(i, _)| i).collect();
        assert_eq!(got, [2]);
        assert!(log.take_committed().is_empty());
    }

    #[test]
    fn unpersisted_changes_cover_appends_and_truncations() {
        let mut log = log_of(&[1, 1, 1]);
        assert_eq!(log.take_unpersisted(3), None);
        log.accept(prev(0, 1), vec![entry(2, "x")], commit(-1))
            .unwrap();
        assert_eq!(log.take_unpersisted(2), Some((1, vec![entry(2, "x")])));
        log.append(entry(3, "y"));
        log.append(entry(3, "z"));
        // The last two may not be persisted yet: nothing to write until allowed.
        assert_eq!(log.take_unpersisted(2), None);
        assert_eq!(
            log.take_unpersisted(4),
            Some((2, vec![entry(3, "y"), entry(3, "z")]))
        );
        log.truncate(2);
        assert_eq!(log.take_unpersisted(2), Some((2, vec![])));
    }

    /// The encoded bytes of `log`'s entries `from..to`, counted afresh.
    fn counted(log: &RaftLog, from: usize, to: usize) -> usize {
        log.entries()[from..to].iter().map(Entry::wire_len).sum()
    }

    #[test]
    fn sizes_follow_appends_truncations_and_applying() {
        let mut log = log_of(&[1, 1, 1]);
        let one = log.entries()[0].wire_len();
        assert_eq!(log.bytes(), 3 * one);
        assert_eq!(log.unapplied_bytes(), 3 * one);
        log.accept(prev(0, 1), vec![entry(2, "longer name")], commit(-1))
            .unwrap();
        assert_eq!(log.bytes(), counted(&log, 0, 2));
        log.append(entry(2, "y"));
        log.commit_to(1);
        log.take_committed();
        assert_eq!(log.bytes(), counted(&log, 0, 3));
        assert_eq!(log.unapplied_bytes(), counted(&log, 2, 3));
        log.truncate(2);
        assert_eq!(log.bytes(), counted(&log, 0, 2));
        assert_eq!(log.unapplied_bytes(), 0);
    }

    #[test]
    fn fitting_counts_entries_within_the_budget_and_at_least_one() {
        let log = log_of(&[1, 1, 1, 1, 1]);
        let one = log.entries()[0].wire_len();
        assert_eq!(log.fitting(0, 10, 2 * one), 2);
        assert_eq!(log.fitting(0, 10, 2 * one - 1), 1);
        assert_eq!(log.fitting(1, 10, 0), 1, "one entry whatever its size");
        assert_eq!(log.fitting(3, 10, usize::MAX), 2);
        assert_eq!(log.fitting(0, 3, usize::MAX), 3);
        assert_eq!(log.fitting(2, 0, usize::MAX), 0);
        assert_eq!(log.fitting(5, 10, usize::MAX), 0);
        assert_eq!(log.fitting(9, 10, usize::MAX), 0);
    }

    #[test]
    fn tail_of_a_term() {
        assert_eq!(log_of(&[1, 2, 2]).tail_start_of_term(2), 1);
        assert_eq!(log_of(&[1, 2, 2]).tail_start_of_term(3), 3);
        assert_eq!(log_of(&[2, 2]).tail_start_of_term(2), 0);
        assert_eq!(log_of(&[1, 2, 2]).last_id_within(1), (1, 0));
        assert_eq!(log_of(&[1, 2, 2]).last_id_within(0), (NO_TERM, -1));
    }

    /// `log_of(terms)` with everything committed and applied.
    fn applied_log(terms: &[Term]) -> RaftLog {
        let mut log = log_of(terms);
        log.commit_to(log.last_index());
        log.take_committed();
        log
    }

    #[test]
    fn compaction_keeps_absolute_indices_sizes_and_the_snapshot_term() {
        let mut log = log_of(&[1, 1, 2, 2, 3]);
        log.commit_to(3);
        log.take_committed();
        let size = log.entries()[0].wire_len();
        log.compact(4);
        assert_eq!(log.end(), 5, "not applied that far: nothing happens");
        log.compact(2);
        assert_eq!((log.first_index(), log.end(), log.last_index()), (3, 5, 4));
        assert_eq!(terms(&log), [2, 3]);
        assert_eq!(log.term_at(2), Some(2), "the snapshot's last entry");
        assert_eq!((log.term_at(1), log.term_at(3)), (None, Some(2)));
        assert_eq!(log.bytes(), 2 * size);
        assert_eq!(log.fitting(1, 10, usize::MAX), 0, "compacted");
        assert_eq!(log.fitting(3, 10, size), 1);
        assert_eq!(terms_of(log.slice(3, 5, 10)), [2, 3]);
        assert!(log.slice(2, 5, 10).is_empty());
        assert_eq!(log.durable_entries().len(), 2);
        log.compact(1);
        assert_eq!(log.first_index(), 3, "an older snapshot changes nothing");
        // A log restored from the snapshot looks the same.
        let restored = RaftLog::restore(3, 2, log.entries().to_vec(), 3);
        assert_eq!((restored.term_at(2), restored.applied()), (Some(2), 2));
        assert_eq!(restored.committed(), 3);
    }

    fn terms_of(entries: &[Entry]) -> Vec<Term> {
        entries.iter().map(|e| e.term).collect()
    }

    #[test]
    fn a_request_reaching_into_the_snapshot_skips_what_it_covers() {
        let mut log = applied_log(&[1, 1, 2]);
        log.compact(1);
        // Entries 0..=2 again, then a new one: the covered two are skipped.
        let new = vec![
            entry(1, "x"),
            entry(1, "y"),
            entry(2, "old2"),
            entry(2, "n"),
        ];
        assert_eq!(log.accept(prev(-1, -1), new, commit(3)), Ok(3));
        assert_eq!(terms(&log), [2, 2]);
        assert_eq!(log.committed(), 3);
        // A request ending inside the snapshot holds nothing new.
        assert_eq!(log.accept(prev(0, 7), vec![], commit(-1)), Ok(0));
        // At the snapshot's end, its term is checked like any entry's.
        assert_eq!(
            log.accept(prev(1, 2), vec![], commit(-1)),
            Err(Rejection::Mismatch { hint: 0 })
        );
        assert_eq!(log.accept(prev(1, 1), vec![], commit(-1)), Ok(1));
    }

    #[test]
    fn installing_keeps_a_matching_suffix_replaces_a_conflicting_log_and_ignores_old_ones() {
        let mut log = log_of(&[1, 1, 2, 2]);
        assert!(log.install(1, 1));
        assert_eq!((log.first_index(), terms(&log)), (2, vec![2, 2]));
        assert_eq!((log.committed(), log.applied()), (1, 1));
        assert!(log.take_committed().is_empty());
        assert!(!log.install(0, 1), "covered by what is committed");
        let mut log = log_of(&[1, 1, 2]);
        assert!(log.install(1, 3), "another term at its last index");
        assert_eq!((log.first_index(), log.end()), (2, 2));
        assert_eq!(log.term_at(1), Some(3));
        assert!(
            log.take_unpersisted(2).is_none(),
            "the snapshot write holds it all"
        );
        let mut log = log_of(&[1]);
        assert!(log.install(5, 2), "past the end of the log");
        assert_eq!((log.last_index(), log.committed()), (5, 5));
    }
}
