//! A linearizability checker for histories of SurfStore files, each file a
//! versioned register: `UpdateFile(name, v, hash)` takes effect exactly
//! when `v` is one more than the current version (an absent file has
//! version 0) and answers `v`, otherwise it answers -1 and changes nothing;
//! a read (`GetFileInfoMap`) sees the current version and hash.
//!
//! The search is Wing and Gong's, with Lowe's memoisation (the algorithm of
//! porcupine and Knossos): walk the history's calls and returns in time
//! order; at a call, try to take that operation effect now (if the model
//! allows what it answered) and restart; at the return of an operation not
//! yet taken effect, undo the last choice. A set of taken operations and a
//! state already tried is never tried again. Files are checked one by one:
//! linearizability is local (Herlihy and Wing), so a map read becomes one
//! read per file it could have named.
//!
//! An operation whose outcome is unknown (timed out, connection lost) has
//! no return: it may take effect at any point after its call, or never.

use std::collections::HashSet;

/// What a file holds: version and a tag naming the write (the block hash
/// list the writer chose); `None` while absent (version 0).
pub type Register = Option<(i32, String)>;

/// One operation on one file, as a client saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Op {
    /// When it was invoked (any monotonic unit).
    pub call: u64,
    /// When its answer arrived; `None` when no answer did.
    pub ret: Option<u64>,
    /// What it was and what it answered.
    pub kind: OpKind,
}

/// The two operations of a versioned register.
#[derive(Debug, Clone, PartialEq)]
pub enum OpKind {
    /// A read that saw `seen`.
    Read {
        /// The version and tag it returned (`None`: the file was absent).
        seen: Register,
    },
    /// `UpdateFile` with `version` and `tag`.
    Write {
        /// The version asked for.
        version: i32,
        /// The tag written.
        tag: String,
        /// Whether it took effect, if the answer arrived.
        accepted: Option<bool>,
    },
}

/// Why a history is not linearizable, or could not be decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// No order of the operations explains what the clients saw.
    Violation {
        /// How many operations the longest explainable prefix took.
        explained: usize,
        /// The operations, in time order of their calls.
        ops: Vec<Op>,
    },
    /// The search gave up after this many steps.
    Undecided(usize),
}

/// The states `op` can lead `state` to, given what it answered: none if
/// the answer is impossible from `state`.
fn step(state: &Register, op: &OpKind) -> Vec<Register> {
    let current = state.as_ref().map_or(0, |(version, _)| *version);
    match op {
        OpKind::Read { seen } => {
            if seen == state {
                vec![state.clone()]
            } else {
                Vec::new()
            }
        }
        OpKind::Write {
            version,
            tag,
            accepted,
        } => {
            let applies = *version == current + 1;
            let applied = Some((*version, tag.clone()));
            match (accepted, applies) {
                (Some(true), true) => vec![applied],
                (Some(false), false) => vec![state.clone()],
                (Some(_), _) => Vec::new(),
                (None, true) => vec![applied, state.clone()],
                (None, false) => vec![state.clone()],
            }
        }
    }
}

/// The history as a doubly linked list of call and return events in time
/// order, from which taken operations are cut out (and put back when the
/// search undoes them), and the search's state.
struct Search<'a> {
    ops: &'a [Op],
    /// Per event: its operation and whether it is the call.
    events: Vec<(usize, bool)>,
    /// Per operation: the index of its return event.
    return_of: Vec<usize>,
    /// `next[i]`/`prev[i]` link event `i`; index `events.len()` is the head.
    next: Vec<usize>,
    prev: Vec<usize>,
    /// The operations taken into effect, one bit each.
    taken: Vec<u64>,
    state: Register,
    /// Taken sets and states already tried.
    seen: HashSet<(Vec<u64>, Register)>,
    /// The choices made: the call taken, the state before it, and the other
    /// states it could still lead to.
    choices: Vec<(usize, Register, Vec<Register>)>,
}

impl<'a> Search<'a> {
    fn new(ops: &'a [Op]) -> Self {
        // A call sorts before a return at the same instant, so operations
        // that touch count as concurrent (the lenient side).
        let mut timed: Vec<(u64, bool, usize)> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            timed.push((op.call, false, i));
            timed.push((op.ret.unwrap_or(u64::MAX), true, i));
        }
        timed.sort_unstable();
        let events: Vec<(usize, bool)> = timed.iter().map(|&(_, ret, op)| (op, !ret)).collect();
        let mut return_of = vec![0; ops.len()];
        for (i, &(op, is_call)) in events.iter().enumerate() {
            if !is_call {
                return_of[op] = i;
            }
        }
        let n = events.len();
        let head = n;
        let mut next: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| if i == 0 { head } else { i - 1 }).collect();
        next.push(if n == 0 { n } else { 0 });
        prev.push(head);
        Self {
            ops,
            events,
            return_of,
            next,
            prev,
            taken: vec![0; ops.len().div_ceil(64)],
            state: None,
            seen: HashSet::new(),
            choices: Vec::new(),
        }
    }

    fn head(&self) -> usize {
        self.events.len()
    }

    fn first(&self) -> usize {
        self.next[self.head()]
    }

    fn unlink(&mut self, i: usize) {
        let (p, q) = (self.prev[i], self.next[i]);
        self.next[p] = q;
        if q < self.events.len() {
            self.prev[q] = p;
        }
    }

    fn relink(&mut self, i: usize) {
        let (p, q) = (self.prev[i], self.next[i]);
        self.next[p] = i;
        if q < self.events.len() {
            self.prev[q] = i;
        }
    }

    /// Takes the operation called at event `call` into effect now, leading
    /// to the first of `options` not tried before with the same set taken.
    fn take(&mut self, call: usize, mut options: Vec<Register>) -> bool {
        let op = self.events[call].0;
        while let Some(candidate) = options.pop() {
            self.mark(op, true);
            if self.seen.insert((self.taken.clone(), candidate.clone())) {
                let before = std::mem::replace(&mut self.state, candidate);
                self.choices.push((call, before, options));
                self.unlink(call);
                self.unlink(self.return_of[op]);
                return true;
            }
            self.mark(op, false);
        }
        false
    }

    /// Marks `op` taken or not.
    fn mark(&mut self, op: usize, taken: bool) {
        let bit = 1 << (op % 64);
        if taken {
            self.taken[op / 64] |= bit;
        } else {
            self.taken[op / 64] &= !bit;
        }
    }

    /// Undoes the last choice and tries its other outcomes; returns the
    /// event to go on from, or `None` when nothing is left to undo.
    fn undo(&mut self) -> Option<usize> {
        let (call, before, options) = self.choices.pop()?;
        let op = self.events[call].0;
        self.relink(self.return_of[op]);
        self.relink(call);
        self.mark(op, false);
        self.state = before;
        Some(if self.take(call, options) {
            self.first()
        } else {
            self.next[call]
        })
    }

    fn run(&mut self, budget: usize) -> Result<(), Verdict> {
        let mut event = self.first();
        let mut explained = 0;
        let mut steps = 0;
        while self.first() < self.events.len() {
            steps += 1;
            if steps > budget {
                return Err(Verdict::Undecided(steps));
            }
            let (op, is_call) = self.events[event];
            if is_call {
                let options = step(&self.state, &self.ops[op].kind);
                event = if self.take(event, options) {
                    explained = explained.max(self.choices.len());
                    self.first()
                } else {
                    self.next[event]
                };
            } else {
                // An operation returned without being taken: the choices so
                // far cannot explain it.
                event = self.undo().ok_or_else(|| Verdict::Violation {
                    explained,
                    ops: self.ops.to_vec(),
                })?;
            }
        }
        Ok(())
    }
}

/// Checks one file's history, giving up after `budget` search steps.
pub fn check(ops: &[Op], budget: usize) -> Result<(), Verdict> {
    Search::new(ops).run(budget)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: usize = 1_000_000;

    fn write(call: u64, ret: Option<u64>, version: i32, tag: &str, accepted: Option<bool>) -> Op {
        Op {
            call,
            ret,
            kind: OpKind::Write {
                version,
                tag: tag.into(),
                accepted,
            },
        }
    }

    fn read(call: u64, ret: u64, seen: Option<(i32, &str)>) -> Op {
        Op {
            call,
            ret: Some(ret),
            kind: OpKind::Read {
                seen: seen.map(|(v, t)| (v, t.to_string())),
            },
        }
    }

    fn rejected(ops: &[Op]) -> bool {
        matches!(check(ops, BUDGET), Err(Verdict::Violation { .. }))
    }

    #[test]
    fn an_empty_or_sequential_history_is_linearizable() {
        assert_eq!(check(&[], BUDGET), Ok(()));
        let ops = [
            read(0, 1, None),
            write(2, Some(3), 1, "a", Some(true)),
            read(4, 5, Some((1, "a"))),
            write(6, Some(7), 1, "b", Some(false)),
            write(8, Some(9), 2, "b", Some(true)),
            read(10, 11, Some((2, "b"))),
        ];
        assert_eq!(check(&ops, BUDGET), Ok(()));
    }

    #[test]
    fn concurrent_writes_of_one_version_let_exactly_one_win() {
        let ops = [
            write(0, Some(10), 1, "a", Some(false)),
            write(1, Some(9), 1, "b", Some(true)),
            read(11, 12, Some((1, "b"))),
        ];
        assert_eq!(check(&ops, BUDGET), Ok(()));
        let both_won = [
            write(0, Some(10), 1, "a", Some(true)),
            write(1, Some(9), 1, "b", Some(true)),
        ];
        assert!(rejected(&both_won));
    }

    #[test]
    fn a_read_overlapping_a_write_may_see_either_side() {
        let before = [
            write(0, Some(10), 1, "a", Some(true)),
            read(1, 2, None),
            read(3, 4, Some((1, "a"))),
        ];
        assert_eq!(check(&before, BUDGET), Ok(()));
    }

    #[test]
    fn a_stale_read_after_a_write_returned_is_a_violation() {
        let ops = [write(0, Some(1), 1, "a", Some(true)), read(2, 3, None)];
        assert!(rejected(&ops));
        let going_back = [
            write(0, Some(1), 1, "a", Some(true)),
            write(2, Some(3), 2, "b", Some(true)),
            read(4, 5, Some((1, "a"))),
        ];
        assert!(rejected(&going_back));
    }

    #[test]
    fn reads_that_flip_back_are_a_violation_even_when_overlapping_the_write() {
        let ops = [
            write(0, Some(100), 1, "a", Some(true)),
            read(1, 2, Some((1, "a"))),
            read(3, 4, None),
        ];
        assert!(rejected(&ops));
    }

    #[test]
    fn a_read_cannot_see_a_write_called_after_it_returned() {
        let ops = [
            read(0, 1, Some((1, "a"))),
            write(2, Some(3), 1, "a", Some(true)),
        ];
        assert!(rejected(&ops));
    }

    #[test]
    fn a_read_of_a_refused_write_is_a_violation() {
        let ops = [
            write(0, Some(1), 1, "a", Some(true)),
            write(2, Some(5), 1, "b", Some(false)),
            read(3, 4, Some((1, "b"))),
        ];
        assert!(rejected(&ops));
    }

    #[test]
    fn a_read_after_an_acknowledged_write_misses_it_only_if_it_is_stale() {
        // Two clients: one's write returned, then the other reads; the
        // read may not see the older version, nor the absent file.
        let fresh = [
            write(0, Some(1), 1, "a", Some(true)),
            write(2, Some(4), 2, "b", Some(true)),
            read(5, 6, Some((2, "b"))),
            read(5, 7, Some((2, "b"))),
        ];
        assert_eq!(check(&fresh, BUDGET), Ok(()));
        let mut stale = fresh.clone();
        stale[3] = read(5, 7, Some((1, "a")));
        assert!(rejected(&stale));
    }

    #[test]
    fn a_value_never_written_is_a_violation() {
        assert!(rejected(&[read(0, 1, Some((1, "ghost")))]));
    }

    #[test]
    fn a_refused_write_that_must_have_applied_is_a_violation() {
        let ops = [read(0, 1, None), write(2, Some(3), 1, "a", Some(false))];
        assert!(rejected(&ops));
    }

    #[test]
    fn an_unknown_write_may_take_effect_late_or_never() {
        let late = [
            write(0, None, 1, "a", None),
            read(5, 6, None),
            read(7, 8, Some((1, "a"))),
        ];
        assert_eq!(check(&late, BUDGET), Ok(()));
        let never = [
            write(0, None, 1, "a", None),
            write(5, Some(6), 1, "b", Some(true)),
            read(7, 8, Some((1, "b"))),
        ];
        assert_eq!(check(&never, BUDGET), Ok(()));
        // Seen, then unseen: it cannot be undone.
        let undone = [
            write(0, None, 1, "a", None),
            read(5, 6, Some((1, "a"))),
            read(7, 8, None),
        ];
        assert!(rejected(&undone));
    }

    #[test]
    fn a_lost_acknowledged_write_is_a_violation() {
        let ops = [
            write(0, Some(1), 1, "a", Some(true)),
            write(2, Some(3), 2, "b", Some(true)),
            write(4, Some(5), 2, "c", Some(true)),
        ];
        assert!(rejected(&ops));
    }

    #[test]
    fn many_concurrent_clients_are_decided_quickly() {
        // 8 clients in rounds: each round all read the version, then all
        // try the next; one wins per round. Overlapping windows make the
        // search branch, which the memo keeps small.
        let mut ops = Vec::new();
        let mut time = 0;
        for round in 0..30 {
            let version = round + 1;
            let winner = (round % 8) as usize;
            for client in 0..8usize {
                let seen =
                    (round > 0).then(|| (round, format!("r{}c{}", round - 1, (round - 1) % 8)));
                ops.push(Op {
                    call: time + client as u64,
                    ret: Some(time + 20 + client as u64),
                    kind: OpKind::Read { seen },
                });
            }
            time += 40;
            for client in 0..8usize {
                ops.push(write(
                    time + client as u64,
                    Some(time + 30),
                    version,
                    &format!("r{round}c{client}"),
                    Some(client == winner),
                ));
            }
            time += 40;
        }
        assert_eq!(check(&ops, BUDGET), Ok(()));
        // The same with one read seeing the loser's tag: rejected.
        let bad = ops
            .iter()
            .position(|op| matches!(&op.kind, OpKind::Read { seen: Some((5, _)) }))
            .unwrap();
        ops[bad].kind = OpKind::Read {
            seen: Some((5, "r4c7".into())),
        };
        assert!(rejected(&ops));
    }
}
