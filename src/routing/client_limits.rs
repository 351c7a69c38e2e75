//! Per-client connection limits (`max_connections_per_client`,
//! `connection_rate_per_client`): one bounded table per listener, shared by
//! every worker without a lock.
//!
//! The table is a fixed array of slots, so its memory never grows however
//! many distinct clients arrive. A client (its address masked to the
//! configured prefix) hashes, with a per-table random seed so that nobody
//! can aim collisions, to a 16-slot window. Each slot is two atomics:
//!
//! - `state`: the client's 40-bit tag and its open connections (24 bits) in
//!   one word. Tag and count change together in one compare-exchange, so a
//!   slot is never reused for another client while a connection of its
//!   client is counted: reuse needs the count at 0, and an admit of the old
//!   client that raced it fails its compare-exchange, reads the new tag, and
//!   looks elsewhere.
//! - `tat`: the token bucket as GCRA's "theoretical arrival time" (nginx's
//!   and redis-cell's algorithm), nanoseconds since the table was made.
//!
//! A slot is free when it was never used, or when its count is 0 and its
//! bucket is full again: it then holds nothing a new arrival would need.
//! When a client finds neither its slot nor a free one in its window, it
//! is admitted untracked and the caller counts it: under a flood of
//! distinct addresses the limits are best effort, like a full HAProxy stick
//! table, rather than refusing clients the table cannot tell apart. Two
//! connections of one new client claiming slots at the same instant can,
//! rarely, get two slots and so up to twice its limit for a moment.

use crate::config::{ClientLimits, Rate};
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Slots a client may sit in, from its hash on.
const WINDOW: usize = 16;
/// Bits of `state` that count open connections.
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

/// The per-client state of one listener.
#[derive(Debug)]
pub struct ClientTable {
    slots: Box<[Slot]>,
    seed: RandomState,
    epoch: Instant,
}

#[derive(Debug, Default)]
struct Slot {
    state: AtomicU64,
    tat: AtomicU64,
}

/// What becomes of a new connection.
#[derive(Debug)]
pub enum Admission {
    /// Admitted; the permit holds its place under the limits.
    Admitted(ClientPermit),
    /// Admitted without a place: the table had no room in the client's
    /// window.
    Untracked,
    /// The client has `max_connections_per_client` open already.
    OverConnections,
    /// The client opened its `connection_rate_per_client` already.
    OverRate,
}

/// A connection's place in its client's count; dropping it frees the place.
#[derive(Debug)]
pub struct ClientPermit {
    table: Arc<ClientTable>,
    slot: usize,
}

impl Drop for ClientPermit {
    fn drop(&mut self) {
        // The count is at least this permit's 1, so the slot cannot have
        // been reused and the subtraction cannot reach the tag.
        self.table.slots[self.slot]
            .state
            .fetch_sub(1, Ordering::AcqRel);
    }
}

impl ClientTable {
    /// The default number of slots: 65,536 (1 MiB).
    pub const DEFAULT_CAPACITY: usize = 65536;

    /// A table of `capacity` slots (rounded up to a power of two, at least
    /// the window), its memory fixed from now on.
    pub fn new(capacity: usize) -> ClientTable {
        let capacity = capacity.max(WINDOW).next_power_of_two();
        ClientTable {
            slots: (0..capacity).map(|_| Slot::default()).collect(),
            seed: RandomState::new(),
            epoch: Instant::now(),
        }
    }

    /// The bytes the table's slots hold: fixed at construction.
    pub fn memory(&self) -> usize {
        std::mem::size_of_val(&*self.slots)
    }

    /// Decides on a new connection from `client` at `now` under `limits`.
    pub fn admit(
        self: &Arc<Self>,
        client: IpAddr,
        limits: &ClientLimits,
        now: Instant,
    ) -> Admission {
        let hash = self.seed.hash_one(key(client, limits));
        let tag = (hash >> COUNT_BITS).max(1);
        let now = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        let max = limits
            .max_connections
            .map_or(COUNT_MASK, |m| u64::from(m).min(COUNT_MASK));
        let Some(slot) = self.place(hash, tag, max, now) else {
            return Admission::Untracked;
        };
        let Some(index) = slot else {
            return Admission::OverConnections;
        };
        let permit = ClientPermit {
            table: Arc::clone(self),
            slot: index,
        };
        match limits.rate {
            Some(rate) if !take_token(&self.slots[index].tat, rate, now) => Admission::OverRate,
            _ => Admission::Admitted(permit),
        }
    }

    /// Counts one more connection of the client tagged `tag` in its slot:
    /// `None` when its window has no room, `Some(None)` when it is at
    /// `max`, else its slot's index.
    fn place(&self, hash: u64, tag: u64, max: u64, now: u64) -> Option<Option<usize>> {
        let mask = self.slots.len() - 1;
        let window = (0..WINDOW).map(|i| (hash as usize).wrapping_add(i) & mask);
        'retry: loop {
            for i in window.clone() {
                let state = self.slots[i].state.load(Ordering::Acquire);
                if state >> COUNT_BITS != tag {
                    continue;
                }
                if state & COUNT_MASK >= max {
                    return Some(None);
                }
                if self.slots[i]
                    .state
                    .compare_exchange(state, state + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return Some(Some(i));
                }
                continue 'retry;
            }
            for i in window.clone() {
                let slot = &self.slots[i];
                let state = slot.state.load(Ordering::Acquire);
                let free = state == 0
                    || (state & COUNT_MASK == 0 && slot.tat.load(Ordering::Acquire) <= now);
                if !free {
                    continue;
                }
                if slot
                    .state
                    .compare_exchange(
                        state,
                        tag << COUNT_BITS | 1,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_ok()
                {
                    // A reused slot's bucket is full (its time has passed):
                    // as good as new for the new client.
                    return Some(Some(i));
                }
                continue 'retry;
            }
            return None;
        }
    }
}

/// The client's address masked to its prefix, with its family.
fn key(client: IpAddr, limits: &ClientLimits) -> (u8, u128) {
    match client.to_canonical() {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let masked = match limits.prefix_v4 {
                0 => 0,
                n => bits & (u32::MAX << (32 - u32::from(n.min(32)))),
            };
            (4, u128::from(masked))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let masked = match limits.prefix_v6 {
                0 => 0,
                n => bits & (u128::MAX << (128 - u32::from(n.min(128)))),
            };
            (6, masked)
        }
    }
}

/// Takes one token of `rate` from the bucket `tat` at `now` (GCRA): the
/// arrival's theoretical time moves one interval on, and the arrival is
/// allowed if that is at most `burst` intervals ahead of now. A refusal
/// takes nothing.
fn take_token(tat: &AtomicU64, rate: Rate, now: u64) -> bool {
    let interval = (rate.per.as_nanos() as u64 / u64::from(rate.count.max(1))).max(1);
    let tolerance = interval.saturating_mul(u64::from(rate.burst.max(1)));
    let mut current = tat.load(Ordering::Acquire);
    loop {
        let next = current.max(now).saturating_add(interval);
        if next - now > tolerance {
            return false;
        }
        match tat.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return true,
            Err(seen) => current = seen,
        }
    }
}

#[cfg(test)]
mod tests;
