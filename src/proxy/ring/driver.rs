//! The worker's ring: setting it up (and saying what the kernel lacks),
//! handing it submission entries, and routing each completion to the op
//! that waits for it.
//!
//! Every op in flight has a slot in a slab; its index is the entry's
//! `user_data`. A slot holds the waker of the task awaiting it, then the
//! result. An op whose future is dropped before the kernel answers becomes
//! an orphan: its slot keeps whatever the kernel may still read or write
//! (a buffer, a socket address, a timespec) until the completion arrives,
//! and an `ASYNC_CANCEL` asks the kernel to finish it early. A buffer taken
//! from the provided-buffer ring by an orphaned recv goes back to the ring.

#![allow(unsafe_code)]

use super::buffers::BufRing;
use super::slab::Slab;
use io_uring::{IoUring, Probe, cqueue, opcode, squeue, types};
use std::any::Any;
use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::task::Waker;
use std::time::Duration;

/// `user_data` of entries whose completion nobody waits for (a close, a
/// cancel, a linked timeout).
pub(super) const IGNORED: u64 = u64::MAX;

/// Submission and completion queue sizes: room for a loop turn's worth of
/// ops of many connections before the queue must be flushed early.
const ENTRIES: u32 = 1024;

/// What the kernel offers that the loop uses.
#[derive(Debug, Clone, Copy)]
pub struct Features {
    /// `SINGLE_ISSUER | DEFER_TASKRUN`: completions are posted only when
    /// this thread enters the kernel, never by interrupting it.
    pub defer_taskrun: bool,
    /// The ring's own `SETSOCKOPT` (kernel 6.7), for `TCP_NODELAY` linked
    /// before the connect instead of a system call.
    pub setsockopt: bool,
}

/// The ops the loop cannot do without, by name.
const NEEDED: [(u8, &str); 8] = [
    (opcode::Accept::CODE, "ACCEPT"),
    (opcode::Connect::CODE, "CONNECT"),
    (opcode::LinkTimeout::CODE, "LINK_TIMEOUT"),
    (opcode::PollAdd::CODE, "POLL_ADD"),
    (opcode::Recv::CODE, "RECV"),
    (opcode::Send::CODE, "SEND"),
    (opcode::Shutdown::CODE, "SHUTDOWN"),
    (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
];

/// Whether the ring's `SETSOCKOPT` command works (kernel 6.7; older ones
/// know `URING_CMD` but not this command): sets `TCP_NODELAY` on a
/// throwaway socket through a fresh ring, before any other op is queued.
fn sets_nodelay(ring: &IoUring) -> bool {
    let Ok(socket) = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
    else {
        return false;
    };
    let one: libc::c_int = 1;
    let entry = opcode::SetSockOpt::new(
        types::Fd(std::os::fd::AsRawFd::as_raw_fd(&socket)),
        libc::IPPROTO_TCP as u32,
        libc::TCP_NODELAY as u32,
        (&one as *const libc::c_int).cast(),
        std::mem::size_of::<libc::c_int>() as u32,
    )
    .build()
    .user_data(0);
    // SAFETY: the entry points at `one`, which lives until the wait below
    // has seen the completion (or the ring is dropped with the function's
    // caller failing: then nothing reads it).
    let pushed = unsafe { ring.submission_shared().push(&entry) }.is_ok();
    if !pushed || ring.submit_and_wait(1).is_err() {
        return false;
    }
    // SAFETY: this thread is the ring's only user while it is set up.
    let done = unsafe { ring.completion_shared() }.next();
    done.is_some_and(|cqe| cqe.result() == 0) && socket.tcp_nodelay().unwrap_or(false)
}

/// Where one op stands.
enum Slot {
    /// In flight; the waker of the task that awaits it, once polled.
    Waiting(Option<Waker>),
    /// Completed: the result and the completion's flags.
    Done(i32, u32),
    /// Dropped before it completed: what the kernel may still use, and
    /// whether its results are descriptors to close (an accept's).
    Orphan(#[allow(dead_code)] Box<dyn Any>, bool),
}

/// One worker's ring and its ops in flight. Owned by the worker thread.
pub struct Driver {
    ring: RefCell<IoUring>,
    ops: RefCell<Slab<Slot>>,
    /// What the kernel offers.
    pub features: Features,
    /// The provided buffers recvs read into (buffer group 0).
    pub buffers: BufRing,
    /// Entries pushed since the last enter: whether an enter has work.
    pending: Cell<usize>,
}

impl Driver {
    /// Sets up a ring with `SINGLE_ISSUER | DEFER_TASKRUN` where the kernel
    /// has them (6.1), a plain one otherwise, and a provided-buffer ring of
    /// `buffers` × `buffer_size` bytes. Fails where io_uring is refused
    /// (seccomp) or an op the loop needs is missing, naming it.
    pub fn new(buffers: u16, buffer_size: usize) -> io::Result<Driver> {
        let (ring, defer_taskrun) = match IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_submit_all()
            .build(ENTRIES)
        {
            Ok(ring) => (ring, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                (IoUring::builder().build(ENTRIES)?, false)
            }
            Err(e) => return Err(e),
        };
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        let missing: Vec<&str> = NEEDED
            .iter()
            .filter(|(code, _)| !probe.is_supported(*code))
            .map(|(_, name)| *name)
            .collect();
        if !missing.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("the kernel's io_uring lacks {}", missing.join(", ")),
            ));
        }
        if !ring.params().is_feature_ext_arg() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the kernel's io_uring lacks EXT_ARG (timed waits, 5.11)",
            ));
        }
        let features = Features {
            defer_taskrun,
            setsockopt: probe.is_supported(opcode::SetSockOpt::CODE) && sets_nodelay(&ring),
        };
        let buffers = BufRing::new(&ring, buffers, buffer_size)?;
        Ok(Driver {
            ring: RefCell::new(ring),
            ops: RefCell::new(Slab::new()),
            features,
            buffers,
            pending: Cell::new(0),
        })
    }

    /// Queues `entries` (linked ones stay together) for the next enter.
    ///
    /// # Safety
    /// Whatever the entries point at (buffers, addresses, timespecs) must
    /// stay valid until each completes: owned by the op's future, or by its
    /// orphaned slot once that future is dropped.
    pub(super) unsafe fn push(&self, entries: &[squeue::Entry]) {
        loop {
            let mut ring = self.ring.borrow_mut();
            // SAFETY: the caller keeps what the entries point at alive.
            if unsafe { ring.submission().push_multiple(entries) }.is_ok() {
                break;
            }
            // Full: hand the queued entries to the kernel now.
            let submitted = ring.submit();
            drop(ring);
            if let Err(e) = submitted {
                // The kernel refuses more (EBUSY: its completions have
                // nowhere to go): take the completions, which makes room,
                // and try again rather than spin on the same refusal.
                if crate::log_limit::RESOURCE_ERRORS.allow().is_some() {
                    log::warn!("io_uring submit with a full queue failed: {e}; reaping first");
                }
                self.reap();
            }
        }
        self.pending.set(self.pending.get() + entries.len());
    }

    /// A slot for a new single-shot op; its index is the `user_data`.
    pub(super) fn register(&self) -> u64 {
        self.ops.borrow_mut().insert(Slot::Waiting(None)) as u64
    }

    /// The result of single-shot op `id` if it completed (freeing its
    /// slot), else notes `waker` to wake when it does.
    pub(super) fn poll_op(&self, id: u64, waker: &Waker) -> Option<(i32, u32)> {
        let mut ops = self.ops.borrow_mut();
        match ops.get_mut(id as usize) {
            Some(Slot::Done(result, flags)) => {
                let done = (*result, *flags);
                ops.remove(id as usize);
                Some(done)
            }
            Some(Slot::Waiting(slot_waker)) => {
                if !slot_waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
                    *slot_waker = Some(waker.clone());
                }
                None
            }
            // Not this op's slot: a bug in the loop, reported as an error.
            _ => Some((-libc::EBADSLT, 0)),
        }
    }

    /// Op `id`'s future is gone: keep `keep` (what the kernel may still
    /// use) until its completion, and ask the kernel to cancel it. A
    /// completed op's slot is just freed, undoing what it did (see
    /// [`Driver::discard`]).
    pub(super) fn abandon(&self, id: u64, keep: Box<dyn Any>, fds: bool) {
        let mut ops = self.ops.borrow_mut();
        match ops.get_mut(id as usize) {
            Some(Slot::Done(result, flags)) => {
                let (result, flags) = (*result, *flags);
                ops.remove(id as usize);
                self.discard(result, flags, fds);
            }
            Some(slot @ Slot::Waiting(_)) => {
                *slot = Slot::Orphan(keep, fds);
                drop(ops);
                self.cancel(id);
            }
            _ => {}
        }
    }

    /// Asks the kernel to end op `id` early (it completes with `ECANCELED`).
    pub(super) fn cancel(&self, id: u64) {
        let entry = opcode::AsyncCancel::new(id).build().user_data(IGNORED);
        // SAFETY: a cancel points at nothing.
        unsafe { self.push(&[entry]) };
    }

    /// Undoes what an unwanted completion did: a provided buffer it took
    /// goes back to the ring; with `fds`, a descriptor it made is closed.
    fn discard(&self, result: i32, flags: u32, fds: bool) {
        if let Some(id) = cqueue::buffer_select(flags) {
            self.buffers.give_back(id);
        }
        if fds && result >= 0 {
            // SAFETY: an accept's result is a new descriptor that nothing
            // else owns: nobody took this completion.
            drop(unsafe { OwnedFd::from_raw_fd(result) });
        }
    }

    /// Ops in flight, orphans included.
    pub fn in_flight(&self) -> usize {
        self.ops.borrow().len()
    }

    /// Whether entries wait to be submitted.
    pub fn has_pending(&self) -> bool {
        self.pending.get() > 0
    }

    /// Submits what is queued and, unless `wait` is `Some(ZERO)`, waits up
    /// to `wait` (or forever) for a completion; then routes every
    /// completion to its op. Returns how many completions were handled.
    pub fn turn(&self, wait: Option<Duration>) -> io::Result<usize> {
        {
            let ring = self.ring.borrow();
            let submitter = ring.submitter();
            self.pending.set(0);
            // A zero timeout still carries GETEVENTS: with DEFER_TASKRUN
            // completions are posted only by such an enter.
            let result = match wait {
                Some(timeout) => {
                    let ts = types::Timespec::from(timeout);
                    let args = types::SubmitArgs::new().timespec(&ts);
                    submitter.submit_with_args(1, &args)
                }
                None => submitter.submit_and_wait(1),
            };
            match result {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self.reap())
    }

    /// Routes every completion in the queue to its op.
    fn reap(&self) -> usize {
        let mut ring = self.ring.borrow_mut();
        let mut ops = self.ops.borrow_mut();
        let mut handled = 0;
        for cqe in ring.completion() {
            handled += 1;
            let id = cqe.user_data();
            if id == IGNORED {
                continue;
            }
            let (result, flags) = (cqe.result(), cqe.flags());
            let Some(slot) = ops.get_mut(id as usize) else {
                continue;
            };
            match slot {
                Slot::Waiting(waker) => {
                    let waker = waker.take();
                    *slot = Slot::Done(result, flags);
                    if let Some(waker) = waker {
                        waker.wake();
                    }
                }
                Slot::Orphan(_, fds) => {
                    self.discard(result, flags, *fds);
                    ops.remove(id as usize);
                }
                // A second completion for a finished single-shot op cannot
                // happen; nothing to do.
                Slot::Done(..) => {}
            }
        }
        handled
    }
}
