//! The slots of the client table and how a client finds, or claims, its
//! one slot in its window without a lock.
//!
//! A slot's `state` is one `AtomicU64` holding who the slot belongs to and
//! how many connections that client has open:
//!
//! ```text
//!  63                      25  24  23                    0
//! | tag: 39 bits of the hash | P | open connections: 24 bits |
//! ```
//!
//! `0` is an empty slot (tags are never 0). `P` (pending) marks a slot a
//! worker has just claimed for a new client and is checking (see
//! [`place`]); nobody else writes a pending slot. Because the tag and the
//! count live in one word, every change is a single compare-exchange on
//! the whole word:
//!
//! - a connection of client A joins A's slot by `(A, n) → (A, n + 1)`;
//! - another client B reuses an idle slot of A by `(A, 0) → (B, P)`.
//!
//! Both expect the exact word they read, so at most one of them succeeds:
//! a reuse cannot slip in while A is counting a connection, and A cannot
//! count into a slot that has become B's (its exchange fails, it reads
//! again, sees B's tag and looks for itself elsewhere). While a permit
//! holds its count the word is never `(A, 0)`, so no reuse is possible
//! and the permit's decrement can touch only the count.
//!
//! A new client must not end up with two slots, which two workers
//! admitting it at once could otherwise claim (each seeing a different
//! free slot, say as one slot's bucket refills between their reads). So a
//! claim is made in two steps: mark the slot pending with the client's
//! tag, then read the rest of the window; if the tag is anywhere else, let
//! the slot go and start over, else commit it with a count of 1. Every
//! operation on `state` is `SeqCst`, so of two workers that each mark a
//! slot and then read the other's, at least one sees the other's mark (the
//! store-then-load pattern of Dekker's algorithm): at most one commits.
//! A worker that sees its client's tag pending waits for that claim to
//! settle by starting over; after [`ATTEMPTS`] tries it gives up and the
//! connection is let in untracked, so no worker ever waits on another.
//!
//! The tag is the top 39 bits of the 64-bit hash, above the bits that
//! pick the window (in tables of up to 2^25 entries): two clients share a
//! slot, and so their limits, only if their windows overlap and their
//! hashes agree on those 39 bits, about one chance in 5 × 10^11 for two
//! such clients; the per-table random seed means nobody can aim for it.
//!
//! One loss is accepted: a worker reusing A's idle slot reads its count
//! (0) and its bucket (full), then exchanges. Should a connection of A
//! open, take a token and close within those few nanoseconds, the
//! exchange still succeeds and that token is forgotten with A's entry.

use super::rate;
use std::sync::atomic::{AtomicU64, Ordering};

/// Slots a client may sit in, from the one its hash picks on.
pub(super) const WINDOW: usize = 16;
/// How many times a worker starts over on contention before it lets the
/// connection in untracked.
const ATTEMPTS: usize = 64;
const COUNT_BITS: u32 = 24;
/// The most connections a slot can count.
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const PENDING: u64 = 1 << COUNT_BITS;
const TAG_SHIFT: u32 = COUNT_BITS + 1;

/// One client's entry: its tag and open connections, and its bucket.
#[derive(Debug, Default)]
pub(super) struct Slot {
    /// Tag, pending bit and open connections, as in the module docs.
    state: AtomicU64,
    /// The token bucket: see [`rate::take_token`]. Written only by a
    /// worker holding a count on the slot, or by the claimer of a pending
    /// slot (which no one else touches).
    pub(super) tat: AtomicU64,
}

impl Slot {
    /// Gives back one connection counted by [`place`].
    pub(super) fn release(&self) {
        // The caller's count keeps the word from being (tag, 0), so the
        // slot cannot have been reused and the subtraction takes only
        // from the count.
        self.state.fetch_sub(1, Ordering::SeqCst);
    }

    /// Open connections counted in the slot.
    #[cfg(test)]
    pub(super) fn open(&self) -> u64 {
        self.state.load(Ordering::SeqCst) & COUNT_MAX
    }
}

/// Where [`place`] put a connection.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Place {
    /// Counted in the slot at this index.
    Counted(usize),
    /// Not counted: its client has `max` open already.
    AtMax,
    /// Not counted: no room for its client in its window, its slot's count
    /// is saturated, or contention outlasted [`ATTEMPTS`].
    NoRoom,
}

/// What a look for the client's own slot found.
enum Found {
    Counted(usize),
    AtMax,
    Saturated,
    /// Its tag is pending, or its slot was reused under us.
    Busy,
    Absent,
}

/// What a claim of a free slot came to.
enum Claim {
    Committed(usize),
    NoFreeSlot,
    /// Lost an exchange, or met another claim of the same client.
    Busy,
}

/// Counts one more connection of the client hashed to `hash` in its slot
/// of `slots` (a power-of-two length of at least [`WINDOW`]), unless it has
/// `max` open; claims a free slot for a client not in the table. A slot is
/// free when empty, or when its count is 0 and its bucket is full at `now`:
/// it then holds nothing a new arrival would need.
pub(super) fn place(slots: &[Slot], hash: u64, max: u64, now: u64) -> Place {
    let tag = (hash >> TAG_SHIFT).max(1);
    let mask = slots.len() - 1;
    let window: [usize; WINDOW] = std::array::from_fn(|i| (hash as usize).wrapping_add(i) & mask);
    for _ in 0..ATTEMPTS {
        match find(slots, &window, tag, max) {
            Found::Counted(index) => return Place::Counted(index),
            Found::AtMax => return Place::AtMax,
            Found::Saturated => return Place::NoRoom,
            Found::Busy => {}
            Found::Absent => match claim(slots, &window, tag, now) {
                Claim::Committed(index) => return Place::Counted(index),
                Claim::NoFreeSlot => return Place::NoRoom,
                Claim::Busy => {}
            },
        }
        std::hint::spin_loop();
    }
    Place::NoRoom
}

/// Looks for the slot tagged `tag` and counts one more connection in it.
fn find(slots: &[Slot], window: &[usize; WINDOW], tag: u64, max: u64) -> Found {
    let Some((index, mut state)) = window.iter().find_map(|&index| {
        let state = slots[index].state.load(Ordering::SeqCst);
        (state >> TAG_SHIFT == tag).then_some((index, state))
    }) else {
        return Found::Absent;
    };
    // Other connections of the client joining or leaving only move the
    // count: try again on the same slot until the tag changes.
    loop {
        if state >> TAG_SHIFT != tag || state & PENDING != 0 {
            return Found::Busy;
        }
        let open = state & COUNT_MAX;
        if open >= max {
            return Found::AtMax;
        }
        if open == COUNT_MAX {
            return Found::Saturated;
        }
        match slots[index].state.compare_exchange_weak(
            state,
            state + 1,
            Ordering::SeqCst,
            Ordering::SeqCst,
        ) {
            Ok(_) => return Found::Counted(index),
            Err(seen) => state = seen,
        }
    }
}

/// Claims the first free slot of the window for `tag`, with a count of 1.
fn claim(slots: &[Slot], window: &[usize; WINDOW], tag: u64, now: u64) -> Claim {
    let Some((index, seen)) = window.iter().find_map(|&index| {
        let slot = &slots[index];
        let state = slot.state.load(Ordering::SeqCst);
        let idle = state & (PENDING | COUNT_MAX) == 0 && rate::is_full(&slot.tat, now);
        (state == 0 || idle).then_some((index, state))
    }) else {
        return Claim::NoFreeSlot;
    };
    let slot = &slots[index];
    let pending = tag << TAG_SHIFT | PENDING;
    if slot
        .state
        .compare_exchange(seen, pending, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        return Claim::Busy;
    }
    // The slot is ours alone while pending. Its last client's workers
    // wrote the bucket only while holding a count, which the exchange saw
    // at 0: start the new client with a full bucket.
    slot.tat.store(0, Ordering::Release);
    let elsewhere = window.iter().any(|&other| {
        other != index && slots[other].state.load(Ordering::SeqCst) >> TAG_SHIFT == tag
    });
    if elsewhere {
        // Another worker holds or is claiming this client's slot: let ours
        // go (its old client, idle with a full bucket, loses nothing it
        // needs) and join or wait for that one.
        slot.state.store(0, Ordering::SeqCst);
        return Claim::Busy;
    }
    slot.state.store(tag << TAG_SHIFT | 1, Ordering::SeqCst);
    Claim::Committed(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(len: usize) -> Vec<Slot> {
        (0..len).map(|_| Slot::default()).collect()
    }

    /// A hash for window start `index` and tag `tag`.
    fn hash(index: u64, tag: u64) -> u64 {
        tag << TAG_SHIFT | index
    }

    #[test]
    fn it_should_claim_the_first_slot_of_the_window_then_join_it() {
        let slots = table(32);
        assert_eq!(place(&slots, hash(5, 7), 10, 0), Place::Counted(5));
        assert_eq!(place(&slots, hash(5, 7), 10, 0), Place::Counted(5));
        assert_eq!(slots[5].open(), 2);
        assert_eq!(place(&slots, hash(5, 8), 10, 0), Place::Counted(6));
    }

    #[test]
    fn it_should_wrap_the_window_around_the_end_of_the_table() {
        let slots = table(16);
        for tag in 1..=16 {
            assert_eq!(
                place(&slots, hash(15, tag), 10, 0),
                Place::Counted((15 + tag as usize - 1) % 16)
            );
        }
        assert_eq!(place(&slots, hash(15, 17), 10, 0), Place::NoRoom);
    }

    #[test]
    fn it_should_refuse_at_max_without_counting() {
        let slots = table(16);
        assert_eq!(place(&slots, hash(0, 3), 1, 0), Place::Counted(0));
        assert_eq!(place(&slots, hash(0, 3), 1, 0), Place::AtMax);
        assert_eq!(slots[0].open(), 1);
    }

    #[test]
    fn it_should_not_reuse_a_slot_whose_bucket_is_still_paying_back() {
        let slots = table(16);
        assert_eq!(place(&slots, hash(0, 3), 10, 0), Place::Counted(0));
        slots[0].release();
        slots[0].tat.store(100, Ordering::Relaxed);
        assert_eq!(place(&slots, hash(0, 4), 10, 99), Place::Counted(1));
        assert_eq!(place(&slots, hash(0, 5), 10, 100), Place::Counted(0));
        assert_eq!(slots[0].tat.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn it_should_wait_for_a_pending_claim_of_its_own_client_then_let_it_in_untracked() {
        let slots = table(16);
        slots[3]
            .state
            .store(9 << TAG_SHIFT | PENDING, Ordering::Relaxed);
        assert_eq!(place(&slots, hash(0, 9), 10, 0), Place::NoRoom);
        assert_eq!(slots.iter().map(Slot::open).sum::<u64>(), 0);
    }

    #[test]
    fn it_should_let_its_claim_go_when_its_client_is_claimed_elsewhere() {
        let slots = table(16);
        // Slot 0 is taken by another client with a connection open; slot
        // 2 already holds client 9 (as if another worker just committed
        // it while we looked): the claim of slot 1 must be let go.
        slots[0].state.store(4 << TAG_SHIFT | 1, Ordering::Relaxed);
        slots[2].state.store(9 << TAG_SHIFT | 1, Ordering::Relaxed);
        let window = std::array::from_fn(|i| i);
        assert!(matches!(claim(&slots, &window, 9, 0), Claim::Busy));
        assert_eq!(slots[1].state.load(Ordering::Relaxed), 0);
        assert_eq!(place(&slots, hash(0, 9), 10, 0), Place::Counted(2));
        assert_eq!(slots[2].open(), 2);
    }

    #[test]
    fn it_should_let_a_saturated_count_in_untracked() {
        let slots = table(16);
        slots[0]
            .state
            .store(2 << TAG_SHIFT | COUNT_MAX, Ordering::Relaxed);
        assert_eq!(place(&slots, hash(0, 2), u64::MAX, 0), Place::NoRoom);
    }
}
