//! Per-client connection limits (`max_connections_per_client`,
//! `connection_rate_per_client`, like HAProxy's `src_conn_cur` and
//! `src_conn_rate` stick tables or nginx's `limit_conn`): one bounded
//! table per listener, shared by every worker without a lock. It only
//! decides; the caller accepts a refused client and closes it.
//!
//! The table is a fixed array of slots made at construction, so its memory
//! stays flat however many distinct clients arrive. A client is its
//! address (an IPv4-mapped IPv6 address counts as the IPv4 one) masked to
//! the configured prefix, hashed to 64 bits with a per-table random seed
//! so that nobody can aim collisions; the hash picks a short window of
//! slots (open addressing). How a slot holds a client, its open
//! connections and its token bucket, and why no two workers can race on
//! it, is in `slot.rs`. Two clients whose hashes collide share a slot, and
//! so their limits; the chance is negligible (see `slot.rs`).
//!
//! A slot is reused for another client once it holds nothing a new
//! arrival would need: no open connection, and a bucket full again. When
//! a new client finds neither its slot nor a free one in its window, it
//! is let in untracked ([`Admission::Untracked`]) and the caller counts
//! it. This fails open on purpose: under a flood of distinct addresses
//! the limits are best effort, as with a full HAProxy stick table, rather
//! than refusing clients the table has no room to tell apart.

mod rate;
mod slot;

use crate::config::{ClientLimits, masked};
use slot::{Place, Slot};
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// The per-client state of one listener, shared by all its workers.
pub struct ClientTable {
    slots: Box<[Slot]>,
    seed: RandomState,
    /// Time zero of the buckets, which count nanoseconds from it.
    epoch: Instant,
}

/// What becomes of a new connection.
#[derive(Debug)]
pub enum Admission {
    /// Let in; the permit holds its place in its client's count.
    Admitted(ClientPermit),
    /// Let in without a place: the table had no room for its client.
    Untracked,
    /// Refused: its client has `max_connections` open already.
    OverConnections,
    /// Refused: its client has opened its `rate` of connections already.
    OverRate,
}

impl Admission {
    /// A short name for logs and metrics: `"admitted"`, `"untracked"`,
    /// `"connections"` or `"rate"`.
    pub fn label(&self) -> &'static str {
        match self {
            Admission::Admitted(_) => "admitted",
            Admission::Untracked => "untracked",
            Admission::OverConnections => "connections",
            Admission::OverRate => "rate",
        }
    }
}

/// A connection's place in its client's count; dropping it gives the place
/// back.
pub struct ClientPermit {
    table: Arc<ClientTable>,
    slot: usize,
}

impl Drop for ClientPermit {
    fn drop(&mut self) {
        self.table.slots[self.slot].release();
    }
}

impl fmt::Debug for ClientPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientPermit")
            .field("slot", &self.slot)
            .finish()
    }
}

impl fmt::Debug for ClientTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTable")
            .field("capacity", &self.slots.len())
            .finish()
    }
}

impl ClientTable {
    /// The default number of entries: 65,536, which is 1 MiB.
    pub const DEFAULT_CAPACITY: usize = 65536;

    /// A table of `capacity` entries (rounded up to a power of two, and to
    /// at least the 16 of one window), its memory fixed from now on.
    pub fn new(capacity: usize) -> ClientTable {
        let capacity = capacity.max(slot::WINDOW).next_power_of_two();
        ClientTable {
            slots: (0..capacity).map(|_| Slot::default()).collect(),
            seed: RandomState::new(),
            epoch: Instant::now(),
        }
    }

    /// The bytes the table holds, fixed at construction: 16 per entry.
    pub fn memory(&self) -> usize {
        std::mem::size_of::<ClientTable>() + std::mem::size_of_val(&*self.slots)
    }

    /// Decides on a new connection from `client` at `now` under `limits`.
    /// Connections are checked first, then a token is taken; a refusal of
    /// either kind takes neither a token nor a place.
    pub fn admit(
        self: &Arc<Self>,
        client: IpAddr,
        limits: &ClientLimits,
        now: Instant,
    ) -> Admission {
        let hash = self.seed.hash_one(client_key(client, limits));
        let now =
            u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        let max = limits.max_connections.map_or(u64::MAX, u64::from);
        let slot = match slot::place(&self.slots, hash, max, now) {
            Place::Counted(slot) => slot,
            Place::AtMax => return Admission::OverConnections,
            Place::NoRoom => return Admission::Untracked,
        };
        // From here the permit owns the count: returning without it (a
        // refusal for rate) gives the count back.
        let permit = ClientPermit {
            table: Arc::clone(self),
            slot,
        };
        match &limits.rate {
            Some(rate) if !rate::take_token(&self.slots[slot].tat, rate, now) => {
                Admission::OverRate
            }
            _ => Admission::Admitted(permit),
        }
    }
}

/// What identifies `client` under `limits`: its family and its address
/// masked to the family's prefix.
fn client_key(client: IpAddr, limits: &ClientLimits) -> (u8, u128) {
    let client = client.to_canonical();
    let prefix = if client.is_ipv4() {
        limits.prefix_v4
    } else {
        limits.prefix_v6
    };
    match masked(client, prefix) {
        IpAddr::V4(v4) => (4, u128::from(u32::from(v4))),
        IpAddr::V6(v6) => (6, u128::from(v6)),
    }
}

#[cfg(test)]
mod tests;
