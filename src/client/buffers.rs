//! Block-sized read buffers that an upload reuses rather than allocates.
//!
//! A block read for upload lives only until its call is encoded. Whenever
//! the allocator hands large buffers back to the kernel on free (glibc did,
//! with the 128 KiB mmap threshold the client once pinned), a fresh buffer
//! per block costs a page fault for every 4 KiB read: it was half the
//! client's page faults in a 512 MiB upload at 4 MiB blocks.
//! Buffers are taken before a read and given back once the call that
//! carried them is done; one that something still refers to then is simply
//! dropped.

use std::sync::Mutex;

use bytes::Bytes;

/// A free list of buffers of one block size, holding at most as many as
/// the sync's block budget lets be in use at once.
#[derive(Debug)]
pub struct BlockBuffers {
    block_size: usize,
    most_kept: usize,
    free: Mutex<Vec<Vec<u8>>>,
}

impl BlockBuffers {
    /// An empty pool of `block_size` buffers that keeps at most `most_kept`
    /// of them.
    pub fn new(block_size: usize, most_kept: usize) -> Self {
        Self {
            block_size,
            most_kept,
            free: Mutex::new(Vec::new()),
        }
    }

    /// A buffer of exactly `block_size` bytes whose contents are left over
    /// from an earlier block: the caller overwrites what it keeps.
    pub fn take(&self) -> Vec<u8> {
        let mut buf = self.free_list().pop().unwrap_or_default();
        // Only a new or shortened buffer is written here; a full reused one
        // is left as it is.
        buf.resize(self.block_size, 0);
        buf
    }

    /// Takes back the buffers of `blocks` that nothing else refers to any
    /// more, up to the pool's limit.
    pub fn give_back(&self, blocks: impl IntoIterator<Item = Bytes>) {
        let reclaimed = blocks
            .into_iter()
            .filter_map(|block| block.try_into_mut().ok())
            .map(Vec::from)
            .filter(|buf| buf.capacity() >= self.block_size);
        let mut free = self.free_list();
        let room = self.most_kept.saturating_sub(free.len());
        free.extend(reclaimed.take(room));
    }

    fn free_list(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        // The list is valid whatever a panicking holder was doing.
        self.free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_back_block_is_reused_without_copying() {
        let pool = BlockBuffers::new(8, 4);
        let mut buf = pool.take();
        buf.copy_from_slice(b"abcdefgh");
        let at = buf.as_ptr();
        let block = Bytes::from(buf);
        pool.give_back([block]);
        let again = pool.take();
        assert_eq!(again.as_ptr(), at);
        assert_eq!(again.len(), 8);
    }

    #[test]
    fn a_short_last_block_comes_back_at_full_length() {
        let pool = BlockBuffers::new(8, 4);
        let mut buf = pool.take();
        buf.truncate(3);
        pool.give_back([Bytes::from(buf)]);
        assert_eq!(pool.take().len(), 8);
    }

    #[test]
    fn a_block_still_shared_is_not_taken_back() {
        let pool = BlockBuffers::new(8, 4);
        let block = Bytes::from(pool.take());
        let elsewhere = block.clone();
        pool.give_back([block]);
        let fresh = pool.take();
        assert_ne!(fresh.as_ptr(), elsewhere.as_ptr());
    }

    #[test]
    fn the_pool_keeps_no_more_than_its_limit() {
        let pool = BlockBuffers::new(8, 2);
        let blocks: Vec<Bytes> = (0..5).map(|_| Bytes::from(pool.take())).collect();
        pool.give_back(blocks);
        assert_eq!(pool.free_list().len(), 2);
    }
}
