//! How many clients may be open at once, given the descriptor limit, and
//! the accept loops' pause while that many are.
//!
//! Each proxied connection holds two descriptors (client and upstream). A
//! client accepted when the upstream socket cannot be opened is only reset,
//! so, like HAProxy's global `maxconn`, l4mesh takes a client only when it
//! could serve it: at capacity the accept loops stop accepting and clients
//! wait in the listen backlog until a connection closes. The budget is one
//! counter for the whole process (descriptors are), shared by every worker.
//!
//! Splice pipes are not counted per connection: a worker takes a pipe only
//! while a chunk is in flight, within its own pipe budget, and copies when
//! it has none, so the descriptors that budget can hold are set aside from
//! the capacity once.

use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Descriptors set aside beyond those open at start, for what the control
/// plane opens later: the admin listener and its clients, registry
/// clients, health probes, the config watch, sockets a reload binds, and
/// upstream sockets still closing after their connection ended.
const CONTROL_RESERVE: u64 = 32;

/// Descriptors each worker opens for its event loop (epoll, its waker, an
/// io_uring ring and its eventfd), not yet open when the capacity is
/// computed.
const PER_WORKER: u64 = 4;

/// At-capacity stretches closer together than this are one episode, logged
/// once.
const EPISODE_GAP: Duration = Duration::from_secs(10);

/// How the capacity was worked out, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    /// The soft `RLIMIT_NOFILE`.
    pub limit: u64,
    /// Descriptors set aside: open at start, the workers' own, the control
    /// plane's reserve.
    pub reserved: u64,
    /// Descriptors the workers' splice pipes may hold at once.
    pub pipes: u64,
    /// Clients that may be open at once.
    pub capacity: usize,
}

impl Sizing {
    /// The capacity for a descriptor `limit` with `open` descriptors open
    /// now, `workers` workers still to start, and room for `pipe_fds`
    /// descriptors of splice pipes. At least one client, so that a limit
    /// too small for the reserve still serves (and says so).
    pub fn new(limit: u64, open: u64, workers: usize, pipe_fds: u64) -> Sizing {
        let reserved = open + PER_WORKER * workers as u64 + CONTROL_RESERVE;
        let spare = limit.saturating_sub(reserved).saturating_sub(pipe_fds);
        let capacity = usize::try_from(spare / 2).unwrap_or(usize::MAX).max(1);
        Sizing {
            limit,
            reserved,
            pipes: pipe_fds,
            capacity,
        }
    }
}

/// Free slots under which the budget counts as tight ([`Budget::is_tight`]).
const TIGHT: usize = 64;

/// The process-wide count of open clients against the capacity.
#[derive(Debug)]
pub struct Budget {
    sizing: Sizing,
    used: AtomicUsize,
    /// Accept loops waiting for room: a release wakes them only if some are.
    waiting: AtomicUsize,
    room: Notify,
}

impl Budget {
    /// A budget of `sizing.capacity` clients, none open yet.
    pub fn new(sizing: Sizing) -> Arc<Budget> {
        Arc::new(Budget {
            sizing,
            used: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            room: Notify::new(),
        })
    }

    /// Whether one more client could be served now.
    pub fn has_room(&self) -> bool {
        self.used.load(Ordering::SeqCst) < self.sizing.capacity
    }

    /// Whether fewer than [`TIGHT`] clients more would fit: then an accept
    /// armed ahead of its client could hold a slot that another listener
    /// socket's waiting client needs (see `ring_accept.rs`).
    pub fn is_tight(&self) -> bool {
        self.used.load(Ordering::SeqCst) + TIGHT > self.sizing.capacity
    }

    /// A slot for one client, held until the slot is dropped; `None` at
    /// capacity.
    pub fn take(self: &Arc<Budget>) -> Option<Slot> {
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                (used < self.sizing.capacity).then_some(used + 1)
            })
            .ok()
            .map(|_| Slot(Arc::clone(self)))
    }

    /// Returns once there is room for a client, counting the wait as time
    /// at capacity (and logging the start of an episode).
    pub async fn wait_for_room(&self) {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        PAUSES.start(&self.sizing);
        loop {
            let mut notified = pin!(self.room.notified());
            // Registered before the check, so a release after the check
            // wakes it (the release reads `waiting` after freeing its slot).
            notified.as_mut().enable();
            if self.has_room() {
                break;
            }
            notified.await;
        }
        PAUSES.end();
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }

    fn release(&self) {
        self.used.fetch_sub(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.room.notify_waiters();
        }
    }
}

/// One client's place in the [`Budget`]; dropping it frees the place.
#[derive(Debug)]
pub struct Slot(Arc<Budget>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// Seconds accept loops have spent waiting at capacity, in this process,
/// including a wait going on now.
pub fn accept_paused_seconds() -> f64 {
    PAUSES.total().as_secs_f64()
}

/// Time with at least one accept loop waiting for room, process-wide (as
/// descriptors are). Touched only when a loop starts or stops waiting.
static PAUSES: PauseClock = PauseClock {
    state: Mutex::new(PauseState {
        waiting: 0,
        since: None,
        total: Duration::ZERO,
        last_end: None,
    }),
};

struct PauseClock {
    state: Mutex<PauseState>,
}

struct PauseState {
    waiting: usize,
    since: Option<Instant>,
    total: Duration,
    last_end: Option<Instant>,
}

impl PauseClock {
    fn start(&self, sizing: &Sizing) {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.waiting += 1;
        if state.waiting > 1 {
            return;
        }
        state.since = Some(now);
        // A stretch that starts soon after the last one ended (one client
        // leaving lets one more in) is the same episode.
        let new_episode = state
            .last_end
            .is_none_or(|end| now.duration_since(end) >= EPISODE_GAP);
        drop(state);
        if new_episode {
            log::warn!(
                "at capacity: {} clients open, as many as the descriptor limit of {} allows \
                 ({} reserved for listeners, event loops and the control plane, {} for splice \
                 pipes, two per client); new clients wait in the listen backlog until \
                 connections close; raise `ulimit -n` to serve more at once",
                sizing.capacity,
                sizing.limit,
                sizing.reserved,
                sizing.pipes
            );
        }
    }

    fn end(&self) {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.waiting = state.waiting.saturating_sub(1);
        if state.waiting == 0
            && let Some(since) = state.since.take()
        {
            state.total += now.duration_since(since);
            state.last_end = Some(now);
        }
    }

    fn total(&self) -> Duration {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.total + state.since.map_or(Duration::ZERO, |since| since.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_should_give_two_descriptors_a_client_after_the_reserve_and_the_pipes() {
        let sizing = Sizing::new(1024, 20, 2, 256);
        assert_eq!(sizing.reserved, 20 + 8 + CONTROL_RESERVE);
        assert_eq!(sizing.capacity, (1024 - 60 - 256) / 2);
        // A limit below the reserve still serves one client at a time.
        assert_eq!(Sizing::new(48, 40, 2, 12).capacity, 1);
    }

    #[test]
    fn it_should_hand_out_slots_up_to_capacity_and_take_them_back() {
        let budget = Budget::new(Sizing::new(100, 0, 0, 0));
        let capacity = budget.sizing.capacity;
        let slots: Vec<Slot> = (0..capacity).map_while(|_| budget.take()).collect();
        assert_eq!(slots.len(), capacity);
        assert!(!budget.has_room());
        assert!(budget.take().is_none());
        drop(slots);
        assert!(budget.has_room());
    }

    #[test]
    fn it_should_wake_a_waiting_loop_when_a_client_leaves_and_count_the_wait() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let budget = Budget::new(Sizing::new(CONTROL_RESERVE + 2, 0, 0, 0));
        assert_eq!(budget.sizing.capacity, 1);
        let slot = budget.take().unwrap();
        let before = accept_paused_seconds();
        // Released from another thread, as a client on another worker is,
        // 50 ms after the loop started waiting.
        let waiter = Arc::clone(&budget);
        let releaser = std::thread::spawn(move || {
            while waiter.waiting.load(Ordering::SeqCst) == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(50));
            drop(slot);
        });
        runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), budget.wait_for_room())
                .await
                .expect("woken when the slot was freed");
        });
        releaser.join().unwrap();
        assert!(budget.take().is_some());
        assert!(accept_paused_seconds() - before >= 0.05);
    }
}
