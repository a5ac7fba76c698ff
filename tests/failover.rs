//! Election mode's two promises about partitions (SPEC §9.1), on real
//! 3-server clusters whose peer links run through in-test proxies
//! ([`common::network`]):
//!
//! * pre-vote: a follower cut off from the rest never disrupts them, not
//!   while cut off (its PreVotes find no majority, so it raises no term)
//!   nor when the cut heals (it has no higher term to depose the leader
//!   with), and it follows again;
//! * check-quorum: a leader cut off from the majority steps down within
//!   about two election timeouts (it checks once per timeout whether a
//!   majority answered since the last check), while the majority elects a
//!   leader of its own that serves.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Instant;

use common::network::Network;
use common::{Cluster, ELECTION_LIMIT, ELECTIONS, election_timeout, eventually, file_meta};

/// A 3-server cluster in election mode, partitionable.
async fn start() -> (Cluster, Network) {
    common::start_partitionable_cluster(3, ELECTIONS).await
}

/// Waits until `server` holds `leader`'s map in `term`, as a follower.
async fn follows(cluster: &Cluster, server: usize, leader: usize, term: i64) {
    eventually("the server follows again", ELECTION_LIMIT, async || {
        let (state, led) = (cluster.state(server).await, cluster.state(leader).await);
        (state.term == term && !state.is_leader && state.meta_map == led.meta_map).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_follower_never_disrupts_the_majority() {
    let (cluster, network) = start().await;
    let (leader, term) = cluster.elected(None).await;
    let follower = (leader + 1) % 3;
    network.isolate(follower);
    let cut = Instant::now();
    let mut version = 0;
    // Ten election timeouts: the follower times out and asks for PreVotes
    // again and again meanwhile.
    while cut.elapsed() < 10 * election_timeout() {
        version += 1;
        let update = file_meta("f", version, &["h"]);
        assert_eq!(cluster.update(leader, update).await.unwrap(), version);
        for i in 0..3 {
            let state = cluster.state(i).await;
            assert_eq!(
                (state.is_leader, state.term),
                (i == leader, term),
                "server {i} after {:?} of the follower's isolation",
                cut.elapsed()
            );
        }
        tokio::time::sleep(election_timeout() / 3).await;
    }
    network.heal();
    version += 1;
    let update = file_meta("f", version, &["h"]);
    assert_eq!(cluster.update(leader, update).await.unwrap(), version);
    follows(&cluster, follower, leader, term).await;
    let state = cluster.state(leader).await;
    assert!(
        state.is_leader && state.term == term,
        "rejoining deposed the leader"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_majority_steps_down() {
    let (cluster, network) = start().await;
    let (leader, term) = cluster.elected(None).await;
    network.isolate(leader);
    let cut = Instant::now();
    // It checks every N whether a majority answered since the last check:
    // the first check after the cut may still count answers from before
    // it, the second cannot. A tick and a poll of allowance on top.
    let limit = 2 * election_timeout() + election_timeout() / 2;
    eventually("the cut-off leader steps down", limit, async || {
        (!cluster.state(leader).await.is_leader).then_some(())
    })
    .await;
    eprintln!("stepped down {:?} after the cut", cut.elapsed());
    let (new, new_term) = cluster.elected(Some(leader)).await;
    assert!(
        new_term > term,
        "the new leader's term {new_term} is not past {term}"
    );
    assert_eq!(
        cluster
            .update(new, file_meta("f", 1, &["h"]))
            .await
            .unwrap(),
        1
    );
    let refused = cluster.update(leader, file_meta("f", 2, &["h"])).await;
    common::assert_status(
        refused,
        tonic::Code::FailedPrecondition,
        "Server is not the leader",
        "UpdateFile on the cut-off old leader",
    );
    network.heal();
    follows(&cluster, leader, new, new_term).await;
}
