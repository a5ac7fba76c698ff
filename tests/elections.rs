//! The opt-in election mode (SPEC §9.1) on real processes: a cluster started
//! with `--election-timeout-ms` elects its own leader, replaces a killed
//! one, and a client given `-f CONFIG` carries on through it without anyone
//! calling `SetLeader`; `surfstore-ctl` reports the leader and the outcome of
//! a `set-leader` campaign; the flags are checked.
//!
//! The nemesis suite (`tests/nemesis.rs`) checks the same mode under many
//! faults; the simulator (`tests/raft_properties.rs`) checks its rules.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod common;

use common::{
    ELECTION_LIMIT, ELECTIONS, bin, ctl, eventually, file_meta, run_with_timeout,
    start_durable_cluster, start_partitionable_cluster, synced_files,
};

#[tokio::test(flavor = "multi_thread")]
async fn a_client_syncs_through_the_death_of_the_leader_without_set_leader() {
    let mut cluster = start_durable_cluster(3, ELECTIONS).await;
    let (first, term) = cluster.elected(None).await;

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), b"before the failover").unwrap();
    let (out, _) = cluster.sync(dir.path(), 4096);
    assert!(out.status.success(), "{out:?}");

    // `status` names the leader and its term.
    let config = cluster.config.to_str().unwrap().to_string();
    let (code, table, _) = ctl(&["status", "-f", &config]);
    assert_eq!(code, Some(0));
    let row = table
        .lines()
        .find(|l| l.contains(&cluster.addrs[first]))
        .unwrap();
    assert!(
        row.contains("yes") && row.contains(&term.to_string()),
        "{table}"
    );

    cluster.kill(first);
    std::fs::write(dir.path().join("a.txt"), b"after the failover").unwrap();
    std::fs::write(dir.path().join("b.txt"), b"new").unwrap();
    let (out, _) = cluster.sync(dir.path(), 4096);
    assert!(out.status.success(), "{out:?}");
    let (second, next_term) = cluster.elected(Some(first)).await;
    assert_ne!(second, first);
    assert!(next_term > term);

    // Another client sees both files as synced.
    let other = tempfile::tempdir().unwrap();
    let (out, _) = cluster.sync(other.path(), 4096);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(synced_files(other.path()), synced_files(dir.path()));

    // Back, the old leader follows the new one.
    cluster.restart(first).await;
    eventually("the restarted server follows", ELECTION_LIMIT, async || {
        let state = cluster.state(first).await;
        (!state.is_leader && state.term >= next_term).then_some(())
    })
    .await;
    assert_eq!(cluster.elected(None).await.0, second);
}

#[tokio::test(flavor = "multi_thread")]
async fn set_leader_campaigns_and_a_server_cut_off_loses() {
    let (cluster, network) = start_partitionable_cluster(3, ELECTIONS).await;
    let (first, _) = cluster.elected(None).await;
    let other = (first + 1) % 3;
    // Until it holds the leader's no-op its log is behind, and the others
    // rightly refuse it their votes.
    let len = cluster.state(first).await.log.len();
    eventually("the no-op on every server", ELECTION_LIMIT, async || {
        (cluster.state(other).await.log.len() == len).then_some(())
    })
    .await;
    let addr = cluster.addrs[other].clone();
    let (code, out, err) = ctl(&["set-leader", &addr]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, format!("{addr}: leader set\n"));
    assert_eq!(cluster.elected(None).await.0, other);

    let cut = (other + 1) % 3;
    network.isolate(cut);
    let addr = cluster.addrs[cut].clone();
    let (code, _, err) = ctl(&["set-leader", &addr]);
    assert_eq!(code, Some(1));
    assert!(err.contains("did not win a majority of votes"), "{err}");
    // Its campaign raised its term: healed, the cluster elects a leader of
    // a newer term, which serves.
    network.heal();
    let (now, _) = cluster.elected(None).await;
    eventually("an update on the new leader", ELECTION_LIMIT, async || {
        cluster
            .update(now, file_meta("healed", 1, &["h"]))
            .await
            .ok()
    })
    .await;
}

#[test]
fn election_flags_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        r#"{"MetaStoreAddrs": ["127.0.0.1:1"], "BlockStoreAddrs": ["127.0.0.1:2"]}"#,
    )
    .unwrap();
    let config = config.to_str().unwrap();
    for (flags, says) in [
        (
            &["--election-timeout-ms", "20"][..],
            "too short: at least 50",
        ),
        (
            &["--election-timeout-ms", "200", "--heartbeat-ms", "200"][..],
            "--heartbeat-ms 200 must be above 0 and below --election-timeout-ms 200",
        ),
        (
            &["--election-timeout-ms", "200", "--heartbeat-ms", "0"][..],
            "--heartbeat-ms 0 must be above 0",
        ),
    ] {
        let mut args = vec!["-f", config, "-i", "0"];
        args.extend_from_slice(flags);
        let (out, _) = run_with_timeout(&bin("surfstore-raft-server"), &args, ELECTION_LIMIT);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{flags:?}: {err}");
        assert!(err.contains(says), "{flags:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}
