//! Security (SPEC §9.3) from the outside, over real TLS between real
//! processes on free ports: which token may call which RPC of every
//! service, what a client sees when certificates or tokens are wrong, a
//! secure Raft cluster at work, and tokens kept out of every output.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{
    Proc, bin, ctl, loopback_listener, run_with_timeout, snapshot, wait_listening, write,
};
use futures::FutureExt;
use futures::future::BoxFuture;
use surfstore::grpc::{AuthChannel, secure_channel};
use surfstore::proto::block_store_client::BlockStoreClient;
use surfstore::proto::map_watch_client::MapWatchClient;
use surfstore::proto::meta_store_client::MetaStoreClient;
use surfstore::proto::raft_surfstore_client::RaftSurfstoreClient;
use surfstore::proto::{
    AppendEntryInput, Block, BlockHash, BlockHashes, Blocks, DeleteBlocksInput, FileMetaData,
    InstallSnapshotInput, ListBlocksInput, RequestVoteInput,
};
use surfstore::security::ClientSecurity;
use surfstore::security::tls::client_tls;
use surfstore::security::tokens::{Bearer, Role};
use tonic::{Code, Status};

/// Generous bound on one client or ctl run.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Bound on one RPC of the matrix.
const CALL_LIMIT: Duration = Duration::from_secs(10);

/// Certificates from `surfstore-ctl gen-certs` and one token per role from
/// `surfstore-ctl add-token`, in a temporary directory.
struct Material {
    dir: tempfile::TempDir,
    user: String,
    peer: String,
    admin: String,
}

fn utf8(path: &Path) -> &str {
    path.to_str().unwrap()
}

impl Material {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        let (code, _, err) = ctl(&["gen-certs", utf8(&certs), "--hosts", "localhost,127.0.0.1"]);
        assert_eq!(code, Some(0), "{err}");
        let tokens = dir.path().join("tokens");
        let add = |role: &str| {
            let (code, out, err) = ctl(&["add-token", role, &format!("{role}-1"), utf8(&tokens)]);
            assert_eq!(code, Some(0), "{err}");
            let token = out.lines().last().unwrap().to_string();
            std::fs::write(dir.path().join(format!("{role}.tok")), format!("{token}\n")).unwrap();
            token
        };
        let (user, peer, admin) = (add("user"), add("peer"), add("admin"));
        Self {
            dir,
            user,
            peer,
            admin,
        }
    }

    fn path(&self, name: &str) -> String {
        utf8(&self.dir.path().join(name)).to_string()
    }

    /// Every token, to grep outputs for.
    fn secrets(&self) -> [&str; 3] {
        [&self.user, &self.peer, &self.admin]
    }

    /// The flags of a server with TLS, mutual TLS and tokens.
    fn server_flags(&self) -> Vec<String> {
        [
            ("--tls-cert", "certs/server.pem"),
            ("--tls-key", "certs/server.key"),
            ("--tls-client-ca", "certs/ca.pem"),
            ("--auth-tokens", "tokens"),
        ]
        .into_iter()
        .flat_map(|(flag, file)| [flag.to_string(), self.path(file)])
        .collect()
    }

    /// The client and ctl flags: trust the CA, present the certificate,
    /// send the token of `role` (none for `None`).
    fn client_flags(&self, role: Option<&str>) -> Vec<String> {
        let mut flags: Vec<String> = [
            ("--ca", "certs/ca.pem"),
            ("--tls-cert", "certs/server.pem"),
            ("--tls-key", "certs/server.key"),
        ]
        .into_iter()
        .flat_map(|(flag, file)| [flag.to_string(), self.path(file)])
        .collect();
        if let Some(role) = role {
            flags.extend([
                "--token-file".to_string(),
                self.path(&format!("{role}.tok")),
            ]);
        }
        flags
    }

    /// A channel's security: TLS with the certificate, and `token`.
    fn security(&self, token: Option<&str>) -> ClientSecurity {
        let tls = client_tls(
            Some(Path::new(&self.path("certs/ca.pem"))),
            Some((
                Path::new(&self.path("certs/server.pem")),
                Path::new(&self.path("certs/server.key")),
            )),
        )
        .unwrap();
        ClientSecurity {
            tls: Some(tls),
            bearer: token.map(|t| Bearer::new(t, "test").unwrap()),
        }
    }
}

/// Starts `program` with `args` on a socket bound for it (`PORT` in `args`
/// is replaced by its port), its output appended to `log`; polls until it
/// serves.
fn start(program: &str, args: &[String], log: &Path) -> (String, Proc) {
    start_on(loopback_listener(), program, args, log)
}

/// [`start`] on `listener`.
fn start_on(
    listener: std::net::TcpListener,
    program: &str,
    args: &[String],
    log: &Path,
) -> (String, Proc) {
    let port = listener.local_addr().unwrap().port().to_string();
    let args: Vec<&str> = args
        .iter()
        .map(|a| if a == "PORT" { port.as_str() } else { a })
        .collect();
    let mut proc = Proc::spawn_logged_on(listener, &bin(program), &args, log);
    assert!(
        wait_listening(&mut proc, &format!("127.0.0.1:{port}")),
        "{program} exited"
    );
    (format!("localhost:{port}"), proc)
}

/// A `surfstore-server -s both` with `flags`.
fn start_plain(flags: &[String], log: &Path) -> (String, Proc) {
    let mut args: Vec<String> = ["-s", "both", "-p", "PORT", "-l"]
        .map(String::from)
        .to_vec();
    args.extend_from_slice(flags);
    start("surfstore-server", &args, log)
}

/// A BlockStore and `n` Raft servers, all with `material`'s TLS and
/// tokens, the Raft servers sending the peer token to each other; every
/// output goes to `log`.
struct SecureCluster {
    config: PathBuf,
    addrs: Vec<String>,
    _procs: Vec<Proc>,
}

fn start_secure_cluster(material: &Material, n: usize, log: &Path) -> SecureCluster {
    start_secure_cluster_with(material, n, log, &["--heartbeat-ms", "0"])
}

/// [`start_secure_cluster`] with `extra` flags on every Raft server.
fn start_secure_cluster_with(
    material: &Material,
    n: usize,
    log: &Path,
    extra: &[&str],
) -> SecureCluster {
    let (block, block_proc) = start_plain_block(material, log);
    let listeners: Vec<_> = (0..n).map(|_| loopback_listener()).collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    let addrs: Vec<String> = ports.iter().map(|p| format!("localhost:{p}")).collect();
    let config = material
        .dir
        .path()
        .join(format!("cluster-{}.json", ports[0]));
    let json = serde_json::json!({"MetaStoreAddrs": addrs, "BlockStoreAddrs": [block]});
    std::fs::write(&config, json.to_string()).unwrap();
    let mut procs = vec![block_proc];
    for (id, (listener, port)) in listeners.into_iter().zip(&ports).enumerate() {
        let id = id.to_string();
        let mut args = vec!["-d", "-f", utf8(&config), "-i", &id];
        args.extend_from_slice(extra);
        let flags = material.server_flags();
        let peer_token = material.path("peer.tok");
        args.extend(flags.iter().map(String::as_str));
        args.extend(["--peer-token-file", &peer_token]);
        let mut proc = Proc::spawn_logged_on(listener, &bin("surfstore-raft-server"), &args, log);
        assert!(
            wait_listening(&mut proc, &format!("127.0.0.1:{port}")),
            "raft server {id} exited"
        );
        procs.push(proc);
    }
    SecureCluster {
        config,
        addrs,
        _procs: procs,
    }
}

fn start_plain_block(material: &Material, log: &Path) -> (String, Proc) {
    let mut args: Vec<String> = ["-d", "-s", "block", "-p", "PORT", "-l"]
        .map(String::from)
        .to_vec();
    args.extend(material.server_flags());
    start("surfstore-server", &args, log)
}

/// Runs `surfstore-client flags... SOURCE DIR 4096`, where SOURCE is an
/// address or `-f CONFIG`.
fn sync(flags: &[String], source: &[&str], dir: &Path) -> (Option<i32>, String, String) {
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.extend_from_slice(source);
    args.extend([utf8(dir), "4096"]);
    let (out, _) = run_with_timeout(&bin("surfstore-client"), &args, RUN_LIMIT);
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

type Call = fn(AuthChannel) -> BoxFuture<'static, Result<(), Status>>;

/// One RPC of the matrix: its gRPC path, the role SPEC §9.3 gives it, and
/// a call of it with harmless arguments.
struct Rpc {
    path: &'static str,
    needs: Role,
    call: Call,
}

fn unit<T>(result: Result<tonic::Response<T>, Status>) -> Result<(), Status> {
    result.map(drop)
}

const MISSING_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn block(data: &[u8]) -> Block {
    Block {
        block_data: data.to_vec().into(),
        block_size: data.len() as i32,
    }
}

fn update(name: &str) -> FileMetaData {
    FileMetaData {
        filename: name.into(),
        version: 1,
        block_hash_list: Vec::new(),
    }
}

/// Every RPC of BlockStore and MetaStore (as a plain server serves them).
fn plain_rpcs() -> Vec<Rpc> {
    fn blocks(c: AuthChannel) -> BlockStoreClient<AuthChannel> {
        BlockStoreClient::new(c)
    }
    fn meta(c: AuthChannel) -> MetaStoreClient<AuthChannel> {
        MetaStoreClient::new(c)
    }
    vec![
        Rpc {
            path: "/surfstore.BlockStore/GetBlock",
            needs: Role::User,
            call: |c| {
                async move {
                    let hash = BlockHash {
                        hash: MISSING_HASH.into(),
                    };
                    unit(blocks(c).get_block(hash).await)
                }
                .boxed()
            },
        },
        Rpc {
            path: "/surfstore.BlockStore/PutBlock",
            needs: Role::User,
            call: |c| async move { unit(blocks(c).put_block(block(b"m")).await) }.boxed(),
        },
        Rpc {
            path: "/surfstore.BlockStore/HasBlocks",
            needs: Role::User,
            call: |c| {
                async move {
                    let hashes = BlockHashes {
                        hashes: vec![MISSING_HASH.into()],
                    };
                    unit(blocks(c).has_blocks(hashes).await)
                }
                .boxed()
            },
        },
        Rpc {
            path: "/surfstore.BlockStore/PutBlocks",
            needs: Role::User,
            call: |c| {
                async move {
                    let batch = Blocks {
                        blocks: vec![block(b"n")],
                    };
                    unit(blocks(c).put_blocks(batch).await)
                }
                .boxed()
            },
        },
        Rpc {
            path: "/surfstore.BlockStore/GetBlocks",
            needs: Role::User,
            call: |c| {
                async move {
                    let hashes = BlockHashes { hashes: Vec::new() };
                    unit(blocks(c).get_blocks(hashes).await)
                }
                .boxed()
            },
        },
        Rpc {
            path: "/surfstore.BlockStore/ListBlocks",
            needs: Role::Admin,
            call: |c| {
                async move { unit(blocks(c).list_blocks(ListBlocksInput::default()).await) }.boxed()
            },
        },
        Rpc {
            path: "/surfstore.BlockStore/DeleteBlocks",
            needs: Role::Admin,
            call: |c| {
                async move { unit(blocks(c).delete_blocks(DeleteBlocksInput::default()).await) }
                    .boxed()
            },
        },
        Rpc {
            path: "/surfstore.MapWatch/WatchFileInfoMap",
            needs: Role::User,
            call: |c| {
                async move { unit(MapWatchClient::new(c).watch_file_info_map(()).await) }.boxed()
            },
        },
        Rpc {
            path: "/surfstore.MetaStore/GetFileInfoMap",
            needs: Role::User,
            call: |c| async move { unit(meta(c).get_file_info_map(()).await) }.boxed(),
        },
        Rpc {
            path: "/surfstore.MetaStore/UpdateFile",
            needs: Role::User,
            call: |c| async move { unit(meta(c).update_file(update("m")).await) }.boxed(),
        },
        Rpc {
            path: "/surfstore.MetaStore/GetBlockStoreAddr",
            needs: Role::User,
            call: |c| async move { unit(meta(c).get_block_store_addr(()).await) }.boxed(),
        },
    ]
}

/// Every RPC of RaftSurfstore, Crash just before Restore so the server
/// comes back for what follows.
/// A vote request from a candidate with an empty log.
fn vote_request() -> RequestVoteInput {
    RequestVoteInput {
        last_log_index: -1,
        last_log_term: -1,
        ..RequestVoteInput::default()
    }
}

fn raft_rpcs() -> Vec<Rpc> {
    fn raft(c: AuthChannel) -> RaftSurfstoreClient<AuthChannel> {
        RaftSurfstoreClient::new(c)
    }
    macro_rules! empty {
        ($path:literal, $needs:expr, $method:ident) => {
            Rpc {
                path: concat!("/surfstore.RaftSurfstore/", $path),
                needs: $needs,
                call: |c| async move { unit(raft(c).$method(()).await) }.boxed(),
            }
        };
    }
    vec![
        Rpc {
            path: "/surfstore.RaftSurfstore/AppendEntries",
            needs: Role::Peer,
            call: |c| {
                async move {
                    let input = AppendEntryInput {
                        prev_log_index: -1,
                        ..AppendEntryInput::default()
                    };
                    unit(raft(c).append_entries(input).await)
                }
                .boxed()
            },
        },
        Rpc {
            path: "/surfstore.RaftSurfstore/InstallSnapshot",
            needs: Role::Peer,
            call: |c| {
                async move {
                    unit(
                        raft(c)
                            .install_snapshot(InstallSnapshotInput::default())
                            .await,
                    )
                }
                .boxed()
            },
        },
        Rpc {
            path: "/surfstore.RaftSurfstore/RequestVote",
            needs: Role::Peer,
            call: |c| async move { unit(raft(c).request_vote(vote_request()).await) }.boxed(),
        },
        Rpc {
            path: "/surfstore.RaftSurfstore/PreVote",
            needs: Role::Peer,
            call: |c| async move { unit(raft(c).pre_vote(vote_request()).await) }.boxed(),
        },
        empty!("SetLeader", Role::Admin, set_leader),
        empty!("SendHeartbeat", Role::Admin, send_heartbeat),
        empty!("GetFileInfoMap", Role::User, get_file_info_map),
        Rpc {
            path: "/surfstore.RaftSurfstore/UpdateFile",
            needs: Role::User,
            call: |c| async move { unit(raft(c).update_file(update("r")).await) }.boxed(),
        },
        empty!("GetBlockStoreAddr", Role::User, get_block_store_addr),
        empty!("GetInternalState", Role::Admin, get_internal_state),
        empty!("IsCrashed", Role::Admin, is_crashed),
        empty!("Crash", Role::Admin, crash),
        empty!("Restore", Role::Admin, restore),
    ]
}

/// Every `/surfstore.Service/Method` the proto declares.
fn proto_methods() -> BTreeSet<String> {
    let proto = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("proto/surfstore.proto"),
    )
    .unwrap();
    let mut service = "";
    let mut methods = BTreeSet::new();
    for line in proto.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("service ") {
            service = rest.split_whitespace().next().unwrap();
        } else if let Some(rest) = line.strip_prefix("rpc ") {
            let name = rest.split(|c: char| c == '(' || c.is_whitespace()).next();
            methods.insert(format!("/surfstore.{service}/{}", name.unwrap()));
        }
    }
    methods
}

/// The status a call with `token` must get, given the role it needs:
/// `None` when it must get through (any answer but a refusal).
fn expected(token: &Token, needs: Role) -> Option<Code> {
    match token {
        Token::None | Token::Bad => Some(Code::Unauthenticated),
        Token::Role(role) if *role == Role::Admin || *role == needs => None,
        Token::Role(_) => Some(Code::PermissionDenied),
    }
}

#[derive(Debug)]
enum Token {
    None,
    Bad,
    Role(Role),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_of_every_service_answers_each_token_as_the_spec_says() {
    let material = Material::new();
    let log = material.dir.path().join("servers.log");
    let flags = material.server_flags();
    let (plain, _plain_proc) = start_plain(&flags, &log);
    let single = material.dir.path().join("single.json");
    let listener = loopback_listener();
    let port = listener.local_addr().unwrap().port();
    let raft_addr = format!("localhost:{port}");
    let json = serde_json::json!({"MetaStoreAddrs": [raft_addr], "BlockStoreAddrs": [plain]});
    std::fs::write(&single, json.to_string()).unwrap();
    let mut args = vec!["-f", utf8(&single), "-i", "0"];
    args.extend(flags.iter().map(String::as_str));
    let mut raft_proc = Proc::spawn_logged_on(listener, &bin("surfstore-raft-server"), &args, &log);
    assert!(wait_listening(&mut raft_proc, &format!("127.0.0.1:{port}")));

    let plain_rpcs = plain_rpcs();
    let meta_rpcs = plain_rpcs.iter().filter(|r| r.path.contains("MetaStore"));
    let raft_rpcs = raft_rpcs();
    let declared: BTreeSet<String> = plain_rpcs
        .iter()
        .chain(&raft_rpcs)
        .map(|r| r.path.to_string())
        .collect();
    assert_eq!(declared, proto_methods(), "the matrix covers every RPC");

    // The MetaStore service runs on both kinds of server.
    let targets = plain_rpcs
        .iter()
        .map(|r| (&plain, r))
        .chain(meta_rpcs.map(|r| (&raft_addr, r)))
        .chain(raft_rpcs.iter().map(|r| (&raft_addr, r)));
    let tokens = [
        (Token::None, None),
        (Token::Bad, Some("sst_not-a-token-the-server-knows")),
        (Token::Role(Role::User), Some(material.user.as_str())),
        (Token::Role(Role::Peer), Some(material.peer.as_str())),
        (Token::Role(Role::Admin), Some(material.admin.as_str())),
    ];
    let admin = secure_channel(&raft_addr, &material.security(Some(&material.admin))).unwrap();
    tokio::time::timeout(CALL_LIMIT, RaftSurfstoreClient::new(admin).set_leader(()))
        .await
        .unwrap()
        .unwrap();
    let mut failures = Vec::new();
    for (addr, rpc) in targets {
        for (token, secret) in &tokens {
            let channel = secure_channel(addr, &material.security(*secret)).unwrap();
            let result = tokio::time::timeout(CALL_LIMIT, (rpc.call)(channel))
                .await
                .unwrap_or_else(|_| panic!("{} on {addr} hung", rpc.path));
            let got = result.err().map(|s| s.code());
            let want = expected(token, rpc.needs);
            let ok = match want {
                Some(code) => got == Some(code),
                None => !matches!(got, Some(Code::Unauthenticated | Code::PermissionDenied)),
            };
            if !ok {
                failures.push(format!(
                    "{} on {addr} with {token:?}: got {got:?}, want {}",
                    rpc.path,
                    want.map_or("it through".to_string(), |c| format!("{c:?}"))
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_never_tells_whether_a_block_exists() {
    let material = Material::new();
    let log = material.dir.path().join("servers.log");
    let (addr, _proc) = start_plain(&material.server_flags(), &log);
    let user = secure_channel(&addr, &material.security(Some(&material.user))).unwrap();
    let data = b"present";
    BlockStoreClient::new(user)
        .put_block(block(data))
        .await
        .unwrap();
    let present = surfstore::hash::hash_block(data);
    for token in [None, Some("sst_bad"), Some(material.peer.as_str())] {
        let mut answers = Vec::new();
        for hash in [present.clone(), MISSING_HASH.to_string()] {
            let channel = secure_channel(&addr, &material.security(token)).unwrap();
            let status = BlockStoreClient::new(channel)
                .get_block(BlockHash { hash })
                .await
                .unwrap_err();
            answers.push((status.code(), status.message().to_string()));
        }
        assert_eq!(answers[0], answers[1], "with {token:?}");
    }
}

#[test]
fn wrong_transport_or_certificate_fails_in_one_line_that_says_why_and_changes_nothing() {
    let material = Material::new();
    let log = material.dir.path().join("servers.log");
    let (tls_addr, _tls) = start_plain(&material.server_flags(), &log);
    let (plain_addr, _plain) = start_plain(&[], &log);
    let other = material.dir.path().join("other");
    let (code, _, err) = ctl(&["gen-certs", utf8(&other), "--hosts", "localhost"]);
    assert_eq!(code, Some(0), "{err}");
    let other_file = |name: &str| utf8(&other.join(name)).to_string();

    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.txt", "local");
    let before = snapshot(dir.path());
    let token = ["--token-file".to_string(), material.path("user.tok")];
    let with_client_cert = |ca: &str, cert: &str, key: &str| {
        let mut flags = vec!["--ca".to_string(), ca.to_string()];
        flags.extend(["--tls-cert".to_string(), cert.to_string()]);
        flags.extend(["--tls-key".to_string(), key.to_string()]);
        flags.extend(token.clone());
        flags
    };
    let ca = material.path("certs/ca.pem");
    let bad_token = material.path("bad.tok");
    std::fs::write(&bad_token, "sst_0123456789abcdef\n").unwrap();
    let cases: Vec<(&str, Vec<String>, &str, &str)> = vec![
        (
            "plaintext to a TLS port",
            token.to_vec(),
            &tls_addr,
            "speaks TLS",
        ),
        (
            "TLS to a plaintext port",
            vec!["--ca".to_string(), ca.clone()],
            &plain_addr,
            "plaintext port",
        ),
        (
            "a server certificate from another CA",
            with_client_cert(
                &other_file("ca.pem"),
                &material.path("certs/server.pem"),
                &material.path("certs/server.key"),
            ),
            &tls_addr,
            "not trusted",
        ),
        (
            "a bad token",
            [
                material.client_flags(None),
                vec!["--token-file".into(), bad_token],
            ]
            .concat(),
            &tls_addr,
            "refused the token",
        ),
    ];
    for (what, flags, addr, says) in cases {
        let (code, _, err) = sync(&flags, &[addr], dir.path());
        assert_eq!(code, Some(1), "{what}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{what}: one line: {err}");
        assert!(err.contains(says), "{what}: {err:?} should say {says:?}");
        assert_eq!(snapshot(dir.path()), before, "{what}: nothing changed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_a_client_certificate_from_another_ca_or_none() {
    let material = Material::new();
    let log = material.dir.path().join("servers.log");
    let (addr, _proc) = start_plain(&material.server_flags(), &log);
    let other = material.dir.path().join("other");
    let (code, _, err) = ctl(&["gen-certs", utf8(&other), "--hosts", "localhost"]);
    assert_eq!(code, Some(0), "{err}");
    let ca = material.path("certs/ca.pem");
    let ca = Path::new(&ca);
    let bearer = Some(Bearer::new(&material.user, "test").unwrap());
    let strangers = [
        Some((other.join("server.pem"), other.join("server.key"))),
        None,
    ];
    for identity in &strangers {
        let identity = identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
        let security = ClientSecurity {
            tls: Some(client_tls(Some(ca), identity).unwrap()),
            bearer: bearer.clone(),
        };
        let channel = secure_channel(&addr, &security).unwrap();
        let mut client = BlockStoreClient::new(channel);
        let put = client.put_block(block(b"stranger"));
        let refused = tokio::time::timeout(CALL_LIMIT, put).await.unwrap();
        assert!(refused.is_err(), "{identity:?} got in");
    }
    let member = secure_channel(&addr, &material.security(Some(&material.user))).unwrap();
    let hash = surfstore::hash::hash_block(b"stranger");
    let has = BlockStoreClient::new(member)
        .has_blocks(BlockHashes { hashes: vec![hash] })
        .await
        .unwrap()
        .into_inner();
    assert!(has.hashes.is_empty(), "no stranger's block was stored");
}

#[test]
fn a_client_without_a_token_fails_cleanly_and_touches_nothing() {
    let material = Material::new();
    let log = material.dir.path().join("servers.log");
    let (addr, _proc) = start_plain(&material.server_flags(), &log);
    let synced = tempfile::tempdir().unwrap();
    write(synced.path(), "kept.txt", "first version");
    let (code, _, err) = sync(
        &material.client_flags(Some("user")),
        &[&addr],
        synced.path(),
    );
    assert_eq!(code, Some(0), "{err}");
    write(synced.path(), "kept.txt", "edited since");
    write(synced.path(), "new.txt", "never uploaded");
    let before = snapshot(synced.path());
    let (code, out, err) = sync(&material.client_flags(None), &[&addr], synced.path());
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("refused the token"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(snapshot(synced.path()), before);
}

#[test]
fn a_secure_cluster_replicates_serves_a_sync_and_refuses_a_users_crash() {
    let material = Material::new();
    let log = material.dir.path().join("servers.log");
    let cluster = start_secure_cluster(&material, 3, &log);
    let admin = material.client_flags(Some("admin"));
    let ctl_as = |flags: &[String], args: &[&str]| {
        let mut all: Vec<&str> = flags.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        ctl(&all)
    };
    let (code, _, err) = ctl_as(&admin, &["set-leader", &cluster.addrs[0]]);
    assert_eq!(code, Some(0), "{err}");

    let alice = tempfile::tempdir().unwrap();
    write(alice.path(), "notes.txt", "replicated over TLS");
    write(alice.path(), "big.bin", common::pseudo_random(100_000, 7));
    let config = ["-f", utf8(&cluster.config)];
    let user = material.client_flags(Some("user"));
    let (code, _, err) = sync(&user, &config, alice.path());
    assert_eq!(code, Some(0), "{err}");
    let bob = tempfile::tempdir().unwrap();
    let (code, _, err) = sync(&user, &config, bob.path());
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        common::synced_files(bob.path()),
        common::synced_files(alice.path())
    );

    // The followers took the entries over mutual TLS with the peer token.
    let (code, _, err) = ctl_as(&admin, &["heartbeat", &cluster.addrs[0]]);
    assert_eq!(code, Some(0), "{err}");
    let (code, status, err) = ctl_as(&admin, &["status", "-f", utf8(&cluster.config)]);
    assert_eq!(code, Some(0), "{err}");
    let logs: Vec<&str> = status
        .lines()
        .skip(1)
        .map(|row| row.split_whitespace().nth(5).unwrap())
        .collect();
    assert_eq!(logs, ["2", "2", "2"], "{status}");

    let (code, _, err) = ctl_as(&user, &["crash", &cluster.addrs[0]]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("permission denied"), "{err}");
    let (_, state, _) = ctl_as(&admin, &["status", "-f", utf8(&cluster.config)]);
    assert!(!state.contains("crashed"), "{state}");
}

#[test]
fn a_secure_cluster_with_elections_fails_over_by_itself() {
    let material = Material::new();
    let log = material.dir.path().join("servers.log");
    let cluster = start_secure_cluster_with(&material, 3, &log, &["--election-timeout-ms", "300"]);
    let admin = material.client_flags(Some("admin"));
    let status = || {
        let mut all: Vec<&str> = admin.iter().map(String::as_str).collect();
        all.extend_from_slice(&["status", "-f", utf8(&cluster.config)]);
        ctl(&all).1
    };
    // The leader's row, once one leads: votes travel over mutual TLS with
    // the peer token.
    let leader = || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let table = status();
            let leading: Vec<usize> = table
                .lines()
                .skip(1)
                .filter(|row| row.split_whitespace().nth(3) == Some("yes"))
                .filter_map(|row| row.split_whitespace().next()?.parse().ok())
                .collect();
            if let [one] = leading[..] {
                return one;
            }
            assert!(std::time::Instant::now() < deadline, "no leader: {table}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    let first = leader();
    let config = ["-f", utf8(&cluster.config)];
    let user = material.client_flags(Some("user"));
    let alice = tempfile::tempdir().unwrap();
    write(alice.path(), "notes.txt", "before");
    let (code, _, err) = sync(&user, &config, alice.path());
    assert_eq!(code, Some(0), "{err}");

    let mut crash: Vec<&str> = admin.iter().map(String::as_str).collect();
    crash.extend_from_slice(&["crash", &cluster.addrs[first]]);
    assert_eq!(ctl(&crash).0, Some(0));
    write(alice.path(), "notes.txt", "after the leader crashed");
    let (code, _, err) = sync(&user, &config, alice.path());
    assert_eq!(code, Some(0), "{err}");
    let bob = tempfile::tempdir().unwrap();
    let (code, _, err) = sync(&user, &config, bob.path());
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        common::synced_files(bob.path()),
        common::synced_files(alice.path())
    );
    assert_ne!(leader(), first);
}

#[test]
fn tokens_appear_in_no_log_error_or_command_line() {
    let material = Material::new();
    let log = material.dir.path().join("servers.log");
    let cluster = start_secure_cluster(&material, 2, &log);
    let mut outputs = Vec::new();
    let admin = material.client_flags(Some("admin"));
    let mut set_leader: Vec<&str> = vec!["-d"];
    set_leader.extend(admin.iter().map(String::as_str));
    set_leader.extend(["set-leader", &cluster.addrs[0]]);
    let (code, out, err) = ctl(&set_leader);
    assert_eq!(code, Some(0), "{err}");
    outputs.extend([out, err]);

    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "f.txt", "data");
    let config = ["-f", utf8(&cluster.config)];
    for role in ["user", "peer"] {
        let mut flags = vec!["-d".to_string()];
        flags.extend(material.client_flags(Some(role)));
        let (_, out, err) = sync(&flags, &config, dir.path());
        outputs.extend([out, err]);
    }
    let processes: Vec<String> = cluster
        ._procs
        .iter()
        .filter_map(Proc::id)
        .map(|pid| std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default())
        .collect();
    outputs.extend(processes);
    outputs.push(std::fs::read_to_string(&log).unwrap());
    assert!(
        outputs[outputs.len() - 1].contains("DEBUG"),
        "the servers ran with -d"
    );
    for secret in material.secrets() {
        for output in &outputs {
            assert!(!output.contains(secret), "a token leaked into: {output}");
        }
    }
}

#[test]
fn a_server_beyond_loopback_without_tls_and_tokens_warns_once() {
    let material = Material::new();
    let log = |name: &str| material.dir.path().join(name);
    let exposed = ["-s", "both", "-p", "PORT"].map(String::from).to_vec();
    let everywhere = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let (_, mut open) = start_on(everywhere, "surfstore-server", &exposed, &log("open.log"));
    let mut secured = exposed.clone();
    secured.extend(material.server_flags());
    let (_, mut closed) = start("surfstore-server", &secured, &log("secure.log"));
    let (_, mut local) = start_plain(&[], &log("local.log"));
    for proc in [&mut open, &mut closed, &mut local] {
        proc.kill();
    }
    let text = |name: &str| std::fs::read_to_string(log(name)).unwrap();
    let warnings = text("open.log");
    assert_eq!(warnings.matches("beyond loopback").count(), 1, "{warnings}");
    let warning_lines = warnings.lines().filter(|l| l.contains("WARN"));
    assert_eq!(warning_lines.count(), 1, "{warnings}");
    assert!(!text("secure.log").contains("beyond loopback"));
    assert!(!text("local.log").contains("beyond loopback"));
}

#[test]
fn unusable_security_flags_are_usage_errors_that_name_the_file() {
    let material = Material::new();
    let missing = material.path("missing.pem");
    let key = material.path("certs/server.key");
    let tokens = material.path("certs/ca.pem");
    let cases: [(&str, Vec<&str>, &str); 4] = [
        (
            "surfstore-server",
            vec![
                "-s",
                "both",
                "-l",
                "-p",
                "1",
                "--tls-cert",
                &missing,
                "--tls-key",
                &key,
            ],
            "missing.pem",
        ),
        (
            "surfstore-server",
            vec!["-s", "both", "-l", "-p", "1", "--auth-tokens", &tokens],
            "ca.pem:1",
        ),
        (
            "surfstore-server",
            vec!["-s", "both", "-l", "-p", "1", "--tls-cert", &key],
            "--tls-key",
        ),
        (
            "surfstore-client",
            vec!["--ca", &missing, "localhost:1", "/nonexistent", "4096"],
            "missing.pem",
        ),
    ];
    for (program, args, names) in cases {
        let (out, _) = run_with_timeout(&bin(program), &args, RUN_LIMIT);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{program} {args:?}: {stderr}");
        assert!(stderr.contains(names), "{program} {args:?}: {stderr}");
    }
}
