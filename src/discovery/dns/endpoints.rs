//! From SRV records and their targets' addresses to endpoints: priorities
//! ranked into failover tiers, weights scaled into l4mesh's range. No I/O.

use crate::config::MAX_WEIGHT;
use crate::routing::Discovered;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

/// One SRV record with the addresses its target resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// SRV priority: lower serves first.
    pub priority: u16,
    /// SRV weight: the share among records of the same priority.
    pub weight: u16,
    /// The port to connect to.
    pub port: u16,
    /// The target's addresses (A and AAAA).
    pub addrs: Vec<IpAddr>,
}

/// The endpoints `targets` describe, sorted by tier, then address.
///
/// - Tiers: the lowest priority value present becomes tier 0, the next
///   lowest tier 1, and so on, whatever the gaps between the values.
/// - An address named twice (two records for one target and port, or two
///   targets that resolve to one address) is one endpoint, in the better
///   (lower) priority; two records of the same priority add their weights.
/// - Weights: within a tier whose largest weight fits 1..=`MAX_WEIGHT`
///   the SRV weights are kept as they are; a tier with larger weights is
///   scaled so that its largest becomes `MAX_WEIGHT`, rounding to the
///   nearest. Either way weight 0 (and anything that rounds to 0) becomes
///   1: RFC 2782 gives weight-0 records a small chance when others have
///   weight, and every weight-0 record an equal one when all have 0.
pub fn endpoints(targets: &[Target]) -> Vec<Discovered> {
    // address -> (priority, summed SRV weight)
    let mut by_addr: BTreeMap<SocketAddr, (u16, u32)> = BTreeMap::new();
    for target in targets {
        for ip in &target.addrs {
            let addr = SocketAddr::new(*ip, target.port);
            let weight = u32::from(target.weight);
            by_addr
                .entry(addr)
                .and_modify(|(priority, sum)| {
                    if target.priority < *priority {
                        *priority = target.priority;
                        *sum = weight;
                    } else if target.priority == *priority {
                        *sum = sum.saturating_add(weight);
                    }
                })
                .or_insert((target.priority, weight));
        }
    }
    // priority -> (tier, largest weight in it)
    let mut tiers: BTreeMap<u16, (u16, u32)> = BTreeMap::new();
    for (priority, weight) in by_addr.values() {
        let largest = &mut tiers.entry(*priority).or_insert((0, 0)).1;
        *largest = (*largest).max(*weight);
    }
    for (rank, (_, tier)) in tiers.iter_mut().enumerate() {
        // At most 65,536 distinct priorities, so the rank fits.
        tier.0 = u16::try_from(rank).unwrap_or(u16::MAX);
    }
    let mut found: Vec<Discovered> = by_addr
        .into_iter()
        .map(|(addr, (priority, weight))| {
            let (tier, largest) = tiers[&priority];
            Discovered {
                addr,
                weight: scale(weight, largest),
                tier,
            }
        })
        .collect();
    found.sort_by_key(|d| (d.tier, d.addr));
    found
}

/// `weight` of a tier whose largest weight is `largest`, in 1..=MAX_WEIGHT.
fn scale(weight: u32, largest: u32) -> u32 {
    if largest <= MAX_WEIGHT {
        return weight.max(1);
    }
    let scaled =
        (u64::from(weight) * u64::from(MAX_WEIGHT) + u64::from(largest) / 2) / u64::from(largest);
    // weight <= largest, so scaled <= MAX_WEIGHT.
    u32::try_from(scaled).unwrap_or(MAX_WEIGHT).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(priority: u16, weight: u16, port: u16, addrs: &[&str]) -> Target {
        Target {
            priority,
            weight,
            port,
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn found(addr: &str, weight: u32, tier: u16) -> Discovered {
        Discovered {
            addr: addr.parse().unwrap(),
            weight,
            tier,
        }
    }

    #[test]
    fn it_should_rank_priorities_into_consecutive_tiers() {
        let got = endpoints(&[
            target(30, 1, 3, &["10.0.0.3"]),
            target(10, 1, 1, &["10.0.0.1"]),
            target(20, 1, 2, &["10.0.0.2"]),
            target(10, 1, 4, &["10.0.0.4"]),
        ]);
        assert_eq!(
            got,
            vec![
                found("10.0.0.1:1", 1, 0),
                found("10.0.0.4:4", 1, 0),
                found("10.0.0.2:2", 1, 1),
                found("10.0.0.3:3", 1, 2),
            ]
        );
    }

    #[test]
    fn it_should_keep_small_weights_and_lift_zero_to_one() {
        let got = endpoints(&[
            target(0, 0, 1, &["10.0.0.1"]),
            target(0, 5, 2, &["10.0.0.2"]),
            target(0, 256, 3, &["10.0.0.3"]),
        ]);
        let weights: Vec<u32> = got.iter().map(|d| d.weight).collect();
        assert_eq!(weights, vec![1, 5, 256]);
    }

    #[test]
    fn it_should_scale_large_weights_per_tier_keeping_their_ratios() {
        let got = endpoints(&[
            target(0, 65535, 1, &["10.0.0.1"]),
            target(0, 32768, 2, &["10.0.0.2"]),
            target(0, 100, 3, &["10.0.0.3"]),
            target(0, 0, 4, &["10.0.0.4"]),
            // Another tier with small weights is left alone.
            target(1, 3, 5, &["10.0.0.5"]),
            target(1, 1000, 6, &["10.0.0.6"]),
            target(1, 500, 7, &["10.0.0.7"]),
        ]);
        let weights: Vec<(u16, u32)> = got.iter().map(|d| (d.tier, d.weight)).collect();
        assert_eq!(
            weights,
            vec![
                (0, 256),
                (0, 128),
                (0, 1),
                (0, 1),
                (1, 1),
                (1, 256),
                (1, 128)
            ]
        );
    }

    #[test]
    fn it_should_give_every_address_of_a_target_its_own_endpoint() {
        let got = endpoints(&[target(0, 7, 80, &["10.0.0.1", "::1"])]);
        assert_eq!(
            got,
            vec![found("10.0.0.1:80", 7, 0), found("[::1]:80", 7, 0)]
        );
    }

    #[test]
    fn it_should_merge_an_address_named_twice() {
        let got = endpoints(&[
            // Same priority: weights add.
            target(5, 2, 80, &["10.0.0.1"]),
            target(5, 3, 80, &["10.0.0.1"]),
            // Different priorities: the better one wins, with its weight.
            target(9, 50, 81, &["10.0.0.2"]),
            target(1, 4, 81, &["10.0.0.2"]),
            target(9, 60, 81, &["10.0.0.2"]),
        ]);
        assert_eq!(
            got,
            vec![found("10.0.0.2:81", 4, 0), found("10.0.0.1:80", 5, 1)]
        );
    }

    #[test]
    fn it_should_return_nothing_for_targets_without_addresses() {
        assert!(endpoints(&[target(0, 1, 80, &[])]).is_empty());
        assert!(endpoints(&[]).is_empty());
    }

    #[test]
    fn any_answer_gives_unique_addresses_consecutive_tiers_and_weights_in_range() {
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..500 {
            let targets: Vec<Target> = (0..rng.usize(0..12))
                .map(|_| Target {
                    priority: rng.u16(0..4) * rng.u16(1..1000),
                    weight: if rng.bool() {
                        rng.u16(..)
                    } else {
                        rng.u16(0..10)
                    },
                    port: rng.u16(1..4),
                    addrs: (0..rng.usize(0..3))
                        .map(|_| IpAddr::from([10, 0, 0, rng.u8(1..4)]))
                        .collect(),
                })
                .collect();
            let got = endpoints(&targets);
            let addrs: std::collections::BTreeSet<_> = got.iter().map(|d| d.addr).collect();
            assert_eq!(addrs.len(), got.len(), "unique addresses: {got:?}");
            let named: std::collections::BTreeSet<_> = targets
                .iter()
                .flat_map(|t| t.addrs.iter().map(|ip| SocketAddr::new(*ip, t.port)))
                .collect();
            assert_eq!(addrs, named, "every named address, nothing else");
            let tiers: std::collections::BTreeSet<u16> = got.iter().map(|d| d.tier).collect();
            assert!(tiers.iter().copied().eq(0..tiers.len() as u16), "{tiers:?}");
            assert!(
                got.iter().all(|d| (1..=MAX_WEIGHT).contains(&d.weight)),
                "{got:?}"
            );
            assert!(
                got.windows(2)
                    .all(|w| (w[0].tier, w[0].addr) < (w[1].tier, w[1].addr))
            );
        }
    }

    #[test]
    fn scaled_weights_stay_in_range_and_in_order() {
        for largest in [257u32, 1000, 65535, 131_070] {
            let mut previous = 0;
            for weight in (0..=largest).step_by(97).chain([largest]) {
                let scaled = scale(weight, largest);
                assert!((1..=MAX_WEIGHT).contains(&scaled), "{weight}/{largest}");
                assert!(scaled >= previous, "{weight}/{largest}");
                previous = scaled;
            }
            assert_eq!(scale(largest, largest), MAX_WEIGHT);
        }
    }
}
