//! T1: what TLS and tokens cost (SPEC §9.3). The same two measurements
//! twice in one run, once in plaintext and once with every link on TLS 1.3
//! with mutual TLS between the Raft servers and a token on every call:
//!
//! * `UpdateFile` commits per second from 64 callers on a 3-server Raft
//!   cluster's leader, in memory (as in B6);
//! * a cold upload by `surfstore-client` of a generated directory at 4 MiB
//!   blocks, to a fresh BlockStore and 3-server Raft cluster (as in B1).
//!
//! Each runs [`ROUNDS`] times per mode, the modes taking turns; the best of
//! each is reported.

use std::path::{Path, PathBuf};

use surfstore::security::tls::{client_tls, generate};
use surfstore::security::tokens::{Bearer, Role, append_token, fresh_token};
use surfstore::security::{ClientSecurity, SecurityError};

use crate::load::commit_load;
use crate::procs::{self, path_arg, run_client};
use crate::sync::{LARGE_BLOCK, human_bytes};
use crate::{BenchResult, Scale, data};

/// Callers of the commit measurement.
const CALLERS: usize = 64;

/// How many times each measurement runs, in each mode; the best counts.
const ROUNDS: usize = 3;

/// One measurement, plaintext and secured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TlsRow {
    /// What was measured.
    pub what: String,
    /// Its unit, e.g. `commits/s`.
    pub unit: String,
    /// In plaintext.
    pub plain: f64,
    /// With TLS and tokens.
    pub secure: f64,
}

impl TlsRow {
    /// How much slower the secured run was, in percent of the plaintext
    /// one (negative when it was faster).
    pub fn cost_percent(&self) -> f64 {
        (1.0 - self.secure / self.plain) * 100.0
    }
}

/// Certificates from `gen-certs` and a token per role, in `dir`.
struct Material {
    dir: PathBuf,
    user_token: String,
    admin_token: String,
}

impl Material {
    fn new(dir: &Path) -> BenchResult<Self> {
        generate(dir, &["localhost".into(), "127.0.0.1".into()])?;
        let tokens = dir.join("tokens");
        let mut drawn = Vec::new();
        for role in [Role::User, Role::Peer, Role::Admin] {
            let token = fresh_token()?;
            append_token(&tokens, role, role.name(), &token)?;
            let file = dir.join(format!("{role}.tok"));
            std::fs::write(&file, &token).map_err(|e| format!("{}: {e}", file.display()))?;
            drawn.push(token);
        }
        let [user_token, _, admin_token] =
            <[String; 3]>::try_from(drawn).map_err(|_| "three tokens were drawn")?;
        Ok(Self {
            dir: dir.to_path_buf(),
            user_token,
            admin_token,
        })
    }

    fn file(&self, name: &str) -> BenchResult<String> {
        path_arg(&self.dir.join(name))
    }

    /// `--flag DIR/file` for each pair.
    fn flags(&self, pairs: &[(&str, &str)]) -> BenchResult<Vec<String>> {
        let mut flags = Vec::new();
        for (flag, file) in pairs {
            flags.extend([flag.to_string(), self.file(file)?]);
        }
        Ok(flags)
    }

    /// A secure server's flags: TLS, mutual TLS, tokens, and the peer
    /// token a Raft server sends.
    fn server_flags(&self, raft: bool) -> BenchResult<Vec<String>> {
        let mut flags = self.flags(&[
            ("--tls-cert", "server.pem"),
            ("--tls-key", "server.key"),
            ("--tls-client-ca", "ca.pem"),
            ("--auth-tokens", "tokens"),
        ])?;
        if raft {
            flags.extend(self.flags(&[("--peer-token-file", "peer.tok")])?);
        }
        Ok(flags)
    }

    /// The client's flags: the CA, its certificate, the user token.
    fn client_flags(&self) -> BenchResult<Vec<String>> {
        self.flags(&[
            ("--ca", "ca.pem"),
            ("--tls-cert", "server.pem"),
            ("--tls-key", "server.key"),
            ("--token-file", "user.tok"),
        ])
    }

    /// The same for an in-process caller sending `token`.
    fn client_security(&self, token: &str) -> Result<ClientSecurity, SecurityError> {
        let tls = client_tls(
            Some(&self.dir.join("ca.pem")),
            Some((&self.dir.join("server.pem"), &self.dir.join("server.key"))),
        )?;
        Ok(ClientSecurity {
            tls: Some(tls),
            bearer: Some(Bearer::new(token, "the bench")?),
        })
    }
}

/// Runs T1 at `scale` in `work`.
pub async fn run_all(scale: &Scale, work: &Path) -> BenchResult<Vec<TlsRow>> {
    let material = Material::new(&work.join("t1-certs"))?;
    let mut commits = [0.0; 2];
    let mut uploads = [0.0; 2];
    let bytes = (scale.mixed_bytes / 4).max(1 << 20);
    let source = work.join("t1-source");
    std::fs::create_dir_all(&source).map_err(|e| format!("{}: {e}", source.display()))?;
    let generated = data::mixed_dir(&source, bytes, 11)?;
    // Plaintext and secured runs take turns, and each keeps its best, so
    // that a burst of load from elsewhere on a shared machine does not
    // decide the comparison.
    let modes = [false, true].into_iter().enumerate();
    for (round, (i, secure)) in (0..ROUNDS).flat_map(|r| modes.clone().map(move |m| (r, m))) {
        let mode = if secure { "tls" } else { "plain" };
        eprintln!("T1 ({round}): UpdateFile on raft-3 (mem), {CALLERS} callers, {mode}");
        // The cluster is led with the admin token, loaded with the user's.
        let (server_flags, raft_flags, admin, security, client_flags) = if secure {
            (
                material.server_flags(false)?,
                material.server_flags(true)?,
                material.client_security(&material.admin_token)?,
                material.client_security(&material.user_token)?,
                material.client_flags()?,
            )
        } else {
            Default::default()
        };
        let label = format!("t1-commits-{mode}-{round}");
        let cluster =
            procs::start_cluster_with(work, &label, 3, "127.0.0.1:1", None, &raft_flags, &admin)
                .await?;
        let row = commit_load(&cluster.addrs[0], &security, CALLERS, scale.commit_duration).await?;
        if row.errors > 0 {
            return Err(format!("T1 {mode}: {} commits failed", row.errors).into());
        }
        commits[i] = row.ops_per_sec().max(commits[i]);
        drop(cluster);

        eprintln!(
            "T1 ({round}): cold upload of {}, {mode}",
            human_bytes(generated.bytes())
        );
        let flags: Vec<&str> = server_flags.iter().map(String::as_str).collect();
        let block = procs::start_server(
            work,
            &format!("t1-block-{mode}-{round}"),
            "block",
            None,
            &flags,
        )?;
        let cluster = procs::start_cluster_with(
            work,
            &format!("t1-raft-{mode}-{round}"),
            3,
            &block.addr,
            None,
            &raft_flags,
            &admin,
        )
        .await?;
        let mut args = client_flags;
        args.extend([
            "-q".to_string(),
            "-f".to_string(),
            path_arg(&cluster.config)?,
            path_arg(&source)?,
            LARGE_BLOCK.to_string(),
        ]);
        let run = run_client(work, &args)?;
        let rate = generated.bytes() as f64 / 1e6 / run.elapsed.as_secs_f64();
        uploads[i] = rate.max(uploads[i]);
        let index = source.join("index.txt");
        std::fs::remove_file(&index).map_err(|e| format!("{}: {e}", index.display()))?;
    }
    Ok(vec![
        TlsRow {
            what: format!("UpdateFile on raft-3 (mem), {CALLERS} callers"),
            unit: "commits/s".into(),
            plain: commits[0],
            secure: commits[1],
        },
        TlsRow {
            what: format!(
                "cold upload of {} at 4 MiB blocks, raft-3",
                human_bytes(generated.bytes())
            ),
            unit: "MB/s".into(),
            plain: uploads[0],
            secure: uploads[1],
        },
    ])
}
