//! Hot-path cost of `Policy::pick` for every balancing policy, in ns per pick.
//!
//! `cargo run --release --example pick_cost`
//!
//! Each policy serves 8 endpoints with weights 1 to 8 and clients cycling
//! through 4,096 IPv4 addresses. Active counts start at about 1,000 per unit
//! of weight (a loaded proxy, and no ties). Columns:
//!
//! * `1 thread`, `2 threads`: picks only, by one thread, then by two threads
//!   at once on the same policy (as two workers share a snapshot); the
//!   two-thread figure is what each thread pays per pick.
//! * `+count`: each pick also opens a connection on the endpoint it picked
//!   (an atomic increment, as `Endpoint::try_acquire` without a limit) and
//!   closes the one opened 256 picks earlier (a decrement), so the counts
//!   the connection-aware policies read are being written by the other
//!   thread too.
//!
//! Every figure is the median of several runs: the machine may be busy.

use l4mesh::balance::{self, Pick, Policy};
use l4mesh::config::{BalancePolicy, EndpointConfig};
use std::error::Error;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Endpoints per service; weights are 1 to this.
const ENDPOINTS: u32 = 8;
/// Picks per thread in one run.
const PICKS: usize = 1_000_000;
/// Runs per figure; the median is printed.
const RUNS: usize = 9;
/// Distinct client addresses the picks cycle through.
const CLIENTS: usize = 4096;
/// Connections each thread keeps open in the `+count` columns.
const IN_FLIGHT: usize = 256;

/// One policy under test and the state its picks read.
struct Bench {
    policy: Box<dyn Policy>,
    active: Vec<AtomicU64>,
    clients: Vec<IpAddr>,
}

/// splitmix64, for reproducible client addresses without a dependency.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Bench {
    fn new(policy: BalancePolicy) -> Bench {
        let endpoints: Vec<EndpointConfig> = (1..=ENDPOINTS)
            .map(|n| EndpointConfig {
                addr: SocketAddr::from((Ipv4Addr::new(10, 0, 0, n as u8), 8080)),
                weight: n,
            })
            .collect();
        // About 1,000 connections per unit of weight, nudged apart so the
        // loads do not tie.
        let active = endpoints
            .iter()
            .zip(0..)
            .map(|(e, i)| AtomicU64::new(1000 * u64::from(e.weight) + 17 * i))
            .collect();
        let mut state = 1;
        let clients = (0..CLIENTS)
            .map(|_| IpAddr::V4(Ipv4Addr::from(splitmix(&mut state) as u32)))
            .collect();
        Bench {
            policy: balance::build(policy, &endpoints),
            active,
            clients,
        }
    }

    /// `PICKS` picks starting at client `offset`; returns ns per pick.
    fn run(&self, offset: usize, count: bool) -> f64 {
        let mut open = [usize::MAX; IN_FLIGHT];
        let active = |i: usize| self.active[i].load(Ordering::Relaxed);
        let start = Instant::now();
        for k in 0..PICKS {
            let client = self.clients[(offset + k) % CLIENTS];
            let picked = self.policy.pick(&Pick {
                client,
                retry: false,
                skip: &|_| false,
                active: &active,
            });
            if count && let Some(i) = picked {
                self.active[i].fetch_add(1, Ordering::Relaxed);
                let closed = std::mem::replace(&mut open[k % IN_FLIGHT], i);
                if let Some(counter) = self.active.get(closed) {
                    counter.fetch_sub(1, Ordering::Relaxed);
                }
            }
            black_box(picked);
        }
        let ns = start.elapsed().as_nanos() as f64 / PICKS as f64;
        // Close what is still open, so the next run starts from the same counts.
        for closed in open {
            if let Some(counter) = self.active.get(closed) {
                counter.fetch_sub(1, Ordering::Relaxed);
            }
        }
        ns
    }

    /// Two threads picking at once; returns the mean of their ns per pick.
    fn run_two(&self, count: bool) -> Result<f64, Box<dyn Error>> {
        let barrier = Barrier::new(2);
        std::thread::scope(|scope| {
            let threads: Vec<_> = [0, CLIENTS / 2]
                .into_iter()
                .map(|offset| {
                    let barrier = &barrier;
                    scope.spawn(move || {
                        barrier.wait();
                        self.run(offset, count)
                    })
                })
                .collect();
            let mut total = 0.0;
            for thread in threads {
                total += thread.join().map_err(|_| "a picking thread panicked")?;
            }
            Ok(total / 2.0)
        })
    }
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() -> Result<(), Box<dyn Error>> {
    println!(
        "ns per pick, median of {RUNS} runs of {PICKS} picks per thread; \
         {ENDPOINTS} endpoints, weights 1..={ENDPOINTS}"
    );
    println!(
        "{:<12} {:>9} {:>10} {:>16} {:>17}",
        "policy", "1 thread", "2 threads", "1 thread +count", "2 threads +count"
    );
    for (name, policy) in BalancePolicy::ALL {
        let bench = Bench::new(policy);
        // Warm up: fault the table in, settle the clock.
        bench.run(0, false);
        let mut figures = Vec::new();
        for count in [false, true] {
            let one = (0..RUNS).map(|_| bench.run(0, count)).collect();
            let two = (0..RUNS)
                .map(|_| bench.run_two(count))
                .collect::<Result<Vec<f64>, _>>()?;
            figures.push(median(one));
            figures.push(median(two));
        }
        println!(
            "{name:<12} {:>9.1} {:>10.1} {:>16.1} {:>17.1}",
            figures[0], figures[1], figures[2], figures[3]
        );
    }
    Ok(())
}
