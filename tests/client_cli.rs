//! `surfstore-client` from the outside: its command line, its exit codes and
//! what it leaves behind when it cannot sync.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::{bin, free_ports, run, start_server, sync, sync_with};

fn client(args: &[&str]) -> Output {
    run(&bin("surfstore-client"), args)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every entry of `dir` with its contents, to check nothing changed.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    entries.sort();
    entries
}

#[test]
fn bad_arguments_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().to_str().unwrap();
    for args in [
        &[][..],
        &["localhost:1"][..],
        &["localhost:1", dir][..],
        &["--bogus", "localhost:1", dir, "1024"][..],
        &["not-an-address", dir, "1024"][..],
        &["localhost:1", dir, "1024", "extra"][..],
        &["-f", "cluster.json", "localhost:1", dir, "1024"][..],
        &["--retry-for", "soon", "localhost:1", dir, "1024"][..],
    ] {
        let out = client(args);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", stderr(&out));
        assert!(!out.stderr.is_empty(), "{args:?} printed nothing");
    }
}

#[test]
fn block_size_must_be_a_positive_integer() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().to_str().unwrap();
    for size in [
        "0",
        "abc",
        "1.5",
        "-4",
        "",
        "99999999999999999999",
        "1000000000",
    ] {
        let out = client(&["localhost:1", dir, size]);
        assert_eq!(out.status.code(), Some(64), "{size:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("BLOCKSIZE"),
            "{size:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn a_block_size_giving_a_file_too_many_blocks_is_refused_before_any_work() {
    let server = start_server("both", &[]);
    let base = tempfile::tempdir().unwrap();
    fs::write(base.path().join("small.txt"), "would be uploaded").unwrap();
    // 5 MiB at 1-byte blocks is 5,242,880 blocks, over the 4,194,304
    // allowed; sparse, so it costs no disk.
    let big = fs::File::create(base.path().join("big.img")).unwrap();
    big.set_len(5 << 20).unwrap();
    drop(big);
    let before = snapshot(base.path());

    let (out, took) = common::run_with_timeout(
        &bin("surfstore-client"),
        &[&server.addr, base.path().to_str().unwrap(), "1"],
        Duration::from_secs(30),
    );
    let message = stderr(&out);
    assert_eq!(out.status.code(), Some(64), "{message}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(message.contains("big.img"), "{message}");
    assert!(message.contains("block size of at least 2"), "{message}");
    assert_eq!(message.lines().count(), 1, "{message}");
    assert_eq!(snapshot(base.path()), before);
    // Nothing reached the server.
    let map = common::runtime()
        .block_on(async {
            common::meta_client(&server.addr)
                .get_file_info_map(())
                .await
        })
        .unwrap()
        .into_inner()
        .file_info_map;
    assert!(map.is_empty(), "{map:?}");
}

#[test]
fn base_directory_must_exist_and_be_a_directory() {
    let parent = tempfile::tempdir().unwrap();
    let missing = parent.path().join("missing");
    let file = parent.path().join("file");
    fs::write(&file, "x").unwrap();
    for (path, needle) in [
        (&missing, "does not exist; create it, or pass --create"),
        (&file, "not a directory"),
    ] {
        let out = client(&["localhost:1", path.to_str().unwrap(), "1024"]);
        assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
        assert!(
            stderr(&out).contains(path.to_str().unwrap()),
            "{}",
            stderr(&out)
        );
        assert!(stderr(&out).contains(needle), "{}", stderr(&out));
        assert!(
            stderr(&out).starts_with("surfstore-client: "),
            "{}",
            stderr(&out)
        );
    }
    assert!(!missing.exists());

    // --create makes it, parents too, and syncs into it.
    let server = start_server("both", &[]);
    let nested = missing.join("and/below");
    let out = client(&["--create", &server.addr, nested.to_str().unwrap(), "1024"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(nested.join("index.txt").exists());
}

#[test]
fn bad_configs_exit_64_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    fs::create_dir(&base).unwrap();
    let base = base.to_str().unwrap();
    let cases = [
        ("missing.json", None),
        ("broken.json", Some("{\"MetaStoreAddrs\": [")),
        ("empty.json", Some("{\"MetaStoreAddrs\": []}")),
        ("noport.json", Some("{\"MetaStoreAddrs\": [\"localhost\"]}")),
    ];
    for (name, contents) in cases {
        let path = dir.path().join(name);
        if let Some(contents) = contents {
            fs::write(&path, contents).unwrap();
        }
        let out = client(&["-f", path.to_str().unwrap(), base, "1024"]);
        assert_eq!(out.status.code(), Some(64), "{name}: {}", stderr(&out));
        assert!(stderr(&out).contains(name), "{name}: {}", stderr(&out));
    }
    assert_eq!(fs::read_dir(base).unwrap().count(), 0);
}

#[test]
fn an_unreachable_server_fails_fast_and_changes_nothing() {
    let base = tempfile::tempdir().unwrap();
    fs::write(base.path().join("new-file"), "would be uploaded").unwrap();
    let index = "deleted-here,1,0 \n";
    fs::write(base.path().join("index.txt"), index).unwrap();
    let before = snapshot(base.path());
    let addr = format!("127.0.0.1:{}", free_ports(1)[0]);

    let started = Instant::now();
    let out = sync(base.path(), &addr, 1024);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    let message = stderr(&out);
    assert!(
        message.contains("cannot reach the MetaStore") && message.contains(&addr),
        "{message}"
    );
    assert_eq!(message.lines().count(), 1, "{message}");
    assert_eq!(snapshot(base.path()), before);
}

#[test]
fn an_unreachable_cluster_reports_no_leader() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    fs::create_dir(&base).unwrap();
    fs::write(base.join("f"), "x").unwrap();
    let addrs: Vec<String> = free_ports(3)
        .into_iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let config = dir.path().join("cluster.txt");
    let text: String = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("metadata{i}: {a}\n"))
        .collect();
    fs::write(&config, format!("M: 3\n{text}")).unwrap();

    let started = Instant::now();
    let out = client(&[
        "-f",
        config.to_str().unwrap(),
        base.to_str().unwrap(),
        "1024",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        stderr(&out).contains("no leader with a quorum"),
        "{}",
        stderr(&out)
    );
    assert_eq!(snapshot(&base), [("f".to_string(), b"x".to_vec())]);
}

#[test]
fn a_malformed_index_is_reported_with_its_line() {
    let server = start_server("both", &[]);
    let base = tempfile::tempdir().unwrap();
    fs::write(
        base.path().join("index.txt"),
        "good,1,\nthis line is broken\n",
    )
    .unwrap();
    fs::write(base.path().join("f"), "x").unwrap();
    let before = snapshot(base.path());
    let out = sync(base.path(), &server.addr, 1024);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("index.txt: line 2"),
        "{}",
        stderr(&out)
    );
    assert_eq!(snapshot(base.path()), before);
}

#[test]
fn without_a_terminal_prints_only_the_summary_line_and_help_exits_0() {
    let server = start_server("both", &[]);
    let base = tempfile::tempdir().unwrap();
    fs::write(base.path().join("f"), "x").unwrap();
    fs::write(base.path().join("g"), "x").unwrap();
    let out = sync(base.path(), &server.addr, 1024);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (secs, rest) = stdout
        .strip_prefix("synced in ")
        .and_then(|s| s.split_once("s: "))
        .unwrap_or_else(|| panic!("{stdout:?}"));
    assert!(secs.parse::<f64>().is_ok(), "{stdout:?}");
    // Two files of one identical block: the second finds it on the server
    // or sends it too, depending on which goes first; the total is fixed.
    assert!(
        rest == "2 uploaded, 0 downloaded, 0 deleted, 0 conflicts; sent 1 B, received 0 B, 1 blocks already on server\n"
            || rest
                == "2 uploaded, 0 downloaded, 0 deleted, 0 conflicts; sent 2 B, received 0 B, 0 blocks already on server\n",
        "{stdout:?}"
    );
    // No progress bar (or anything else) on a stderr that is not a terminal.
    assert!(out.stderr.is_empty(), "{}", stderr(&out));

    let help = client(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    let usage = String::from_utf8_lossy(&help.stdout);
    for flag in ["BLOCKSIZE", "--quiet", "--keep-conflicts"] {
        assert!(usage.contains(flag), "{flag} not in {usage}");
    }
}

#[test]
fn quiet_prints_nothing_on_success_and_still_reports_errors() {
    let server = start_server("both", &[]);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    fs::create_dir(a.path().join("d")).unwrap();
    fs::write(a.path().join("d/f"), "x").unwrap();
    for dir in [a.path(), b.path()] {
        let out = sync_with(dir, &server.addr, 1024, &["-q"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            out.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(out.stderr.is_empty(), "{}", stderr(&out));
    }
    assert_eq!(fs::read(b.path().join("d/f")).unwrap(), b"x");

    let unreachable = format!("127.0.0.1:{}", free_ports(1)[0]);
    let out = sync_with(a.path(), &unreachable, 1024, &["--quiet"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(
        stderr(&out).contains("cannot reach the MetaStore"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn messages_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_str().unwrap();

    let out = client(&["http://127.0.0.1:8080/", base, "1024"]);
    assert_eq!(out.status.code(), Some(64));
    assert_eq!(
        stderr(&out),
        "surfstore-client: META_ADDR \"http://127.0.0.1:8080/\" is a URL; \
         use host:port, e.g. 127.0.0.1:8080\n"
    );

    let dead = format!("127.0.0.1:{}", free_ports(1)[0]);
    let out = client(&["--retry-for", "0", &dead, base, "1024"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!(
            ": Connection refused (os error 111); is surfstore-server running on {dead}? (gave up"
        )),
        "{}",
        stderr(&out)
    );

    // A cluster that is up but has no leader (no elections, no SetLeader).
    let rt = common::runtime();
    let cluster = rt.block_on(common::start_cluster(3, &[]));
    let out = client(&["-f", cluster.config.to_str().unwrap(), base, "1024"]);
    assert_eq!(out.status.code(), Some(1));
    let message = stderr(&out);
    assert!(
        message.starts_with("surfstore-client: no leader with a quorum answered within ")
            && message.ends_with(
                ": Server is not the leader; \
                 if no server is the leader yet, name one: surfstore-ctl set-leader ADDR\n"
            ),
        "{message}"
    );
}

#[test]
fn another_block_size_than_the_last_sync_is_refused_unless_rehash() {
    let server = start_server("both", &[]);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    fs::write(a.path().join("big.bin"), vec![7u8; 5000]).unwrap();
    fs::write(a.path().join("small.txt"), "s").unwrap();
    assert!(sync(a.path(), &server.addr, 1024).status.success());
    let before = snapshot(a.path());

    let out = sync(a.path(), &server.addr, 4096);
    assert_eq!(out.status.code(), Some(64));
    assert_eq!(
        stderr(&out),
        "surfstore-client: index.txt was written with another block size than 4096 \
         (\"big.bin\" was 5 blocks, is 2 now): this sync would upload every file again and may \
         report false conflicts; give the block size of the last sync, or pass --rehash to \
         hash and upload everything with 4096\n"
    );
    assert_eq!(snapshot(a.path()), before, "nothing changed");

    let out = sync_with(a.path(), &server.addr, 4096, &["--rehash"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // From then on 4096 is the block size: no refusal, nothing to do, and
    // another client at 4096 gets the files without conflicts.
    let out = sync(a.path(), &server.addr, 4096);
    assert_eq!(
        common::counts(&String::from_utf8_lossy(&out.stdout)),
        [0; 4]
    );
    let out = sync(b.path(), &server.addr, 4096);
    assert_eq!(
        common::counts(&String::from_utf8_lossy(&out.stdout)),
        [0, 2, 0, 0]
    );
}

#[test]
fn help_names_the_arguments_exit_codes_and_rust_log_and_version_the_commit() {
    for program in [
        "surfstore-client",
        "surfstore-server",
        "surfstore-raft-server",
        "surfstore-ctl",
    ] {
        let help = run(&bin(program), &["--help"]);
        assert_eq!(help.status.code(), Some(0));
        let help = String::from_utf8_lossy(&help.stdout);
        for needle in ["Exit codes: 0 ", "64 bad arguments", "RUST_LOG", "NO_COLOR"] {
            assert!(help.contains(needle), "{program}: {needle} in {help}");
        }
        let version = run(&bin(program), &["--version"]);
        let version = String::from_utf8_lossy(&version.stdout);
        let expected = format!("{program} {} (commit ", env!("CARGO_PKG_VERSION"));
        assert!(
            version.starts_with(&expected) && version.ends_with(")\n"),
            "{version}"
        );
    }
    let help = String::from_utf8_lossy(&client(&["--help"]).stdout).into_owned();
    assert!(
        help.contains("surfstore-client [OPTIONS] META_ADDR BASEDIR BLOCKSIZE")
            && help.contains("<META_ADDR> [BASEDIR] [BLOCKSIZE]")
            && !help.contains("<ARGS>")
            && help.contains("130 interrupted"),
        "{help}"
    );
}

#[test]
fn settings_come_from_the_environment_too() {
    let server = start_server("both", &[]);
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), "x").unwrap();
    let base = dir.path().to_str().unwrap();
    let with_env = |vars: &[(&str, &str)], args: &[&str]| {
        common::command(&bin("surfstore-client"))
            .envs(vars.iter().copied())
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    // SURFSTORE_ADDR and SURFSTORE_BLOCK_SIZE stand in for both arguments.
    let vars = [
        ("SURFSTORE_ADDR", server.addr.as_str()),
        ("SURFSTORE_BLOCK_SIZE", "1024"),
    ];
    let out = with_env(&vars, &[base]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        common::counts(&String::from_utf8_lossy(&out.stdout)),
        [1, 0, 0, 0]
    );
    // Given arguments win: BASEDIR BLOCKSIZE with the address from the
    // environment, and a BLOCKSIZE that is not a number is refused.
    let out = with_env(&vars[..1], &[base, "oops"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("got \"oops\""), "{}", stderr(&out));
    // SURFSTORE_CONFIG is -f.
    let config = dir.path().join("missing.json");
    let out = with_env(
        &[("SURFSTORE_CONFIG", config.to_str().unwrap())],
        &[base, "1024"],
    );
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("missing.json"), "{}", stderr(&out));
}
