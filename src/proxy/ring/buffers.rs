//! The worker's provided-buffer ring (`IORING_REGISTER_PBUF_RING`): recvs
//! name the buffer group instead of a buffer, and the kernel picks a free
//! buffer only when bytes arrive. So a connection waiting for bytes holds
//! no buffer at all; one holds a buffer only from the recv that filled it
//! until the send that empties it completes, then gives it back.

#![allow(unsafe_code)]

use io_uring::IoUring;
use io_uring::types::BufRingEntry;
use std::cell::Cell;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

/// The buffer group every recv of the worker names.
pub(super) const GROUP: u16 = 0;

/// A ring of `count` buffers of `size` bytes each, registered with one
/// io_uring as buffer group [`GROUP`]. Owned by the worker thread.
pub struct BufRing {
    /// The ring of entries the kernel takes buffers from: page-aligned,
    /// `count` entries, mapped anonymously.
    entries: NonNull<BufRingEntry>,
    count: u16,
    /// The next tail to publish: entries before it hold free buffers.
    tail: Cell<u16>,
    /// The buffers themselves, `count` × `size` bytes.
    memory: Box<[u8]>,
    size: usize,
}

impl BufRing {
    /// Maps and registers a ring of `count` (a power of two) buffers of
    /// `size` bytes with `ring`, every buffer free.
    pub fn new(ring: &IoUring, count: u16, size: usize) -> io::Result<BufRing> {
        let count = count.next_power_of_two();
        let bytes = usize::from(count) * std::mem::size_of::<BufRingEntry>();
        // SAFETY: an anonymous private mapping of `bytes` bytes; checked
        // for failure below. It is zeroed, so the tail starts at 0.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let entries = NonNull::new(map.cast::<BufRingEntry>())
            .ok_or_else(|| io::Error::other("mmap returned a null ring"))?;
        let buffers = BufRing {
            entries,
            count,
            tail: Cell::new(0),
            memory: vec![0u8; usize::from(count) * size].into_boxed_slice(),
            size,
        };
        // SAFETY: the entries stay mapped until `buffers` is dropped, which
        // the driver does only after the ring (declared before it) is gone.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(map as u64, count, GROUP, 0)?;
        }
        for id in 0..count {
            buffers.push(id);
        }
        buffers.publish();
        Ok(buffers)
    }

    /// Bytes per buffer.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The first `len` bytes of buffer `id`, which a completed recv filled.
    pub fn get(&self, id: u16, len: usize) -> &[u8] {
        let start = usize::from(id % self.count) * self.size;
        &self.memory[start..start + len.min(self.size)]
    }

    /// Hands buffer `id` back to the kernel.
    pub fn give_back(&self, id: u16) {
        self.push(id % self.count);
        self.publish();
    }

    /// Writes buffer `id` into the entry at the tail.
    fn push(&self, id: u16) {
        let tail = self.tail.get();
        let index = usize::from(tail & (self.count - 1));
        let addr = self.memory.as_ptr() as u64 + (usize::from(id) * self.size) as u64;
        // SAFETY: `index` < count, inside the mapping; the kernel reads an
        // entry only once the tail published past it, which happens after
        // this write.
        let entry = unsafe { &mut *self.entries.as_ptr().add(index) };
        entry.set_addr(addr);
        entry.set_len(self.size as u32);
        entry.set_bid(id);
        self.tail.set(tail.wrapping_add(1));
    }

    /// Publishes the tail to the kernel (a release store: the entries
    /// written before it are visible first).
    fn publish(&self) {
        // SAFETY: the tail field lives in the first entry of the mapping,
        // which stays mapped; it is only ever accessed atomically.
        let tail =
            unsafe { AtomicU16::from_ptr(BufRingEntry::tail(self.entries.as_ptr()).cast_mut()) };
        tail.store(self.tail.get(), Ordering::Release);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        let bytes = usize::from(self.count) * std::mem::size_of::<BufRingEntry>();
        // SAFETY: the mapping made in `new`, of that size, unmapped once.
        unsafe { libc::munmap(self.entries.as_ptr().cast(), bytes) };
    }
}
