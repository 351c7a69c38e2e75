//! A worker's splice pipes: made on demand, resized where the kernel
//! allows, reused across connections, and bounded in number (two
//! descriptors each), so an idle connection holds none.

use rustix::param::page_size;
use rustix::pipe::{PipeFlags, fcntl_getpipe_size, fcntl_setpipe_size, pipe_with};
use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::OwnedFd;

/// One pipe: its two ends, its capacity and its slot count.
#[derive(Debug)]
pub(super) struct Pipe {
    pub(super) read: OwnedFd,
    pub(super) write: OwnedFd,
    pub(super) capacity: usize,
    /// How many buffers (one page each at most) the pipe holds: a fill of
    /// fewer bytes than this cannot have stopped on a full pipe.
    pub(super) slots: usize,
}

impl Pipe {
    /// A non-blocking pipe resized to `capacity` bytes where the kernel allows.
    fn new(capacity: usize) -> io::Result<Pipe> {
        let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        // The kernel rounds up to pages and refuses sizes above
        // /proc/sys/fs/pipe-max-size (or an unprivileged user's page quota);
        // then the pipe keeps what it was made with, which past that quota
        // is as little as one or two pages: ask. A pipe whose size cannot be
        // read counts as one page, so no fill is ever taken for short.
        let capacity = fcntl_setpipe_size(&write, capacity)
            .or_else(|_| fcntl_getpipe_size(&write))
            .unwrap_or_else(|_| page_size());
        Ok(Pipe {
            read,
            write,
            capacity,
            slots: capacity / page_size(),
        })
    }
}

/// A worker's pipes: idle ones reused across connections, and a budget of
/// how many may be open at once (two descriptors each). Owned by one thread.
#[derive(Debug)]
pub struct PipePool {
    capacity: usize,
    keep: usize,
    limit: usize,
    open: Cell<usize>,
    free: RefCell<Vec<Pipe>>,
}

impl PipePool {
    /// A pool of `capacity`-byte pipes keeping at most `keep` idle ones and
    /// at most `limit` open in all.
    pub fn new(capacity: usize, keep: usize, limit: usize) -> PipePool {
        PipePool {
            capacity,
            keep,
            limit,
            open: Cell::new(0),
            free: RefCell::new(Vec::new()),
        }
    }

    /// An empty pipe, or the error (the budget is spent, or EMFILE) that
    /// makes the caller copy instead.
    pub(super) fn take(&self) -> io::Result<Pipe> {
        if let Some(pipe) = self.free.borrow_mut().pop() {
            return Ok(pipe);
        }
        if self.open.get() >= self.limit {
            let why = format!("all {} pipes of this worker are in use", self.limit);
            return Err(io::Error::other(why));
        }
        let pipe = Pipe::new(self.capacity)?;
        self.open.set(self.open.get() + 1);
        Ok(pipe)
    }

    /// Returns a pipe known to be empty; beyond `keep` idle ones it is closed.
    pub(super) fn give_back(&self, pipe: Pipe) {
        let mut free = self.free.borrow_mut();
        if free.len() < self.keep {
            free.push(pipe);
        } else {
            self.forget(pipe);
        }
    }

    /// Closes a pipe (one that may hold bytes, or one too many).
    pub(super) fn forget(&self, pipe: Pipe) {
        drop(pipe);
        self.open.set(self.open.get().saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_should_reuse_pipes_and_size_them() {
        // 256 KiB is under the default pipe-max-size (1 MiB) and four times
        // the kernel's default pipe size, so only a resize gives it.
        let max: usize = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(max >= 256 * 1024, "pipe-max-size {max} is below 256 KiB");
        let pool = PipePool::new(256 * 1024, 2, 8);
        let (a, b) = (pool.take().unwrap(), pool.take().unwrap());
        assert_eq!(fcntl_getpipe_size(&a.write).unwrap(), 256 * 1024);
        assert_eq!(
            (a.capacity, a.slots),
            (256 * 1024, 256 * 1024 / page_size())
        );
        pool.give_back(a);
        pool.give_back(b);
        assert_eq!(pool.free.borrow().len(), 2);
        let c = pool.take().unwrap();
        pool.give_back(c);
        pool.give_back(pool.take().unwrap());
        pool.give_back(Pipe::new(65536).unwrap());
        assert_eq!(pool.free.borrow().len(), 2);
    }

    #[test]
    fn it_should_record_the_size_the_kernel_gave_when_it_refuses_the_one_asked_for() {
        // Past pipe-max-size an unprivileged process is refused (and keeps
        // what the pipe had); root may go past it. Either way the pipe's
        // recorded capacity is the one the kernel reports.
        let max: usize = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let pipe = Pipe::new(max * 2).unwrap();
        assert_eq!(pipe.capacity, fcntl_getpipe_size(&pipe.write).unwrap());
        assert_eq!(pipe.slots, pipe.capacity / page_size());
    }

    #[test]
    fn it_should_refuse_pipes_beyond_its_budget() {
        let pool = PipePool::new(65536, 0, 1);
        let one = pool.take().unwrap();
        assert!(pool.take().unwrap_err().to_string().contains("all 1 pipes"));
        pool.give_back(one);
        assert!(pool.take().is_ok());
    }
}
