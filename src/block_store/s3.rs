//! The object-store block backend behind `--s3 s3://BUCKET[/PREFIX]`
//! (SPEC §9.4): block `<hash>` is the object `PREFIX/<hash>` in an
//! S3-compatible store (AWS S3, Garage, SeaweedFS, MinIO, Ceph RGW).
//!
//! The backend keeps no state of its own, so any number of BlockStore
//! servers can serve one bucket. Every read re-hashes the object: one whose
//! content does not match its name (overwritten behind our back, damaged)
//! is never served. It is moved to `PREFIX/corrupt/<hash>` with a warning
//! and reported as absent, so `GetBlock` answers NOT_FOUND and `HasBlocks`
//! stops listing it, and the next client that has the block uploads it
//! again. `HasBlocks` only asks whether the object exists (a `HEAD`), and
//! `PutBlock` first asks the same, so a block already stored is never sent
//! to the store twice.
//!
//! The store client (`object_store`) retries failed requests with
//! exponential backoff for a bounded time; what still fails is reported as
//! [`BlockStoreError::ObjectStore`], which the service answers with
//! UNAVAILABLE, never with a wrong answer.
//!
//! The service runs every backend call on tokio's blocking pool (the disk
//! backend does blocking I/O); this backend drives its async client from
//! there, and one call's object requests run concurrently, at most
//! [`CALL_CONCURRENCY`] at a time, and at most [`SERVER_REQUESTS`] across
//! all the calls a server is serving.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, FuturesOrdered, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::limit::LimitStore;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

use super::{BlockBackend, BlockStoreError, Fetched, ReplyLimit};
use crate::grpc::MAX_BLOCK_BYTES;
use crate::hash::hash_block;

/// Object requests one BlockStore call keeps in flight: a `HasBlocks` or
/// `PutBlocks` of 4 KiB blocks names hundreds, and one at a time each
/// would pay a full round trip to the store.
pub const CALL_CONCURRENCY: usize = 32;

/// Object requests one server keeps in flight across all its calls, so
/// that many clients at once cannot open connections without bound.
pub const SERVER_REQUESTS: usize = 128;

/// Where blocks that failed verification are moved, below the prefix.
const QUARANTINE: &str = "corrupt";

/// How the store client retries: quickly at first, then backing off, and
/// giving up after [`RETRY_TIMEOUT`] so a dead store is reported to the
/// client (which has its own retries) rather than hanging its call.
const RETRY: RetryConfig = RetryConfig {
    backoff: BackoffConfig {
        init_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(2),
        base: 2.0,
    },
    max_retries: 6,
    retry_timeout: RETRY_TIMEOUT,
};

/// How long the store client keeps retrying one request.
const RETRY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an `--s3` argument is not a usable location.
#[derive(Debug, thiserror::Error)]
pub enum S3LocationError {
    /// It does not start with `s3://`.
    #[error("{0:?} is not an s3://BUCKET[/PREFIX] URL")]
    NotS3(String),
    /// It names no bucket.
    #[error("{0:?} names no bucket: expected s3://BUCKET[/PREFIX]")]
    NoBucket(String),
    /// Its prefix is not a valid object path (empty or `.`/`..` segments).
    #[error("{url:?} has an invalid prefix: {source}")]
    BadPrefix {
        /// The URL as given.
        url: String,
        /// Why the prefix was refused.
        source: object_store::path::Error,
    },
}

/// A bucket and the prefix below which blocks live: `s3://BUCKET[/PREFIX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    bucket: String,
    prefix: Path,
}

impl FromStr for S3Location {
    type Err = S3LocationError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| S3LocationError::NotS3(url.into()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(S3LocationError::NoBucket(url.into()));
        }
        let prefix =
            Path::parse(prefix.trim_matches('/')).map_err(|source| S3LocationError::BadPrefix {
                url: url.into(),
                source,
            })?;
        Ok(S3Location {
            bucket: bucket.into(),
            prefix,
        })
    }
}

impl fmt::Display for S3Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.prefix.as_ref() {
            "" => write!(f, "s3://{}", self.bucket),
            prefix => write!(f, "s3://{}/{prefix}", self.bucket),
        }
    }
}

/// Blocks as objects in an S3-compatible store; see the module
/// documentation.
#[derive(Debug)]
pub struct S3Blocks {
    /// The bucket, already narrowed to the prefix.
    store: Arc<dyn ObjectStore>,
    /// For messages: `s3://BUCKET/PREFIX`.
    location: String,
    /// The runtime whose I/O drivers the store client's requests use.
    runtime: tokio::runtime::Handle,
}

impl S3Blocks {
    /// The blocks at `location`, reached with the credentials, region and
    /// endpoint of the standard `AWS_*` environment variables. Sends no
    /// request: a store that cannot be reached shows on the first call.
    /// Must be called inside a tokio runtime, which then carries the
    /// store's requests.
    pub fn from_env(location: &S3Location) -> Result<S3Blocks, BlockStoreError> {
        let bucket = AmazonS3Builder::from_env()
            .with_bucket_name(&location.bucket)
            .with_retry(RETRY)
            .build()
            .map_err(store_error(location.to_string(), "configure", "the client"))?;
        let limited = LimitStore::new(bucket, SERVER_REQUESTS);
        let store = PrefixStore::new(limited, location.prefix.clone());
        S3Blocks::over(Arc::new(store), location.to_string())
    }

    /// The blocks in `store` (already narrowed to their prefix), described
    /// as `location` in messages.
    fn over(store: Arc<dyn ObjectStore>, location: String) -> Result<S3Blocks, BlockStoreError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            BlockStoreError::Io(std::io::Error::other(format!(
                "the object store client needs a tokio runtime: {e}"
            )))
        })?;
        Ok(S3Blocks {
            store,
            location,
            runtime,
        })
    }

    fn failed(
        &self,
        op: &'static str,
        key: &Path,
    ) -> impl FnOnce(object_store::Error) -> BlockStoreError {
        store_error(self.location.clone(), op, key.as_ref())
    }

    /// Runs `work` to completion on this (blocking-pool) thread.
    fn block_on<T>(&self, work: impl Future<Output = T>) -> T {
        self.runtime.block_on(work)
    }

    async fn exists(&self, hash: &str) -> Result<bool, BlockStoreError> {
        let key = Path::from(hash);
        match self.store.head(&key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.failed("check", &key)(e)),
        }
    }

    /// The block named `hash`, verified; a corrupt object is quarantined
    /// and reported as absent.
    async fn fetch(&self, hash: String) -> Result<(String, Option<Bytes>), BlockStoreError> {
        let key = Path::from(hash.as_str());
        let found = match self.store.get(&key).await {
            Ok(found) => found,
            Err(object_store::Error::NotFound { .. }) => return Ok((hash, None)),
            Err(e) => return Err(self.failed("get", &key)(e)),
        };
        // A block is never larger than this; reading a bigger object whole
        // would only let whoever can write the bucket exhaust our memory.
        if found.meta.size > MAX_BLOCK_BYTES as u64 {
            self.quarantine(&hash, &key).await;
            return Ok((hash, None));
        }
        let data = found.bytes().await.map_err(self.failed("read", &key))?;
        if hash_block(&data) != hash {
            self.quarantine(&hash, &key).await;
            return Ok((hash, None));
        }
        Ok((hash, Some(data)))
    }

    /// Moves an object that failed verification out of the blocks' way. If
    /// that fails the object stays, still never served, and the warning
    /// says so.
    async fn quarantine(&self, hash: &str, key: &Path) {
        let target = Path::from(QUARANTINE).join(hash);
        let moved = self.store.rename(key, &target).await;
        tracing::warn!(
            store = %self.location,
            %key,
            moved_to = %target,
            error = moved.err().map(|e| e.to_string()),
            "block content does not match its hash; not serving it"
        );
    }

    /// Stores `data` under `hash` unless an object is there already.
    async fn store_one(&self, hash: String, data: Bytes) -> Result<(), BlockStoreError> {
        if self.exists(&hash).await? {
            return Ok(());
        }
        let key = Path::from(hash.as_str());
        self.store
            .put(&key, PutPayload::from_bytes(data))
            .await
            .map_err(self.failed("put", &key))?;
        Ok(())
    }

    /// [`BlockBackend::get_many`], fetching ahead in order: never more
    /// blocks than the reply could still take if each were as large as the
    /// largest seen so far (one, before any is seen), so a reply of one
    /// 4 MiB block does not pay for 31 more.
    async fn fetch_many(
        &self,
        hashes: Vec<String>,
        limit: ReplyLimit,
    ) -> Result<Fetched, BlockStoreError> {
        let mut pending = hashes.into_iter();
        let mut in_flight = FuturesOrdered::new();
        let (mut found, mut bytes, mut largest) = (Vec::new(), 0usize, 0usize);
        loop {
            let room = match largest {
                0 => 1,
                largest => {
                    let by_bytes = limit.bytes.saturating_sub(bytes) / largest;
                    let by_count = limit.count.saturating_sub(found.len());
                    by_bytes.min(by_count).clamp(1, CALL_CONCURRENCY)
                }
            };
            while in_flight.len() < room {
                let Some(hash) = pending.next() else { break };
                in_flight.push_back(self.fetch(hash));
            }
            let Some(next) = in_flight.next().await else {
                break;
            };
            let (hash, data) = next?;
            let Some(data) = data else {
                return Ok(Fetched::Missing(hash));
            };
            if !limit.fits(found.len(), bytes, data.len()) {
                break;
            }
            bytes += data.len();
            largest = largest.max(data.len());
            found.push((hash, data));
        }
        Ok(Fetched::Blocks(found))
    }
}

/// Turns what the store client reported about `op` on `key` into our error.
fn store_error(
    store: String,
    op: &'static str,
    key: &str,
) -> impl FnOnce(object_store::Error) -> BlockStoreError {
    let key = key.to_string();
    move |source| BlockStoreError::ObjectStore {
        store,
        op,
        key,
        source: Box::new(source),
    }
}

impl BlockBackend for S3Blocks {
    fn get(&self, hash: &str) -> Result<Option<Bytes>, BlockStoreError> {
        self.block_on(self.fetch(hash.to_string()))
            .map(|(_, data)| data)
    }

    fn put(&self, hash: &str, data: Bytes) -> Result<(), BlockStoreError> {
        self.block_on(self.store_one(hash.to_string(), data))
    }

    fn put_all(&self, blocks: Vec<(String, Bytes)>) -> Result<(), BlockStoreError> {
        self.block_on(
            stream::iter(blocks)
                .map(|(hash, data)| self.store_one(hash, data))
                .buffer_unordered(CALL_CONCURRENCY)
                .try_collect(),
        )
    }

    fn has(&self, hash: &str) -> Result<bool, BlockStoreError> {
        self.block_on(self.exists(hash))
    }

    fn has_many(&self, hashes: Vec<String>) -> Result<Vec<String>, BlockStoreError> {
        self.block_on(
            stream::iter(hashes)
                .map(|hash| async move {
                    let present = self.exists(&hash).await?;
                    Ok::<_, BlockStoreError>(present.then_some(hash))
                })
                .buffered(CALL_CONCURRENCY)
                .try_filter_map(|present| async move { Ok(present) })
                .try_collect(),
        )
    }

    fn get_many(&self, hashes: Vec<String>, limit: ReplyLimit) -> Result<Fetched, BlockStoreError> {
        self.block_on(self.fetch_many(hashes, limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    /// A backend over an in-memory bucket, with a runtime for its client;
    /// the test calls it from its own thread, as the blocking pool would.
    fn in_memory() -> (tokio::runtime::Runtime, Arc<InMemory>, S3Blocks) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let bucket = Arc::new(InMemory::new());
        let blocks = {
            let _entered = runtime.enter();
            S3Blocks::over(bucket.clone(), "s3://test".into()).unwrap()
        };
        (runtime, bucket, blocks)
    }

    fn block(text: &str) -> (String, Bytes) {
        let data = Bytes::from(text.to_string());
        (hash_block(&data), data)
    }

    #[test]
    fn parses_bucket_and_prefix_and_refuses_what_is_not_a_location() {
        let at: S3Location = "s3://bucket/a/b/".parse().unwrap();
        assert_eq!((at.bucket.as_str(), at.prefix.as_ref()), ("bucket", "a/b"));
        assert_eq!(at.to_string(), "s3://bucket/a/b");
        let bare: S3Location = "s3://bucket".parse().unwrap();
        assert_eq!(bare.to_string(), "s3://bucket");
        for bad in [
            "bucket/x",
            "http://bucket",
            "s3://",
            "s3:///x",
            "s3://b/a//c",
            "s3://b/../c",
        ] {
            assert!(bad.parse::<S3Location>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn stores_under_the_hash_and_serves_what_it_stored() {
        let (_rt, bucket, blocks) = in_memory();
        let (hash, data) = block("hello");
        let (other, _) = block("other");
        assert!(!blocks.has(&hash).unwrap());
        blocks.put_all(vec![(hash.clone(), data.clone())]).unwrap();
        assert_eq!(blocks.get(&hash).unwrap(), Some(data));
        assert_eq!(
            blocks.has_many(vec![other, hash.clone()]).unwrap(),
            vec![hash.clone()]
        );
        let stored = _rt.block_on(bucket.head(&Path::from(hash.as_str())));
        assert!(stored.is_ok(), "object is not named by its hash");
    }

    #[test]
    fn a_corrupt_object_is_never_served_and_is_moved_aside_so_it_can_be_uploaded_again() {
        let (rt, bucket, blocks) = in_memory();
        let (hash, data) = block("the real content");
        let key = Path::from(hash.as_str());
        rt.block_on(bucket.put(&key, PutPayload::from_static(b"tampered")))
            .unwrap();

        // Present already, so a put does not send it again...
        blocks.put(&hash, data.clone()).unwrap();
        assert!(blocks.has(&hash).unwrap());
        // ...but a read finds it wrong, never serves it, and moves it aside.
        assert_eq!(blocks.get(&hash).unwrap(), None);
        assert!(!blocks.has(&hash).unwrap());
        let kept = rt
            .block_on(async {
                bucket
                    .get(&Path::from(QUARANTINE).join(hash.as_str()))
                    .await?
                    .bytes()
                    .await
            })
            .unwrap();
        assert_eq!(kept, Bytes::from_static(b"tampered"));

        blocks.put(&hash, data.clone()).unwrap();
        assert_eq!(blocks.get(&hash).unwrap(), Some(data));
    }

    #[test]
    fn an_object_larger_than_any_block_is_not_read() {
        let (rt, bucket, blocks) = in_memory();
        let (hash, _) = block("small");
        let huge = vec![0u8; MAX_BLOCK_BYTES + 1];
        rt.block_on(bucket.put(&Path::from(hash.as_str()), huge.into()))
            .unwrap();
        assert_eq!(blocks.get(&hash).unwrap(), None);
        assert!(!blocks.has(&hash).unwrap());
    }

    #[test]
    fn get_many_returns_blocks_in_order_until_the_reply_is_full_or_one_is_missing() {
        let (_rt, _bucket, blocks) = in_memory();
        let named: Vec<_> = (0..100).map(|i| block(&format!("block {i:03}"))).collect();
        blocks.put_all(named.clone()).unwrap();
        let hashes: Vec<String> = named.iter().map(|(h, _)| h.clone()).collect();
        let unlimited = ReplyLimit {
            bytes: usize::MAX,
            count: usize::MAX,
        };
        assert_eq!(
            blocks.get_many(hashes.clone(), unlimited).unwrap(),
            Fetched::Blocks(named.clone())
        );
        // Each block is 9 bytes: 50 bytes take 5 of them; 3 blocks stop at 3.
        let by_bytes = ReplyLimit {
            bytes: 50,
            count: usize::MAX,
        };
        assert_eq!(
            blocks.get_many(hashes.clone(), by_bytes).unwrap(),
            Fetched::Blocks(named[..5].to_vec())
        );
        let by_count = ReplyLimit {
            bytes: usize::MAX,
            count: 3,
        };
        assert_eq!(
            blocks.get_many(hashes.clone(), by_count).unwrap(),
            Fetched::Blocks(named[..3].to_vec())
        );
        let (absent, _) = block("absent");
        let mut with_gap = hashes[..40].to_vec();
        with_gap.push(absent.clone());
        assert_eq!(
            blocks.get_many(with_gap, unlimited).unwrap(),
            Fetched::Missing(absent)
        );
    }

    #[test]
    fn an_unreachable_store_is_an_object_store_error_naming_the_store_and_the_block() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let blocks = {
            let _entered = runtime.enter();
            let bucket = AmazonS3Builder::new()
                .with_bucket_name("gone")
                .with_region("us-east-1")
                .with_access_key_id("key")
                .with_secret_access_key("secret")
                .with_endpoint(format!("http://127.0.0.1:{port}"))
                .with_allow_http(true)
                .with_retry(RetryConfig {
                    max_retries: 1,
                    ..RETRY
                })
                .build()
                .unwrap();
            S3Blocks::over(Arc::new(bucket), "s3://gone".into()).unwrap()
        };
        let (hash, data) = block("x");
        for result in [
            blocks.has(&hash).map(|_| ()),
            blocks.get(&hash).map(|_| ()),
            blocks.put(&hash, data).map(|_| ()),
        ] {
            let error = result.unwrap_err();
            assert!(
                matches!(error, BlockStoreError::ObjectStore { .. }),
                "{error}"
            );
            let message = error.to_string();
            assert!(
                message.contains("s3://gone") && message.contains(&hash),
                "{message}"
            );
        }
    }
}
