use super::*;
use crate::config::Rate;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

fn limits(max: Option<u32>, rate: Option<(u32, u32)>) -> ClientLimits {
    ClientLimits {
        max_connections: max,
        rate: rate.map(|(count, burst)| Rate {
            count,
            per: Duration::from_secs(1),
            burst,
        }),
        prefix_v4: 32,
        prefix_v6: 128,
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn admitted(admission: Admission) -> ClientPermit {
    match admission {
        Admission::Admitted(permit) => permit,
        other => panic!("not admitted: {other:?}"),
    }
}

fn labels(
    table: &Arc<ClientTable>,
    client: &str,
    limits: &ClientLimits,
    now: Instant,
) -> &'static str {
    table.admit(ip(client), limits, now).label()
}

fn open_in_table(table: &ClientTable) -> u64 {
    table.slots.iter().map(Slot::open).sum()
}

#[test]
fn it_should_refuse_a_third_connection_at_max_two_until_one_closes() {
    let table = Arc::new(ClientTable::new(1024));
    let (two, now) = (limits(Some(2), None), Instant::now());
    let first = admitted(table.admit(ip("10.0.0.1"), &two, now));
    let _second = admitted(table.admit(ip("10.0.0.1"), &two, now));
    assert_eq!(labels(&table, "10.0.0.1", &two, now), "connections");
    let _other = admitted(table.admit(ip("10.0.0.2"), &two, now));
    drop(first);
    let _third = admitted(table.admit(ip("10.0.0.1"), &two, now));
    assert_eq!(labels(&table, "10.0.0.1", &two, now), "connections");
    assert_eq!(open_in_table(&table), 3);
}

#[test]
fn it_should_let_a_burst_of_five_through_then_one_more_after_200_ms() {
    let table = Arc::new(ClientTable::new(1024));
    let (five, t) = (limits(None, Some((5, 5))), Instant::now());
    let decisions: Vec<_> = (0..6)
        .map(|_| labels(&table, "10.0.0.1", &five, t))
        .collect();
    assert_eq!(
        decisions,
        ["admitted"; 5]
            .iter()
            .chain(&["rate"])
            .copied()
            .collect::<Vec<_>>()
    );
    assert_eq!(
        labels(&table, "10.0.0.1", &five, t + Duration::from_millis(199)),
        "rate"
    );
    assert_eq!(
        labels(&table, "10.0.0.1", &five, t + Duration::from_millis(200)),
        "admitted"
    );
    assert_eq!(
        labels(&table, "10.0.0.1", &five, t + Duration::from_millis(200)),
        "rate"
    );
    assert_eq!(labels(&table, "10.0.0.2", &five, t), "admitted");
    assert_eq!(open_in_table(&table), 0);
}

#[test]
fn it_should_take_no_token_and_keep_no_count_for_a_rate_refusal() {
    let table = Arc::new(ClientTable::new(1024));
    let (one_of_each, t) = (limits(Some(1), Some((1, 1))), Instant::now());
    drop(admitted(table.admit(ip("10.0.0.1"), &one_of_each, t)));
    assert_eq!(labels(&table, "10.0.0.1", &one_of_each, t), "rate");
    assert_eq!(open_in_table(&table), 0);
    let _held = admitted(table.admit(ip("10.0.0.1"), &one_of_each, t + Duration::from_secs(1)));
}

#[test]
fn it_should_take_no_token_for_a_connections_refusal() {
    let table = Arc::new(ClientTable::new(1024));
    let (one_open_two_per_second, t) = (limits(Some(1), Some((2, 2))), Instant::now());
    let first = admitted(table.admit(ip("10.0.0.1"), &one_open_two_per_second, t));
    for _ in 0..3 {
        assert_eq!(
            labels(&table, "10.0.0.1", &one_open_two_per_second, t),
            "connections"
        );
    }
    drop(first);
    // The second token of the burst is still there.
    let _second = admitted(table.admit(ip("10.0.0.1"), &one_open_two_per_second, t));
}

#[test]
fn it_should_group_a_v4_prefix_of_24() {
    let table = Arc::new(ClientTable::new(1024));
    let slash24 = ClientLimits {
        prefix_v4: 24,
        ..limits(Some(1), None)
    };
    let now = Instant::now();
    let _first = admitted(table.admit(ip("10.0.0.1"), &slash24, now));
    assert_eq!(labels(&table, "10.0.0.200", &slash24, now), "connections");
    assert_eq!(labels(&table, "10.0.1.1", &slash24, now), "admitted");
}

#[test]
fn it_should_group_a_v6_prefix_of_64() {
    let table = Arc::new(ClientTable::new(1024));
    let slash64 = ClientLimits {
        prefix_v6: 64,
        ..limits(Some(1), None)
    };
    let now = Instant::now();
    let _first = admitted(table.admit(ip("2001:db8:0:1::1"), &slash64, now));
    assert_eq!(
        labels(&table, "2001:db8:0:1:ffff::9", &slash64, now),
        "connections"
    );
    assert_eq!(labels(&table, "2001:db8:0:2::1", &slash64, now), "admitted");
    assert_eq!(
        labels(&table, "2001:db8:0:1::1", &limits(Some(1), None), now),
        "admitted"
    );
}

#[test]
fn it_should_count_a_v4_mapped_v6_address_as_its_v4_address() {
    let table = Arc::new(ClientTable::new(1024));
    let (one, now) = (limits(Some(1), None), Instant::now());
    let _first = admitted(table.admit(ip("::ffff:192.0.2.7"), &one, now));
    assert_eq!(labels(&table, "192.0.2.7", &one, now), "connections");
    assert_eq!(labels(&table, "::192.0.2.7", &one, now), "admitted");
}

#[test]
fn it_should_treat_a_prefix_of_zero_as_one_client_for_the_whole_family() {
    let table = Arc::new(ClientTable::new(1024));
    let everyone = ClientLimits {
        prefix_v4: 0,
        prefix_v6: 0,
        ..limits(Some(1), None)
    };
    let now = Instant::now();
    let _v4 = admitted(table.admit(ip("10.0.0.1"), &everyone, now));
    let _v6 = admitted(table.admit(ip("2001:db8::1"), &everyone, now));
    assert_eq!(labels(&table, "192.0.2.1", &everyone, now), "connections");
    assert_eq!(labels(&table, "::1", &everyone, now), "connections");
}

#[test]
fn it_should_let_clients_in_untracked_when_their_window_is_full() {
    let table = Arc::new(ClientTable::new(1));
    let (one, now) = (limits(Some(1), None), Instant::now());
    let held: Vec<_> = (1..=16)
        .map(|i| admitted(table.admit(ip(&format!("10.0.0.{i}")), &one, now)))
        .collect();
    assert_eq!(labels(&table, "10.0.0.17", &one, now), "untracked");
    assert_eq!(labels(&table, "10.0.0.1", &one, now), "connections");
    assert_eq!(open_in_table(&table), 16);
    drop(held);
    assert_eq!(open_in_table(&table), 0);
    assert_eq!(labels(&table, "10.0.0.17", &one, now), "admitted");
}

#[test]
fn it_should_reuse_a_slot_once_its_bucket_refills_and_no_connection_is_open() {
    let table = Arc::new(ClientTable::new(16));
    let (one_per_second, t) = (limits(None, Some((1, 1))), Instant::now());
    let held: Vec<_> = (1..=16)
        .map(|i| admitted(table.admit(ip(&format!("10.0.0.{i}")), &one_per_second, t)))
        .collect();
    // Every slot holds a client with a connection open, then with a bucket
    // still paying back: no room for a newcomer either way.
    assert_eq!(labels(&table, "10.0.0.17", &one_per_second, t), "untracked");
    drop(held);
    let soon = t + Duration::from_millis(999);
    assert_eq!(
        labels(&table, "10.0.0.17", &one_per_second, soon),
        "untracked"
    );
    // A second on, every bucket is full again: the newcomer takes a slot,
    // is limited in it, and the client it replaced starts afresh.
    let later = t + Duration::from_secs(1);
    let _newcomer = admitted(table.admit(ip("10.0.0.17"), &one_per_second, later));
    assert_eq!(labels(&table, "10.0.0.17", &one_per_second, later), "rate");
    assert_eq!(open_in_table(&table), 1);
}

#[test]
fn it_should_keep_its_memory_flat_under_a_million_distinct_clients() {
    let table = Arc::new(ClientTable::new(ClientTable::DEFAULT_CAPACITY));
    let before = table.memory();
    assert_eq!(before, std::mem::size_of::<ClientTable>() + 65536 * 16);
    let six_per_second = limits(Some(4), Some((6, 6)));
    let t = Instant::now();
    let mut counts = [0usize; 4];
    for i in 0..1_000_000u32 {
        let client = IpAddr::from(0x0a00_0000u32.wrapping_add(i).to_be_bytes());
        let index = match table.admit(client, &six_per_second, t) {
            Admission::Admitted(_) => 0,
            Admission::Untracked => 1,
            Admission::OverConnections => 2,
            Admission::OverRate => 3,
        };
        counts[index] += 1;
    }
    assert_eq!(table.memory(), before);
    assert_eq!(counts.iter().sum::<usize>(), 1_000_000);
    assert_eq!(counts[2] + counts[3], 0);
    // Every bucket is paying back its token at `t`: once the table is
    // full, newcomers go untracked.
    assert_eq!(counts[0], 65536);
    assert_eq!(open_in_table(&table), 0);
    // A second on, a known client is limited as before, in a reused slot.
    let later = t + Duration::from_secs(1);
    let held: Vec<_> = (0..4)
        .map(|_| admitted(table.admit(ip("192.0.2.1"), &six_per_second, later)))
        .collect();
    assert_eq!(
        labels(&table, "192.0.2.1", &six_per_second, later),
        "connections"
    );
    drop(held);
    let more: Vec<_> = (0..4)
        .map(|_| table.admit(ip("192.0.2.1"), &six_per_second, later).label())
        .collect();
    assert_eq!(more, ["admitted", "admitted", "rate", "rate"]);
    assert_eq!(table.memory(), before);
}

#[test]
fn it_should_return_every_count_to_zero_and_never_exceed_the_limit_under_four_threads() {
    // More clients than slots, few connections held and buckets that
    // refill within microseconds: slots are reused all the time, and the
    // same new client is often claimed by two threads at once.
    const CLIENTS: usize = 24;
    const MAX: u32 = 2;
    let table = Arc::new(ClientTable::new(16));
    let limits = limits(Some(MAX), Some((1_000_000, 8)));
    // What each client is seen to hold: raised after an admit and lowered
    // before the permit drops, so it never exceeds the table's count.
    let observed: Arc<Vec<AtomicU32>> = Arc::new((0..CLIENTS).map(|_| AtomicU32::new(0)).collect());
    let t = Instant::now();
    let workers: Vec<_> = (0..4u64)
        .map(|worker| {
            let (table, limits, observed) =
                (Arc::clone(&table), limits.clone(), Arc::clone(&observed));
            std::thread::spawn(move || {
                let mut rng = fastrand::Rng::with_seed(worker);
                let mut held: Vec<(usize, ClientPermit)> = Vec::new();
                let mut seen = [0usize; 4];
                for step in 0..100_000u64 {
                    let client = rng.usize(..CLIENTS);
                    let now = t + Duration::from_nanos(step * 500);
                    match table.admit(IpAddr::from([10, 1, 0, client as u8]), &limits, now) {
                        Admission::Admitted(permit) => {
                            let open = observed[client].fetch_add(1, Ordering::SeqCst) + 1;
                            assert!(open <= MAX, "client {client} has {open} open");
                            held.push((client, permit));
                            seen[0] += 1;
                        }
                        Admission::Untracked => seen[1] += 1,
                        Admission::OverConnections => seen[2] += 1,
                        Admission::OverRate => seen[3] += 1,
                    }
                    if held.len() > 2 || (!held.is_empty() && rng.bool()) {
                        let (client, permit) = held.swap_remove(rng.usize(..held.len()));
                        observed[client].fetch_sub(1, Ordering::SeqCst);
                        drop(permit);
                    }
                }
                for (client, permit) in held {
                    observed[client].fetch_sub(1, Ordering::SeqCst);
                    drop(permit);
                }
                seen
            })
        })
        .collect();
    let mut seen = [0usize; 4];
    for worker in workers {
        for (total, n) in seen.iter_mut().zip(worker.join().unwrap()) {
            *total += n;
        }
    }
    assert_eq!(seen.iter().sum::<usize>(), 400_000);
    assert!(
        seen.iter().all(|&n| n > 0),
        "every decision taken: {seen:?}"
    );
    assert_eq!(open_in_table(&table), 0);
    assert!(observed.iter().all(|open| open.load(Ordering::SeqCst) == 0));
}

#[test]
#[ignore = "a timing note: cargo test --release --lib client_limits -- --ignored --nocapture"]
fn it_should_admit_and_drop_in_well_under_a_microsecond() {
    let table = Arc::new(ClientTable::new(ClientTable::DEFAULT_CAPACITY));
    let limits = limits(Some(100), Some((1_000_000, 1_000_000)));
    let t = Instant::now();
    let rounds = 2_000_000u32;
    let start = Instant::now();
    for i in 0..rounds {
        let client = IpAddr::from([10, 0, (i >> 8) as u8 & 0x0f, i as u8]);
        drop(table.admit(client, &limits, t + Duration::from_micros(u64::from(i))));
    }
    let nanos = start.elapsed().as_nanos() / u128::from(rounds);
    println!("admit + drop: {nanos} ns");
    assert!(nanos < 1000, "{nanos} ns per admit");
}
