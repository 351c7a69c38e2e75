//! A per-worker pool of forwarding buffers, so connections reuse buffers
//! instead of allocating two per connection.

use std::cell::RefCell;

/// Buffers of one size, owned by one worker thread (not `Sync`).
#[derive(Debug)]
pub struct BufferPool {
    size: usize,
    keep: usize,
    free: RefCell<Vec<Vec<u8>>>,
}

impl BufferPool {
    /// A pool of `size`-byte buffers that keeps at most `keep` idle ones.
    pub fn new(size: usize, keep: usize) -> BufferPool {
        BufferPool {
            size,
            keep,
            free: RefCell::new(Vec::new()),
        }
    }

    /// Takes an idle buffer, or allocates one. Its capacity is the pool's size.
    pub fn take(&self) -> Vec<u8> {
        self.free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.size))
    }

    /// Returns a buffer; beyond `keep` idle buffers it is freed.
    pub fn give_back(&self, buffer: Vec<u8>) {
        let mut free = self.free.borrow_mut();
        if free.len() < self.keep && buffer.capacity() == self.size {
            free.push(buffer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_should_reuse_returned_buffers_up_to_its_limit() {
        let pool = BufferPool::new(4096, 1);
        let a = pool.take();
        let b = pool.take();
        let a_ptr = a.as_ptr();
        pool.give_back(a);
        pool.give_back(b);
        assert_eq!(pool.free.borrow().len(), 1);
        let again = pool.take();
        assert_eq!(again.as_ptr(), a_ptr);
        assert_eq!(again.capacity(), 4096);
    }
}
