//! The original's configuration files, used unchanged (SPEC §6): real text
//! configs repeat or misnumber their `metadata<i>` keys, and the original
//! ignores the keys and takes servers in line order. So must we.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Proc, bin, file_meta, loopback_listener, raft_client, wait_listening, within};

/// A five-server text config whose keys repeat `metadata2` and skip
/// `metadata3`, as a real `5nodes.txt` does, starts a cluster whose fourth
/// server (the second `metadata2` line) replicates like any other.
#[tokio::test]
async fn a_text_config_with_repeated_keys_starts_a_working_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let listeners: Vec<_> = (0..5).map(|_| loopback_listener()).collect();
    let addrs: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    let keys = [
        "metadata0",
        "metadata1",
        "metadata2",
        "metadata2",
        "metadata4",
    ];
    let text: String = keys
        .iter()
        .zip(&addrs)
        .map(|(key, addr)| format!("{key}: {addr}\n"))
        .collect();
    let config = dir.path().join("5nodes.txt");
    std::fs::write(&config, format!("M: 5\n{text}")).unwrap();

    let mut procs: Vec<Proc> = listeners
        .into_iter()
        .enumerate()
        .map(|(id, listener)| {
            Proc::spawn_on(
                listener,
                &bin("surfstore-raft-server"),
                &[
                    "-f",
                    config.to_str().unwrap(),
                    "-i",
                    &id.to_string(),
                    "-b",
                    "127.0.0.1:1",
                    "--heartbeat-ms",
                    "0",
                ],
            )
        })
        .collect();
    for (proc, addr) in procs.iter_mut().zip(&addrs) {
        assert!(wait_listening(proc, addr), "{} exited", proc.name);
    }

    let clients: Vec<_> = addrs.iter().map(|a| raft_client(a)).collect();
    within("SetLeader", clients[0].clone().set_leader(()))
        .await
        .unwrap();
    let meta = file_meta("a.txt", 1, &["h"]);
    let version = within("UpdateFile", clients[0].clone().update_file(meta.clone()))
        .await
        .unwrap()
        .into_inner()
        .version;
    assert_eq!(version, 1);
    within("SendHeartbeat", clients[0].clone().send_heartbeat(()))
        .await
        .unwrap();
    for i in [2, 3, 4] {
        let state = within(
            "GetInternalState",
            clients[i].clone().get_internal_state(()),
        )
        .await
        .unwrap()
        .into_inner();
        assert_eq!(state.log.len(), 1, "server {i}");
        let map = state.meta_map.unwrap_or_default().file_info_map;
        assert_eq!(map.get("a.txt"), Some(&meta), "server {i}");
    }
}
