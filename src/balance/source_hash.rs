//! Consistent hashing on the client IP with a Maglev table (Eisenbud et al.,
//! "Maglev: A Fast and Reliable Software Network Load Balancer", NSDI 2016).
//!
//! The table has [`TABLE_SIZE`] slots, a prime, each naming an endpoint. Every
//! endpoint has its own permutation of the slots, `offset + j * step (mod
//! size)`, with `offset` and `step` hashed from its address: keyed on the
//! address rather than the list position, an endpoint keeps its permutation
//! when others join or leave. The table is filled in rounds; by round `r` an
//! endpoint of weight `w` has claimed about `r * w / max(weights)` slots, each
//! the next free slot of its permutation. So shares follow the weights
//! whatever the list order, and adding or removing
//! one endpoint of `n` moves about `1/n` of the clients. The table is built
//! once with the snapshot; a pick hashes the client IP and reads one slot.
//!
//! When the client's endpoint is skipped (already tried, or unusable), the
//! pick walks the table forward from the client's slot: the next slots name
//! endpoints in proportion to their shares, so a failed endpoint's clients
//! spread over the others, and every other client stays where it was. After
//! [`WALK_LIMIT`] slots without a usable endpoint (nearly everything
//! skipped) it takes the next usable endpoint in list order. Both are
//! deterministic: the same client and skips give the same endpoint.

use super::{Pick, Policy};
use crate::config::EndpointConfig;
use std::net::{IpAddr, SocketAddr};

/// Slots in the table: a prime, as Maglev's permutations need, and about 100
/// times the endpoints a service is expected to have, as the paper advises
/// (Envoy's default too). 256 KiB per service.
pub const TABLE_SIZE: usize = 65_537;

/// Slots a fallback pick walks before it scans the endpoint list instead.
const WALK_LIMIT: usize = 64;

/// Seeds of the fixed hashes: one each for an endpoint's offset and step,
/// one for client addresses. Fixed, so a table and a client's slot are the
/// same in every process and after every reload.
const OFFSET_SEED: u64 = 0x6d61_676c_6576_6f66;
const STEP_SEED: u64 = 0x6d61_676c_6576_7374;
const CLIENT_SEED: u64 = 0x636c_6965_6e74_6970;

/// Client IP → endpoint through a Maglev lookup table.
pub struct Maglev {
    /// Slot → endpoint index; empty for a service without endpoints.
    table: Box<[u32]>,
    /// The number of endpoints.
    endpoints: usize,
}

impl std::fmt::Debug for Maglev {
    // The table itself is 65,537 numbers: leave it out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maglev")
            .field("endpoints", &self.endpoints)
            .field("slots", &self.table.len())
            .finish()
    }
}

impl Maglev {
    /// Fills the table for these endpoints. Validation keeps weights at 1 or
    /// more; a 0 would count as 1 rather than stall the fill.
    pub fn new(endpoints: &[EndpointConfig]) -> Maglev {
        Maglev {
            table: fill(endpoints),
            endpoints: endpoints.len(),
        }
    }

    /// The slot of a client address.
    fn slot(client: IpAddr) -> usize {
        let hash = hash_ip(client.to_canonical(), CLIENT_SEED);
        // Multiply-shift instead of `%`: the top 32 bits scaled to the table.
        (((hash >> 32) * TABLE_SIZE as u64) >> 32) as usize
    }
}

impl Policy for Maglev {
    fn pick(&self, request: &Pick<'_>) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let skip = request.skip;
        let slot = Maglev::slot(request.client);
        let preferred = self.table[slot] as usize;
        if !skip(preferred) {
            return Some(preferred);
        }
        let walked = (1..=WALK_LIMIT)
            .map(|k| self.table[(slot + k) % TABLE_SIZE] as usize)
            .find(|&i| !skip(i));
        walked.or_else(|| {
            (1..self.endpoints)
                .map(|k| (preferred + k) % self.endpoints)
                .find(|&i| !skip(i))
        })
    }
}

/// Maglev's population, weighted as Envoy's Maglev does: in round `r` an
/// endpoint of weight `w` (of the largest weight `max`) claims the next free
/// slot of its permutation while it holds fewer than `r * w / max`, so the
/// heaviest claim one slot every round and every endpoint keeps pace with
/// its weight whatever its place in the list. (Taking `w` turns each per
/// round instead gave everything to the first endpoints of the list when
/// the weights sum past the table's size: 20,000 endpoints of weights 1 to
/// 256 left 19,000 of them without a slot.) The heaviest claim one slot per
/// round, so there are at most `TABLE_SIZE * max / sum(weights)` rounds of
/// n steps: at most `TABLE_SIZE * min(n, max)` steps in all.
fn fill(endpoints: &[EndpointConfig]) -> Box<[u32]> {
    if endpoints.is_empty() {
        return Box::default();
    }
    let size = TABLE_SIZE as u64;
    // Per endpoint: the next slot of its permutation, and the step to the
    // one after. A step of 1 to size-1 with a prime size visits every slot.
    let mut cursors: Vec<(u64, u64)> = endpoints
        .iter()
        .map(|e| {
            let offset = hash_addr(e.addr, OFFSET_SEED) % size;
            let step = hash_addr(e.addr, STEP_SEED) % (size - 1) + 1;
            (offset, step)
        })
        .collect();
    let weights: Vec<u64> = endpoints
        .iter()
        .map(|e| u64::from(e.weight.max(1)))
        .collect();
    let max = weights.iter().copied().max().unwrap_or(1);
    let mut claimed = vec![0u64; endpoints.len()];
    let mut table = vec![u32::MAX; TABLE_SIZE];
    let mut filled = 0;
    // The heaviest endpoint claims a slot every round, so at most
    // TABLE_SIZE rounds.
    for round in 1..=size {
        for (index, &weight) in weights.iter().enumerate() {
            if claimed[index] * max >= round * weight {
                continue;
            }
            let (next, step) = &mut cursors[index];
            // A free slot exists (filled < size) and the permutation
            // reaches every slot, so this ends within TABLE_SIZE steps.
            while table[*next as usize] != u32::MAX {
                *next = (*next + *step) % size;
            }
            table[*next as usize] = index as u32;
            claimed[index] += 1;
            filled += 1;
            if filled == TABLE_SIZE {
                return table.into_boxed_slice();
            }
        }
    }
    table.into_boxed_slice()
}

/// splitmix64's finaliser: a fixed, fast 64-bit mix where every input bit
/// affects every output bit.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A fixed hash of an IP address.
fn hash_ip(ip: IpAddr, seed: u64) -> u64 {
    match ip {
        IpAddr::V4(v4) => mix(seed ^ u64::from(v4.to_bits())),
        IpAddr::V6(v6) => {
            let bits = v6.to_bits();
            mix(mix(seed ^ (bits >> 64) as u64) ^ bits as u64)
        }
    }
}

/// A fixed hash of an endpoint address (IP and port).
fn hash_addr(addr: SocketAddr, seed: u64) -> u64 {
    mix(hash_ip(addr.ip(), seed) ^ u64::from(addr.port()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::tests::{endpoints, random_client};
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn pick(policy: &Maglev, client: IpAddr, skip: &dyn Fn(usize) -> bool) -> Option<usize> {
        policy.pick(&Pick {
            client,
            retry: false,
            skip,
            active: &|_| 0,
        })
    }

    /// `n` endpoints at random addresses, weight 1.
    fn random_endpoints(rng: &mut fastrand::Rng, n: usize) -> Vec<EndpointConfig> {
        (0..n)
            .map(|_| EndpointConfig {
                addr: SocketAddr::from((Ipv4Addr::from(rng.u32(..)), rng.u16(1..))),
                weight: 1,
            })
            .collect()
    }

    /// The fraction of `clients` whose endpoint address differs between two
    /// endpoint lists.
    fn moved(clients: &[IpAddr], before: &[EndpointConfig], after: &[EndpointConfig]) -> f64 {
        let (old, new) = (Maglev::new(before), Maglev::new(after));
        let moved = clients
            .iter()
            .filter(|&&c| {
                let a = before[pick(&old, c, &|_| false).unwrap()].addr;
                let b = after[pick(&new, c, &|_| false).unwrap()].addr;
                a != b
            })
            .count();
        moved as f64 / clients.len() as f64
    }

    #[test]
    fn it_should_send_the_same_client_to_the_same_endpoint() {
        let list = endpoints(&[1, 2, 3, 1, 1]);
        let (first, second) = (Maglev::new(&list), Maglev::new(&list));
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..1000 {
            let client = random_client(&mut rng);
            let picked = pick(&first, client, &|_| false);
            for _ in 0..3 {
                assert_eq!(pick(&first, client, &|_| false), picked);
            }
            // A rebuilt table (a reload, another process) agrees.
            assert_eq!(pick(&second, client, &|_| false), picked);
        }
    }

    #[test]
    fn it_should_treat_an_ipv4_mapped_client_as_its_ipv4_address() {
        let policy = Maglev::new(&endpoints(&[1; 7]));
        let mut rng = fastrand::Rng::with_seed(2);
        for _ in 0..200 {
            let v4 = Ipv4Addr::from(rng.u32(..));
            assert_eq!(
                pick(&policy, IpAddr::V4(v4), &|_| false),
                pick(&policy, IpAddr::V6(v4.to_ipv6_mapped()), &|_| false)
            );
        }
    }

    #[test]
    fn it_should_move_about_one_in_n_clients_when_an_endpoint_joins_or_leaves() {
        let mut rng = fastrand::Rng::with_seed(3);
        let clients: Vec<IpAddr> = (0..10_000).map(|_| random_client(&mut rng)).collect();
        for n in 5..=10 {
            let list = random_endpoints(&mut rng, n);
            let mut fewer = list.clone();
            // Remove one from anywhere in the list, not just the end.
            fewer.remove(rng.usize(..n));
            let mut more = list.clone();
            more.insert(rng.usize(..=n), random_endpoints(&mut rng, 1)[0].clone());
            let ideal = 1.0 / n as f64;
            let removed = moved(&clients, &list, &fewer);
            let added = moved(&clients, &list, &more);
            println!(
                "source_hash n={n}: removing one moves {removed:.4}, adding one moves \
                 {added:.4} (1/n = {ideal:.4})"
            );
            for fraction in [removed, added] {
                assert!(
                    (0.5 * ideal..=1.5 * ideal).contains(&fraction),
                    "n={n}: {fraction} moved"
                );
            }
        }
    }

    #[test]
    fn it_should_split_clients_by_weight_within_15_percent() {
        let weights = [1, 2, 3, 5, 8, 1];
        let total: u32 = weights.iter().sum();
        let policy = Maglev::new(&endpoints(&weights));
        // The table itself follows the weights closely.
        let mut slots = [0u32; 6];
        for &i in policy.table.iter() {
            slots[i as usize] += 1;
        }
        let mut rng = fastrand::Rng::with_seed(4);
        let clients = 100_000;
        let mut counts = [0u32; 6];
        for _ in 0..clients {
            counts[pick(&policy, random_client(&mut rng), &|_| false).unwrap()] += 1;
        }
        println!("source_hash weights {weights:?}: slots {slots:?}, clients {counts:?}");
        for (i, &w) in weights.iter().enumerate() {
            let share = f64::from(w) / f64::from(total);
            let slot_error = f64::from(slots[i]) / (TABLE_SIZE as f64 * share) - 1.0;
            assert!(slot_error.abs() < 0.01, "slots {slots:?}");
            let client_error = f64::from(counts[i]) / (f64::from(clients) * share) - 1.0;
            assert!(client_error.abs() < 0.15, "clients {counts:?}");
        }
    }

    #[test]
    fn it_should_spread_a_skipped_endpoints_clients_and_move_no_one_else() {
        let policy = Maglev::new(&endpoints(&[1; 5]));
        let mut rng = fastrand::Rng::with_seed(5);
        let mut landed = [0u32; 5];
        for _ in 0..10_000 {
            let client = random_client(&mut rng);
            let preferred = pick(&policy, client, &|_| false).unwrap();
            let fallback = pick(&policy, client, &|i| i == 0).unwrap();
            if preferred == 0 {
                landed[fallback] += 1;
                // Deterministic: the same skips give the same fallback.
                assert_eq!(pick(&policy, client, &|i| i == 0), Some(fallback));
            } else {
                assert_eq!(fallback, preferred);
            }
        }
        assert_eq!(landed[0], 0);
        // About 2,000 clients preferred endpoint 0; each other gets about 500.
        assert!(
            landed[1..].iter().all(|&n| (350..=650).contains(&n)),
            "{landed:?}"
        );
    }

    #[test]
    fn it_should_fall_back_to_the_list_when_almost_everything_is_skipped() {
        // 200 endpoints, all but one skipped: the table walk rarely finds it,
        // the scan always does.
        let list = endpoints(&[1; 200]);
        let policy = Maglev::new(&list);
        let mut rng = fastrand::Rng::with_seed(6);
        for _ in 0..1000 {
            let client = IpAddr::V6(Ipv6Addr::from(rng.u128(..)));
            assert_eq!(pick(&policy, client, &|i| i != 137), Some(137));
        }
        assert_eq!(
            pick(&policy, IpAddr::V4(Ipv4Addr::LOCALHOST), &|_| true),
            None
        );
    }

    #[test]
    fn it_should_share_the_table_by_weight_even_when_the_weights_outgrow_it() {
        // Weights summing to 128,500, twice the table: shares are fractions
        // of slots for the lightest, and list order must not decide them.
        let weights: Vec<u32> = (0..1000).map(|i| 1 + i % 256).collect();
        let total: u32 = weights.iter().sum();
        let policy = Maglev::new(&endpoints(&weights));
        let mut slots = vec![0u32; 1000];
        for &i in policy.table.iter() {
            slots[i as usize] += 1;
        }
        for (i, &w) in weights.iter().enumerate() {
            let share = TABLE_SIZE as f64 * f64::from(w) / f64::from(total);
            let off = (f64::from(slots[i]) - share).abs();
            assert!(
                off <= 1.5,
                "endpoint {i} of weight {w}: {} slots for a share of {share:.1}",
                slots[i]
            );
        }
        assert!(slots[999] > 0, "the end of the list has its share");
    }

    #[test]
    fn it_should_give_every_endpoint_a_share_of_the_table() {
        let mut rng = fastrand::Rng::with_seed(7);
        let policy = Maglev::new(&random_endpoints(&mut rng, 1000));
        let mut slots = vec![0u32; 1000];
        for &i in policy.table.iter() {
            slots[i as usize] += 1;
        }
        // 65,537 slots over 1,000 endpoints: 65 or 66 each.
        assert!(slots.iter().all(|&n| (65..=66).contains(&n)), "{slots:?}");
    }
}
