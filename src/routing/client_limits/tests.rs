use super::*;
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

fn admitted(a: Admission) -> ClientPermit {
    match a {
        Admission::Admitted(p) => p,
        other => panic!("not admitted: {other:?}"),
    }
}

#[test]
fn it_should_refuse_connections_over_the_limit_until_one_closes() {
    let table = Arc::new(ClientTable::new(1024));
    let (l, now) = (limits(Some(2), None), Instant::now());
    let a = admitted(table.admit(ip("10.0.0.1"), &l, now));
    let _b = admitted(table.admit(ip("10.0.0.1"), &l, now));
    assert!(matches!(
        table.admit(ip("10.0.0.1"), &l, now),
        Admission::OverConnections
    ));
    let _other = admitted(table.admit(ip("10.0.0.2"), &l, now));
    drop(a);
    let _c = admitted(table.admit(ip("10.0.0.1"), &l, now));
}

#[test]
fn it_should_let_a_burst_through_then_one_per_interval() {
    let table = Arc::new(ClientTable::new(1024));
    let (l, t0) = (limits(None, Some((5, 5))), Instant::now());
    for _ in 0..5 {
        admitted(table.admit(ip("10.0.0.1"), &l, t0));
    }
    assert!(matches!(
        table.admit(ip("10.0.0.1"), &l, t0),
        Admission::OverRate
    ));
    // A refusal takes no token: still refused a moment later, then one more
    // once an interval (200 ms) has passed.
    assert!(matches!(
        table.admit(ip("10.0.0.1"), &l, t0 + Duration::from_millis(199)),
        Admission::OverRate
    ));
    admitted(table.admit(ip("10.0.0.1"), &l, t0 + Duration::from_millis(200)));
    assert!(matches!(
        table.admit(ip("10.0.0.1"), &l, t0 + Duration::from_millis(200)),
        Admission::OverRate
    ));
}

#[test]
fn it_should_count_a_connection_refused_for_rate_nowhere() {
    let table = Arc::new(ClientTable::new(1024));
    let (l, t0) = (limits(Some(1), Some((1, 1))), Instant::now());
    let first = admitted(table.admit(ip("10.0.0.1"), &l, t0));
    drop(first);
    assert!(matches!(
        table.admit(ip("10.0.0.1"), &l, t0),
        Admission::OverRate
    ));
    // The refused one left no count behind: one second on, one is let in.
    admitted(table.admit(ip("10.0.0.1"), &l, t0 + Duration::from_secs(1)));
}

#[test]
fn it_should_group_clients_by_prefix_and_take_ipv4_mapped_as_ipv4() {
    let table = Arc::new(ClientTable::new(1024));
    let mut l = limits(Some(1), None);
    l.prefix_v4 = 24;
    l.prefix_v6 = 64;
    let now = Instant::now();
    let _a = admitted(table.admit(ip("10.0.0.1"), &l, now));
    assert!(matches!(
        table.admit(ip("10.0.0.200"), &l, now),
        Admission::OverConnections
    ));
    assert!(matches!(
        table.admit(ip("::ffff:10.0.0.9"), &l, now),
        Admission::OverConnections
    ));
    let _b = admitted(table.admit(ip("10.0.1.1"), &l, now));
    let _c = admitted(table.admit(ip("2001:db8::1"), &l, now));
    assert!(matches!(
        table.admit(ip("2001:db8::ffff:1"), &l, now),
        Admission::OverConnections
    ));
    let _d = admitted(table.admit(ip("2001:db8:0:1::1"), &l, now));
}

#[test]
fn it_should_keep_its_memory_under_a_million_distinct_clients_and_still_limit() {
    let table = Arc::new(ClientTable::new(ClientTable::DEFAULT_CAPACITY));
    let before = table.memory();
    assert_eq!(before, 65536 * 16);
    let (l, t0) = (limits(None, Some((1, 1))), Instant::now());
    let mut untracked = 0;
    for i in 0..1_000_000u32 {
        match table.admit(IpAddr::from(i.to_be_bytes()), &l, t0) {
            Admission::Admitted(_) => {}
            Admission::Untracked => untracked += 1,
            other => panic!("{i}: {other:?}"),
        }
    }
    assert_eq!(table.memory(), before);
    assert!(untracked > 0, "a full table admits untracked");
    // A second later every bucket is full again: the slots are free, and a
    // known client is limited as before.
    let t1 = t0 + Duration::from_secs(1);
    admitted(table.admit(ip("192.0.2.7"), &l, t1));
    assert!(matches!(
        table.admit(ip("192.0.2.7"), &l, t1),
        Admission::OverRate
    ));
}

#[test]
fn it_should_reuse_the_slot_of_a_client_that_left() {
    // One window's worth of slots: 16 clients fill it.
    let table = Arc::new(ClientTable::new(16));
    let (l, now) = (limits(Some(1), None), Instant::now());
    let held: Vec<ClientPermit> = (0..16u32)
        .map(|i| admitted(table.admit(IpAddr::from((i + 1).to_be_bytes()), &l, now)))
        .collect();
    assert!(matches!(
        table.admit(ip("10.9.9.9"), &l, now),
        Admission::Untracked
    ));
    drop(held);
    let _again = admitted(table.admit(ip("10.9.9.9"), &l, now));
}

#[test]
fn it_should_count_back_to_zero_under_threads_and_never_exceed_the_limit() {
    let table = Arc::new(ClientTable::new(64));
    let l = limits(Some(3), None);
    let open: Arc<Vec<AtomicU64>> = Arc::new((0..8).map(|_| AtomicU64::new(0)).collect());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (table, l, open) = (Arc::clone(&table), l.clone(), Arc::clone(&open));
            std::thread::spawn(move || {
                let mut held = Vec::new();
                for i in 0..50_000u32 {
                    let client = (i * 7 + t) % 8;
                    if let Admission::Admitted(p) =
                        table.admit(IpAddr::from([10, 0, 0, client as u8]), &l, Instant::now())
                    {
                        let n = open[client as usize].fetch_add(1, Ordering::SeqCst) + 1;
                        assert!(n <= 6, "client {client} has {n} open");
                        held.push((client, p));
                    }
                    if (held.len() > 2 || i % 3 == 0)
                        && let Some((c, p)) = held.pop()
                    {
                        open[c as usize].fetch_sub(1, Ordering::SeqCst);
                        drop(p);
                    }
                }
                for (c, p) in held {
                    open[c as usize].fetch_sub(1, Ordering::SeqCst);
                    drop(p);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for slot in table.slots.iter() {
        assert_eq!(slot.state.load(Ordering::SeqCst) & COUNT_MASK, 0);
    }
}
