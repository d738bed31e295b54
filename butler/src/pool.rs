//! Buffer reuse for the chunks a stream sends to the bundler.

use bytes::BytesMut;

/// Buffers for one stream's chunks, reused once every chunk cut from them has been dropped.
///
/// Chunks leave in the order they were read, so the oldest buffer is the first to come free.
/// Reusing it keeps the allocator from handing memory back to the system and faulting it in
/// again on every read, which at hundreds of MiB/s costs more than the reading itself.
#[derive(Default)]
pub(crate) struct Pool {
    spare: std::collections::VecDeque<BytesMut>,
}

/// Buffers a stream keeps around for reuse.
const POOL_SIZE: usize = 8;

impl Pool {
    /// Retires `used` (still referenced by chunks in flight) and returns a buffer with room
    /// for `size` bytes: the oldest retired one if it has come free, else a new one.
    pub(crate) fn next(&mut self, used: BytesMut, size: usize) -> BytesMut {
        if used.capacity() > 0 || !used.is_empty() {
            self.spare.push_back(used);
        }
        if let Some(mut oldest) = self.spare.pop_front() {
            oldest.clear();
            if oldest.try_reclaim(size) {
                return oldest;
            }
            if self.spare.len() + 1 < POOL_SIZE {
                self.spare.push_front(oldest);
            }
        }
        BytesMut::with_capacity(size)
    }
}
