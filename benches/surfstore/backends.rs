//! B8: the BlockStore's backends side by side. A cold upload and a cold
//! download of one generated directory, each one `surfstore-client` run
//! (wall time), through a plain `surfstore-server -s meta` and a
//! `surfstore-server -s block` that keeps its blocks in memory (`mem`), with
//! `--data-dir` (`disk`), or with `--s3` in a SeaweedFS on loopback (`s3`),
//! at 4 MiB and 4 KiB blocks. Every backend of a block size moves the same
//! data in the same run, so their ratios hold whatever the machine's load.
//!
//! SeaweedFS is started with `scripts/seaweedfs.sh` when `make s3-tools`
//! installed it (or `SURFSTORE_WEED` names a `weed`); without it the `s3`
//! rows are missing and the report says why. Beside them, `s3 alone` is the
//! store's own rate for the same bytes in blocks of the same size, put and
//! then got straight from this process with as many requests in flight as
//! one BlockStore call keeps: what the `s3` rows could at best reach here.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use object_store::ObjectStoreExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as Key;
use surfstore::proto::Block;
use surfstore::proto::block_store_client::BlockStoreClient;
use tokio::runtime::Runtime;

use crate::data::{self, Rng};
use crate::procs::{self, Proc, Server, path_arg, run_client};
use crate::sync::{LARGE_BLOCK, SMALL_BLOCK};
use crate::{BenchResult, Scale};

/// The credentials SeaweedFS is started with and the BlockStore signs with.
const CREDENTIALS: [(&str, &str); 2] = [
    ("AWS_ACCESS_KEY_ID", "surfstore-bench"),
    ("AWS_SECRET_ACCESS_KEY", "surfstore-bench-secret"),
];

/// The bucket the `s3` rows use; SeaweedFS creates it on the first write.
const BUCKET: &str = "surfstore-bench";

/// Requests `s3 alone` keeps in flight: as many as one BlockStore call.
const ALONE_CONCURRENCY: usize = 32;

/// How long SeaweedFS may take before its BlockStore stores a first block
/// (about 4 s alone, then a few to set up the bucket's volumes).
const S3_READY_TIMEOUT: Duration = Duration::from_secs(90);

/// One backend at one block size.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackendRow {
    /// `mem`, `disk` or `s3`.
    pub backend: String,
    /// The client's BLOCKSIZE.
    pub block_size: u64,
    /// Bytes of the directory synced.
    pub bytes: u64,
    /// Wall time of the cold upload.
    pub upload_secs: f64,
    /// Wall time of the cold download.
    pub download_secs: f64,
}

impl BackendRow {
    /// Megabytes (10^6) uploaded per second.
    pub fn upload_mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.upload_secs
    }

    /// Megabytes (10^6) downloaded per second.
    pub fn download_mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.download_secs
    }
}

/// B8's rows, and whether the `s3` ones ran.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Backends {
    /// Which SeaweedFS the `s3` rows used, or why there are none.
    pub s3_status: String,
    /// One per backend and block size.
    pub rows: Vec<BackendRow>,
}

/// Runs B8 at `scale` in `work`.
pub fn run_all(scale: &Scale, work: &Path, runtime: &Runtime) -> BenchResult<Backends> {
    let weed = weed();
    let s3 = match &weed {
        Some(weed) => Some(SeaweedFs::start(work, weed)?),
        None => None,
    };
    let s3_status = match (&weed, &s3) {
        (Some(weed), Some(s3)) => format!("SeaweedFS ({}) at {}", weed.display(), s3.endpoint),
        _ => "not run: no SeaweedFS (`make s3-tools` installs it)".into(),
    };
    let mut rows = Vec::new();
    let cases = [
        ("4m", scale.backend_large_bytes, LARGE_BLOCK, 21),
        ("4k", scale.backend_small_bytes, SMALL_BLOCK, 22),
    ];
    for (label, total, block_size, seed) in cases {
        let source = work.join(format!("b8-{label}-source"));
        std::fs::create_dir_all(&source).map_err(|e| format!("{}: {e}", source.display()))?;
        let generated = data::mixed_dir(&source, total, seed)?;
        let mut backends = vec!["mem", "disk"];
        backends.extend(s3.as_ref().map(|_| "s3"));
        for backend in backends {
            eprintln!(
                "B8: {backend} backend, cold upload and download at {block_size}-byte blocks"
            );
            let label = format!("b8-{label}-{backend}");
            let block = match (backend, &s3) {
                ("s3", Some(s3)) => s3.block_store(work, &label, runtime)?,
                ("disk", _) => {
                    let dir = work.join(format!("{label}-data"));
                    procs::start_server(work, &format!("{label}-block"), "block", Some(&dir), &[])?
                }
                _ => procs::start_server(work, &format!("{label}-block"), "block", None, &[])?,
            };
            let meta =
                procs::start_server(work, &format!("{label}-meta"), "meta", None, &[&block.addr])?;
            let copy = work.join(format!("{label}-download"));
            std::fs::create_dir_all(&copy).map_err(|e| format!("{}: {e}", copy.display()))?;
            let sync = |dir: &Path| -> BenchResult<f64> {
                let args = [meta.addr.clone(), path_arg(dir)?, block_size.to_string()];
                Ok(run_client(work, &args)?.elapsed.as_secs_f64())
            };
            // The upload writes the source's index.txt; the next backend's
            // upload must start from none.
            let upload_secs = sync(&source)?;
            std::fs::remove_file(source.join("index.txt"))
                .map_err(|e| format!("remove {}/index.txt: {e}", source.display()))?;
            let download_secs = sync(&copy)?;
            std::fs::remove_file(copy.join("index.txt"))
                .map_err(|e| format!("remove {}/index.txt: {e}", copy.display()))?;
            data::check_same(&source, &copy)?;
            std::fs::remove_dir_all(&copy).map_err(|e| format!("{}: {e}", copy.display()))?;
            rows.push(BackendRow {
                backend: backend.into(),
                block_size,
                bytes: generated.bytes(),
                upload_secs,
                download_secs,
            });
        }
        std::fs::remove_dir_all(&source).map_err(|e| format!("{}: {e}", source.display()))?;
        if let Some(s3) = &s3 {
            eprintln!("B8: the S3 store alone at {block_size}-byte blocks");
            let prefix = format!("b8-{label}-alone");
            rows.push(runtime.block_on(s3.alone(&prefix, generated.bytes(), block_size))?);
        }
    }
    Ok(Backends { s3_status, rows })
}

/// `$SURFSTORE_WEED`, else the `weed` `make s3-tools` installs, if there.
fn weed() -> Option<PathBuf> {
    let path = match std::env::var_os("SURFSTORE_WEED") {
        Some(path) => PathBuf::from(path),
        None => crate::target_dir().join("s3-venv/bin/weed"),
    };
    path.is_file().then_some(path)
}

/// A SeaweedFS for the `s3` rows, killed when dropped.
struct SeaweedFs {
    /// `http://127.0.0.1:<S3 port>`.
    endpoint: String,
    _proc: Proc,
}

impl SeaweedFs {
    /// Starts `scripts/seaweedfs.sh` on eight consecutive free ports.
    fn start(work: &Path, weed: &Path) -> BenchResult<SeaweedFs> {
        let dir = work.join("b8-seaweedfs");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let base = procs::consecutive_free_ports(8)?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/seaweedfs.sh");
        let weed = path_arg(weed)?;
        let mut env = CREDENTIALS.to_vec();
        env.push(("SURFSTORE_WEED", &weed));
        let proc = Proc::spawn(
            &script,
            &[path_arg(&dir)?, base.to_string()],
            &env,
            &procs::log_path(work, "b8-seaweedfs")?,
        )?;
        Ok(SeaweedFs {
            endpoint: format!("http://127.0.0.1:{}", base + 6),
            _proc: proc,
        })
    }

    /// A `surfstore-server -s block --s3` on this store, under its own
    /// prefix, once it has stored a first block.
    fn block_store(&self, work: &Path, label: &str, runtime: &Runtime) -> BenchResult<Server> {
        let url = format!("s3://{BUCKET}/{label}");
        let mut env = CREDENTIALS.to_vec();
        env.extend([
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
        ]);
        let server = procs::start_server_with_env(
            work,
            &format!("{label}-block"),
            "block",
            &["--s3", &url],
            &env,
        )?;
        runtime.block_on(stores_a_block(&server.addr))?;
        Ok(server)
    }

    /// `s3 alone`: `total` random bytes in blocks of `block_size`, put
    /// under `prefix` and then got back, timed apart.
    async fn alone(&self, prefix: &str, total: u64, block_size: u64) -> BenchResult<BackendRow> {
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_endpoint(&self.endpoint)
            .with_allow_http(true);
        for (key, value) in CREDENTIALS {
            builder = builder.with_config(key.to_lowercase().parse()?, value);
        }
        let store = builder.build()?;
        let mut rng = Rng::new(23);
        let blocks: Vec<(Key, bytes::Bytes)> = (0..total.div_ceil(block_size))
            .map(|i| {
                let len = block_size.min(total - i * block_size) as usize;
                let mut data = vec![0; len];
                rng.fill(&mut data);
                (Key::from(format!("{prefix}/{i}")), data.into())
            })
            .collect();
        let started = Instant::now();
        stream::iter(&blocks)
            .map(|(key, data)| store.put(key, data.clone().into()))
            .buffer_unordered(ALONE_CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await?;
        let upload_secs = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let got: u64 = stream::iter(&blocks)
            .map(|(key, _)| async { store.get(key).await?.bytes().await })
            .buffer_unordered(ALONE_CONCURRENCY)
            .map_ok(|data| data.len() as u64)
            .try_fold(0, |sum, len| async move { Ok(sum + len) })
            .await?;
        let download_secs = started.elapsed().as_secs_f64();
        if got != total {
            return Err(format!("the S3 store gave back {got} of {total} bytes").into());
        }
        Ok(BackendRow {
            backend: "s3 alone".into(),
            block_size,
            bytes: total,
            upload_secs,
            download_secs,
        })
    }
}

/// Polls until the BlockStore at `addr` stores a block: SeaweedFS is up and
/// the bucket ready. The block is none of the data's, so the upload that
/// follows still sends every one of its blocks.
async fn stores_a_block(addr: &str) -> BenchResult<()> {
    let mut client = BlockStoreClient::new(surfstore::grpc::channel(addr)?);
    let data = b"readiness".to_vec();
    let deadline = Instant::now() + S3_READY_TIMEOUT;
    loop {
        let block = Block {
            block_size: data.len() as i32,
            block_data: data.clone().into(),
        };
        let error = match client.put_block(block).await {
            Ok(_) => break,
            Err(e) => e,
        };
        if Instant::now() > deadline {
            return Err(
                format!("the S3 BlockStore at {addr} never stored a block: {error}").into(),
            );
        }
        tokio::time::sleep(procs::POLL).await;
    }
    Ok(())
}
