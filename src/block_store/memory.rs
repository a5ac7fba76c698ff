//! The in-memory block backend: blocks live as long as the process.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use crate::locks::{read, write};

use bytes::Bytes;

use super::{BlockBackend, BlockStoreError, Freed, StoredBlock};

/// Blocks kept in a hash map; what the original implementation does. Each
/// remembers when it was last stored or asked about, for gc.
#[derive(Debug, Default)]
pub struct MemoryBlocks {
    blocks: RwLock<HashMap<String, (Bytes, Instant)>>,
}

impl BlockBackend for MemoryBlocks {
    fn get(&self, hash: &str) -> Result<Option<Bytes>, BlockStoreError> {
        Ok(read(&self.blocks).get(hash).map(|(data, _)| data.clone()))
    }

    fn put(&self, hash: &str, data: Bytes) -> Result<(), BlockStoreError> {
        let now = Instant::now();
        write(&self.blocks)
            .entry(hash.to_string())
            .and_modify(|(_, touched)| *touched = now)
            .or_insert((data, now));
        Ok(())
    }

    fn has(&self, hash: &str) -> Result<bool, BlockStoreError> {
        // The write lock: the age changes, and a deletion must not slip
        // between the answer and the change.
        Ok(write(&self.blocks)
            .get_mut(hash)
            .map(|(_, touched)| *touched = Instant::now())
            .is_some())
    }

    fn list(&self, after: &str, limit: usize) -> Result<Vec<StoredBlock>, BlockStoreError> {
        let now = Instant::now();
        let blocks = read(&self.blocks);
        let mut listed: Vec<StoredBlock> = blocks
            .iter()
            .filter(|(hash, _)| hash.as_str() > after)
            .map(|(hash, (data, touched))| StoredBlock {
                hash: hash.clone(),
                size: data.len() as u64,
                age: now.saturating_duration_since(*touched),
            })
            .collect();
        listed.sort_unstable_by(|a, b| a.hash.cmp(&b.hash));
        listed.truncate(limit);
        Ok(listed)
    }

    fn delete_older(&self, hashes: &[String], min_age: Duration) -> Result<Freed, BlockStoreError> {
        let now = Instant::now();
        let mut blocks = write(&self.blocks);
        let mut freed = Freed::default();
        for hash in hashes {
            let old = blocks
                .get(hash)
                .is_some_and(|(_, touched)| now.saturating_duration_since(*touched) >= min_age);
            if old && let Some((data, _)) = blocks.remove(hash) {
                freed.blocks += 1;
                freed.bytes += data.len() as u64;
            }
        }
        Ok(freed)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::hash::hash_block;

    /// The backends' shared gc contract, run on `store`.
    pub(crate) fn gc_contract(store: &dyn BlockBackend) {
        let blocks: Vec<(String, Bytes)> = (0..5)
            .map(|i| {
                let data = Bytes::from(vec![i as u8; 10 + i]);
                (hash_block(&data), data)
            })
            .collect();
        store.put_all(blocks.clone()).unwrap();
        let mut hashes: Vec<String> = blocks.iter().map(|(h, _)| h.clone()).collect();
        hashes.sort();
        // Pages in hash order.
        let first = store.list("", 2).unwrap();
        assert_eq!(
            first.iter().map(|b| &b.hash).collect::<Vec<_>>(),
            [&hashes[0], &hashes[1]]
        );
        let rest = store.list(&hashes[1], 10).unwrap();
        assert_eq!(rest.len(), 3);
        assert!(store.list(&hashes[4], 10).unwrap().is_empty());
        let size = |h: &str| blocks.iter().find(|(x, _)| x == h).unwrap().1.len() as u64;
        assert!(first.iter().all(|b| b.size == size(&b.hash)));
        // Young blocks stay; a block asked about is young again.
        assert_eq!(
            store
                .delete_older(&hashes, Duration::from_secs(3600))
                .unwrap(),
            Freed::default()
        );
        std::thread::sleep(Duration::from_millis(30));
        assert!(store.has(&hashes[0]).unwrap());
        store
            .put(
                &hashes[1],
                blocks
                    .iter()
                    .find(|(h, _)| *h == hashes[1])
                    .unwrap()
                    .1
                    .clone(),
            )
            .unwrap();
        let freed = store
            .delete_older(&hashes[..3], Duration::from_millis(20))
            .unwrap();
        assert_eq!(
            freed,
            Freed {
                blocks: 1,
                bytes: size(&hashes[2])
            }
        );
        assert!(!store.has(&hashes[2]).unwrap());
        assert!(store.get(&hashes[0]).unwrap().is_some());
        // Gone or unknown blocks count nothing.
        let freed = store.delete_older(&hashes[2..], Duration::ZERO).unwrap();
        assert_eq!(freed.blocks, 2);
        assert_eq!(store.list("", 10).unwrap().len(), 2);
    }

    #[test]
    fn memory_blocks_keep_the_gc_contract() {
        gc_contract(&MemoryBlocks::default());
    }
}
