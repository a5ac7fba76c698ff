//! Majority arithmetic: how many servers make a quorum, and which log index a
//! quorum holds. Every decision that needs "a majority" (commit, leadership
//! confirmation, step-down on denial, quorum-confirmed reads) goes through
//! here so that they all agree on what a majority is.

use super::LogIndex;

/// The number of servers that form a majority of a `cluster_size`-server
/// cluster (the leader counts itself).
pub fn majority(cluster_size: usize) -> usize {
    cluster_size / 2 + 1
}

/// Whether `count` servers are a majority of a `cluster_size`-server cluster.
pub fn is_majority(count: usize, cluster_size: usize) -> bool {
    count >= majority(cluster_size)
}

/// The highest index that a majority of the cluster holds, given the highest
/// matched index of every server (the leader's own last index included).
/// Servers missing from `matched` count as holding nothing (-1).
pub fn quorum_index(mut matched: Vec<LogIndex>, cluster_size: usize) -> LogIndex {
    matched.sort_unstable_by(|a, b| b.cmp(a));
    matched
        .get(majority(cluster_size) - 1)
        .copied()
        .unwrap_or(-1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majorities() {
        assert_eq!(majority(1), 1);
        assert_eq!(majority(2), 2);
        assert_eq!(majority(3), 2);
        assert_eq!(majority(4), 3);
        assert_eq!(majority(5), 3);
        assert!(is_majority(2, 3));
        assert!(!is_majority(1, 3));
        assert!(is_majority(3, 5));
        assert!(!is_majority(2, 5));
    }

    #[test]
    fn quorum_index_is_the_majority_th_highest() {
        assert_eq!(quorum_index(vec![4], 1), 4);
        assert_eq!(quorum_index(vec![4, -1, 2], 3), 2);
        assert_eq!(quorum_index(vec![4, 3, 7], 3), 4);
        assert_eq!(quorum_index(vec![9, 1, 1, 5, 0], 5), 1);
        assert_eq!(quorum_index(vec![9, 8, -1, -1, -1], 5), -1);
        // Fewer reports than servers: the missing ones hold nothing.
        assert_eq!(quorum_index(vec![9, 8], 5), -1);
    }
}
