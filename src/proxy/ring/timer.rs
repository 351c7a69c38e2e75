//! The loop's timers: sleeps ordered by deadline, checked once per loop
//! turn; the nearest deadline bounds how long the turn's wait in the
//! kernel may last. No system call per timer: an idle timer re-armed after
//! bytes moved is one map insert and one removal.

use super::current;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Sleeps waiting on this thread's loop, by (deadline, sequence number).
#[derive(Debug, Default)]
pub(super) struct Timers {
    waiting: BTreeMap<(Instant, u64), Waker>,
    next: u64,
}

impl Timers {
    /// Wakes every sleep whose deadline is `now` or earlier.
    pub fn fire(&mut self, now: Instant) {
        while let Some(entry) = self.waiting.first_entry() {
            if entry.key().0 > now {
                break;
            }
            entry.remove().wake();
        }
    }

    /// How long until the nearest deadline, if any sleep waits.
    pub fn until_next(&self, now: Instant) -> Option<Duration> {
        let (deadline, _) = self.waiting.first_key_value()?.0;
        Some(deadline.saturating_duration_since(now))
    }

    fn insert(&mut self, deadline: Instant, waker: Waker) -> u64 {
        self.next += 1;
        self.waiting.insert((deadline, self.next), waker);
        self.next
    }
}

/// Completes at `deadline`, on the current ring loop.
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep {
        deadline,
        key: None,
    }
}

/// A sleep until a deadline (see [`sleep_until`]).
#[derive(Debug)]
pub struct Sleep {
    deadline: Instant,
    /// Its place among the waiting timers, once polled.
    key: Option<u64>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline;
        if Instant::now() >= deadline {
            self.forget();
            return Poll::Ready(());
        }
        let runtime = current();
        let mut timers = runtime.timers.borrow_mut();
        match self.key {
            Some(seq) => {
                if let Some(waker) = timers.waiting.get_mut(&(deadline, seq)) {
                    if !waker.will_wake(cx.waker()) {
                        *waker = cx.waker().clone();
                    }
                } else {
                    // Fired early (a wake is never lost, but the clock may
                    // have been read just before the deadline): wait again.
                    self.key = Some(timers.insert(deadline, cx.waker().clone()));
                }
            }
            None => self.key = Some(timers.insert(deadline, cx.waker().clone())),
        }
        Poll::Pending
    }
}

impl Sleep {
    /// Takes this sleep out of the waiting timers.
    fn forget(&mut self) {
        if let Some(seq) = self.key.take() {
            super::try_current(|runtime| {
                runtime
                    .timers
                    .borrow_mut()
                    .waiting
                    .remove(&(self.deadline, seq));
            });
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.forget();
    }
}
