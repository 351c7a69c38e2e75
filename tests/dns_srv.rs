//! The DNS SRV source against a real DNS server (dnsmasq on a free loopback
//! port, restarted by the test when its records change): the endpoints it
//! sends (exact sets, against deadlines), when it sends nothing, and its
//! status. The source runs in the real discovery thread
//! (`Discovery::start`), its feed a channel.

mod common;

use common::dnsmasq::{Dnsmasq, host, srv};
use common::*;
use l4mesh::Config;
use l4mesh::discovery::{Discovery, Feed, Scope, Update};
use l4mesh::metrics::DiscoveryStats;
use l4mesh::routing::{Discovered, Source};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

const NAME: &str = "_echo._tcp.example.internal";

/// `[discovery.dns]` on `dns` and one service per (service, SRV name,
/// refresh).
fn config(dns: SocketAddr, services: &[(&str, &str, &str)]) -> Config {
    let mut text = format!(
        "[discovery.dns]\nservers = [\"{dns}\"]\ntimeout = \"200ms\"\n\
         [listeners.web]\nlisten = \"127.0.0.1:0\"\nservice = \"web\"\n\
         [services.web]\n"
    );
    for (service, name, refresh) in services {
        if *service != "web" {
            text.push_str(&format!("[services.{service}]\n"));
        }
        text.push_str(&format!(
            "discovery = {{ srv = \"{name}\", refresh = \"{refresh}\" }}\n"
        ));
    }
    Config::parse(&text, Path::new("dns_srv.toml")).unwrap()
}

/// The source running, with what it sent so far.
struct Followed {
    discovery: Discovery,
    updates: Receiver<Update>,
    stats: Arc<DiscoveryStats>,
    /// Each service's latest list.
    current: BTreeMap<String, Vec<Discovered>>,
}

impl Followed {
    fn start(config: &Config) -> Followed {
        let (tx, updates) = channel();
        let tx = std::sync::Mutex::new(tx);
        let feed = Feed::new(move |u| {
            let _ = tx.lock().unwrap().send(u);
        });
        let stats = Arc::new(DiscoveryStats::default());
        let discovery = Discovery::start(config, feed, Arc::clone(&stats)).unwrap();
        Followed {
            discovery,
            updates,
            stats,
            current: BTreeMap::new(),
        }
    }

    fn apply(&mut self, update: Update) {
        assert_eq!(update.source, Source::Dns);
        assert_eq!(update.scope, Scope::Services);
        for (service, list) in update.services {
            self.current.insert(service, list);
        }
    }

    /// Waits until `service`'s latest list is exactly `expected` (in any
    /// order); returns how long it took.
    fn expect(&mut self, service: &str, expected: &[Discovered], within: Duration) -> Duration {
        let start = Instant::now();
        let mut expected = expected.to_vec();
        expected.sort_by_key(|d| (d.tier, d.addr));
        loop {
            let mut got = self.current.get(service).cloned();
            if let Some(list) = got.as_mut() {
                list.sort_by_key(|d| (d.tier, d.addr));
            }
            if got.as_ref() == Some(&expected) {
                return start.elapsed();
            }
            let left = within.saturating_sub(start.elapsed());
            match self.updates.recv_timeout(left) {
                Ok(update) => self.apply(update),
                Err(RecvTimeoutError::Timeout) => panic!(
                    "not within {within:?}: service {service} should have {expected:?}, \
                     has {got:?}"
                ),
                Err(RecvTimeoutError::Disconnected) => panic!("the feed closed"),
            }
        }
    }

    /// Asserts that nothing is sent for `time`.
    fn quiet(&mut self, time: Duration) {
        match self.updates.recv_timeout(time) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(update) => panic!("expected no update for {time:?}, got {update:?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("the feed closed"),
        }
    }

    /// Whether `dns:SERVICE` is up, and its error count (None: no such
    /// status).
    fn status(&self, service: &str) -> Option<(bool, u64)> {
        let name = format!("dns:{service}");
        self.stats
            .all()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| (s.is_up(), s.errors()))
    }

    /// Waits until `dns:SERVICE` is down with at least `errors` errors.
    fn expect_down(&self, service: &str, errors: u64, within: Duration) {
        common::eventually(
            within,
            &format!("dns:{service} down"),
            || matches!(self.status(service), Some((false, e)) if e >= errors),
        );
    }
}

fn found(addr: &str, weight: u32, tier: u16) -> Discovered {
    Discovered {
        addr: addr.parse().unwrap(),
        weight,
        tier,
    }
}

const WITHIN: Duration = Duration::from_secs(5);

#[test]
fn records_added_removed_and_reweighted_reach_the_feed_exactly() {
    // TTL 60s, refresh 300ms: the resolver's cache would hide every
    // change for a minute; each refresh must really ask.
    let mut dns = Dnsmasq::start(
        60,
        &[
            srv(NAME, "a.example.internal", 7001, 0, 5),
            srv(NAME, "b.example.internal", 7002, 0, 10),
            host("a.example.internal", &["127.0.0.1"]),
            host("b.example.internal", &["127.0.0.2", "::1"]),
        ],
    );
    let mut source = Followed::start(&config(dns.addr(), &[("web", NAME, "300ms")]));
    source.expect(
        "web",
        &[
            found("127.0.0.1:7001", 5, 0),
            found("127.0.0.2:7002", 10, 0),
            found("[::1]:7002", 10, 0),
        ],
        WITHIN,
    );
    assert_eq!(source.status("web"), Some((true, 0)));
    // An unchanged answer sends nothing, however often it is asked.
    source.quiet(Duration::from_secs(1));

    dns.set(&[
        srv(NAME, "a.example.internal", 7001, 0, 5),
        srv(NAME, "b.example.internal", 7002, 0, 10),
        srv(NAME, "c.example.internal", 7003, 0, 1),
        host("a.example.internal", &["127.0.0.1"]),
        host("b.example.internal", &["127.0.0.2", "::1"]),
        host("c.example.internal", &["127.0.0.3"]),
    ]);
    let added = source.expect(
        "web",
        &[
            found("127.0.0.1:7001", 5, 0),
            found("127.0.0.2:7002", 10, 0),
            found("[::1]:7002", 10, 0),
            found("127.0.0.3:7003", 1, 0),
        ],
        WITHIN,
    );

    dns.set(&[
        srv(NAME, "a.example.internal", 7001, 0, 20),
        srv(NAME, "c.example.internal", 7003, 0, 1),
        host("a.example.internal", &["127.0.0.1"]),
        host("c.example.internal", &["127.0.0.3"]),
    ]);
    let changed = source.expect(
        "web",
        &[
            found("127.0.0.1:7001", 20, 0),
            found("127.0.0.3:7003", 1, 0),
        ],
        WITHIN,
    );
    eprintln!("seen after: added {added:?}, removed and reweighted {changed:?}");
    source.quiet(Duration::from_millis(700));
}

#[test]
fn priorities_become_failover_tiers_and_large_weights_are_scaled() {
    let mut dns = Dnsmasq::start(
        60,
        &[
            srv(NAME, "a.example.internal", 7001, 10, 1000),
            srv(NAME, "b.example.internal", 7002, 10, 500),
            srv(NAME, "c.example.internal", 7003, 20, 0),
            srv(NAME, "d.example.internal", 7004, 35, 3),
            host("a.example.internal", &["127.0.0.1"]),
            host("b.example.internal", &["127.0.0.2"]),
            host("c.example.internal", &["127.0.0.3"]),
            host("d.example.internal", &["127.0.0.4"]),
        ],
    );
    let mut source = Followed::start(&config(dns.addr(), &[("web", NAME, "300ms")]));
    source.expect(
        "web",
        &[
            found("127.0.0.1:7001", 256, 0),
            found("127.0.0.2:7002", 128, 0),
            found("127.0.0.3:7003", 1, 1),
            found("127.0.0.4:7004", 3, 2),
        ],
        WITHIN,
    );
    // c's priority drops below a's and b's: the tiers follow the ranks.
    dns.set(&[
        srv(NAME, "a.example.internal", 7001, 10, 1000),
        srv(NAME, "b.example.internal", 7002, 10, 500),
        srv(NAME, "c.example.internal", 7003, 5, 0),
        srv(NAME, "d.example.internal", 7004, 35, 3),
        host("a.example.internal", &["127.0.0.1"]),
        host("b.example.internal", &["127.0.0.2"]),
        host("c.example.internal", &["127.0.0.3"]),
        host("d.example.internal", &["127.0.0.4"]),
    ]);
    source.expect(
        "web",
        &[
            found("127.0.0.3:7003", 1, 0),
            found("127.0.0.1:7001", 256, 1),
            found("127.0.0.2:7002", 128, 1),
            found("127.0.0.4:7004", 3, 2),
        ],
        WITHIN,
    );
}

#[test]
fn a_ttl_shorter_than_refresh_is_honoured() {
    let records = |port: u16| {
        vec![
            srv(NAME, "a.example.internal", port, 0, 1),
            host("a.example.internal", &["127.0.0.1"]),
        ]
    };
    let mut dns = Dnsmasq::start(1, &records(7001));
    let mut source = Followed::start(&config(dns.addr(), &[("web", NAME, "60s")]));
    source.expect("web", &[found("127.0.0.1:7001", 1, 0)], WITHIN);
    dns.set(&records(7002));
    // TTL 1s: asked again within about a second, not after refresh's 60s.
    let took = source.expect(
        "web",
        &[found("127.0.0.1:7002", 1, 0)],
        Duration::from_secs(4),
    );
    eprintln!("a change with TTL 1s and refresh 60s was seen after {took:?}");
}

#[test]
fn a_frozen_server_sends_nothing_and_marks_the_source_down_until_it_answers() {
    let dns = Dnsmasq::start(
        60,
        &[
            srv(NAME, "a.example.internal", 7001, 0, 1),
            host("a.example.internal", &["127.0.0.1"]),
        ],
    );
    let mut source = Followed::start(&config(dns.addr(), &[("web", NAME, "1s")]));
    source.expect("web", &[found("127.0.0.1:7001", 1, 0)], WITHIN);
    dns.pause();
    // Each query times out (200ms, one retry): failures, no update.
    source.expect_down("web", 2, WITHIN);
    source.quiet(Duration::from_secs(1));
    dns.resume();
    common::eventually(WITHIN, "dns:web up again", || {
        matches!(source.status("web"), Some((true, _)))
    });
    // The same answer as before the freeze: nothing to send.
    source.quiet(Duration::from_millis(500));
}

#[test]
fn a_killed_server_keeps_the_last_answer_and_its_return_with_changes_is_seen() {
    let mut dns = Dnsmasq::start(
        60,
        &[
            srv(NAME, "a.example.internal", 7001, 0, 1),
            host("a.example.internal", &["127.0.0.1"]),
        ],
    );
    let mut source = Followed::start(&config(dns.addr(), &[("web", NAME, "1s")]));
    source.expect("web", &[found("127.0.0.1:7001", 1, 0)], WITHIN);
    dns.stop();
    source.expect_down("web", 2, WITHIN);
    source.quiet(Duration::from_secs(1));
    // Back, with a record changed while it was away.
    dns.set(&[
        srv(NAME, "a.example.internal", 7001, 0, 1),
        srv(NAME, "b.example.internal", 7002, 0, 1),
        host("a.example.internal", &["127.0.0.1"]),
        host("b.example.internal", &["127.0.0.2"]),
    ]);
    // Retries back off up to refresh (1s).
    source.expect(
        "web",
        &[found("127.0.0.1:7001", 1, 0), found("127.0.0.2:7002", 1, 0)],
        WITHIN,
    );
    assert!(matches!(source.status("web"), Some((true, e)) if e >= 2));
}

#[test]
fn nxdomain_an_empty_answer_and_addressless_targets_keep_the_last_answer() {
    let mut dns = Dnsmasq::start(
        60,
        &[
            srv(NAME, "a.example.internal", 7001, 0, 1),
            host("a.example.internal", &["127.0.0.1"]),
        ],
    );
    let mut source = Followed::start(&config(dns.addr(), &[("web", NAME, "300ms")]));
    source.expect("web", &[found("127.0.0.1:7001", 1, 0)], WITHIN);
    let mut errors = 0;
    for (why, records) in [
        // No record at all under the name: NXDOMAIN.
        ("NXDOMAIN", vec![host("a.example.internal", &["127.0.0.1"])]),
        // The name exists, without SRV: NOERROR, no answer.
        ("an empty answer", vec![host(NAME, &["127.0.0.9"])]),
        // Records whose only target has no address.
        (
            "a target without address",
            vec![srv(NAME, "gone.example.internal", 7001, 0, 1)],
        ),
    ] {
        eprintln!("now: {why}");
        dns.set(&records);
        source.expect_down("web", errors + 2, WITHIN);
        source.quiet(Duration::from_millis(700));
        errors = source.status("web").unwrap().1;
    }
    dns.set(&[
        srv(NAME, "b.example.internal", 7002, 0, 1),
        host("b.example.internal", &["127.0.0.2"]),
    ]);
    source.expect("web", &[found("127.0.0.2:7002", 1, 0)], WITHIN);
    assert_eq!(source.status("web").map(|s| s.0), Some(true));
}

#[test]
fn a_single_dot_target_empties_the_service() {
    let mut dns = Dnsmasq::start(
        60,
        &[
            srv(NAME, "a.example.internal", 7001, 0, 1),
            host("a.example.internal", &["127.0.0.1"]),
        ],
    );
    let mut source = Followed::start(&config(dns.addr(), &[("web", NAME, "300ms")]));
    source.expect("web", &[found("127.0.0.1:7001", 1, 0)], WITHIN);
    // `srv-host=NAME` alone: one record, target "." (RFC 2782: decidedly
    // not available).
    dns.set(&[format!("srv-host={NAME}")]);
    source.expect("web", &[], WITHIN);
    assert_eq!(source.status("web").map(|s| s.0), Some(true));
}

#[test]
fn a_cname_target_is_looked_up_and_addressless_or_unusable_targets_skipped() {
    // dnsmasq sends no additional records for a CNAME target, so its
    // addresses come from A and AAAA queries.
    let dns = Dnsmasq::start(
        60,
        &[
            srv(NAME, "alias.example.internal", 7001, 0, 2),
            srv(NAME, "gone.example.internal", 7002, 0, 1),
            // No connection can go to a multicast address: skipped.
            srv(NAME, "nowhere.example.internal", 7003, 0, 1),
            host("nowhere.example.internal", &["224.0.0.1"]),
            "cname=alias.example.internal,a.example.internal".to_string(),
            host("a.example.internal", &["127.0.0.1", "::1"]),
        ],
    );
    let mut source = Followed::start(&config(dns.addr(), &[("web", NAME, "300ms")]));
    source.expect(
        "web",
        &[found("127.0.0.1:7001", 2, 0), found("[::1]:7001", 2, 0)],
        WITHIN,
    );
    assert_eq!(source.status("web"), Some((true, 0)));
}

#[test]
fn a_truncated_answer_is_fetched_over_tcp() {
    // 120 targets with their addresses: about 5 KB, more than a UDP
    // answer may carry, so dnsmasq sets TC and the resolver asks over TCP.
    let mut records = Vec::new();
    let mut expected = Vec::new();
    for i in 0..120u16 {
        let target = format!("target-{i}.example.internal");
        let ip = format!("127.0.1.{}", i + 1);
        records.push(srv(NAME, &target, 8000 + i, 0, 1));
        records.push(host(&target, &[&ip]));
        expected.push(found(&format!("{ip}:{}", 8000 + i), 1, 0));
    }
    let dns = Dnsmasq::start(60, &records);
    let mut source = Followed::start(&config(dns.addr(), &[("web", NAME, "1s")]));
    source.expect("web", &expected, WITHIN);
}

#[test]
fn a_reload_starts_restarts_and_stops_srv_services() {
    const API: &str = "_api._tcp.example.internal";
    const OTHER: &str = "_other._tcp.example.internal";
    let dns = Dnsmasq::start(
        60,
        &[
            srv(NAME, "a.example.internal", 7001, 0, 1),
            srv(API, "b.example.internal", 7002, 0, 1),
            srv(OTHER, "c.example.internal", 7003, 0, 1),
            host("a.example.internal", &["127.0.0.1"]),
            host("b.example.internal", &["127.0.0.2"]),
            host("c.example.internal", &["127.0.0.3"]),
        ],
    );
    let mut source = Followed::start(&config(dns.addr(), &[("web", NAME, "300ms")]));
    source.expect("web", &[found("127.0.0.1:7001", 1, 0)], WITHIN);
    assert_eq!(source.status("api"), None);

    // api joins.
    source.discovery.reconfigure(&config(
        dns.addr(),
        &[("web", NAME, "300ms"), ("api", API, "300ms")],
    ));
    source.expect("api", &[found("127.0.0.2:7002", 1, 0)], WITHIN);
    assert_eq!(source.status("api"), Some((true, 0)));

    // api follows another name; web leaves SRV: its endpoints leave with it.
    source.discovery.reconfigure(&config(
        dns.addr(),
        &[("web", NAME, "300ms"), ("api", OTHER, "300ms")],
    ));
    source.expect("api", &[found("127.0.0.3:7003", 1, 0)], WITHIN);
    let text = format!(
        "[discovery.dns]\nservers = [\"{}\"]\ntimeout = \"200ms\"\n\
         [listeners.web]\nlisten = \"127.0.0.1:0\"\nservice = \"web\"\n\
         [services.web]\n\
         [services.api]\ndiscovery = {{ srv = \"{OTHER}\", refresh = \"300ms\" }}\n",
        dns.addr()
    );
    source
        .discovery
        .reconfigure(&Config::parse(&text, Path::new("dns_srv.toml")).unwrap());
    source.expect("web", &[], WITHIN);
    assert_eq!(source.status("web"), None, "dns:web is forgotten");
    assert_eq!(source.status("api").map(|s| s.0), Some(true));
    // api's task was left alone: it sends nothing new.
    source.quiet(Duration::from_millis(700));
}

#[test]
fn a_reload_to_other_name_servers_asks_them() {
    let first = Dnsmasq::start(
        60,
        &[
            srv(NAME, "a.example.internal", 7001, 0, 1),
            host("a.example.internal", &["127.0.0.1"]),
        ],
    );
    let second = Dnsmasq::start(
        60,
        &[
            srv(NAME, "b.example.internal", 7002, 0, 1),
            host("b.example.internal", &["127.0.0.2"]),
        ],
    );
    // A refresh of an hour: only the restart can ask again in time.
    let mut source = Followed::start(&config(first.addr(), &[("web", NAME, "1h")]));
    source.expect("web", &[found("127.0.0.1:7001", 1, 0)], WITHIN);
    source
        .discovery
        .reconfigure(&config(second.addr(), &[("web", NAME, "1h")]));
    source.expect("web", &[found("127.0.0.2:7002", 1, 0)], WITHIN);
}

// ---- End to end: the `l4mesh` binary following a real DNS server ----

/// A config for the binary: an admin listener, `[discovery.dns]` on `dns`,
/// listener `web` in front of service `web` that follows NAME's SRV
/// records, plus `extra` (tables after the service's keys).
fn binary_config(mode: Mode, dns: SocketAddr, extra: &str) -> String {
    with_mode(
        &format!(
            "[runtime]\nworkers = 2\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [discovery.dns]\nservers = [\"{dns}\"]\ntimeout = \"200ms\"\n\
             [listeners.web]\nlisten = \"127.0.0.1:0\"\nservice = \"web\"\n\
             [services.web]\nconnect_timeout = \"500ms\"\n\
             discovery = {{ srv = \"{NAME}\", refresh = \"300ms\" }}\n{extra}"
        ),
        mode,
    )
}

/// SRV records for NAME: one target per (host, port, priority), each host
/// at 127.0.0.1.
fn srv_records(targets: &[(&str, u16, u16)]) -> Vec<String> {
    let mut records = Vec::new();
    for (name, port, priority) in targets {
        let target = format!("{name}.example.internal");
        records.push(srv(NAME, &target, *port, *priority, 1));
        records.push(host(&target, &["127.0.0.1"]));
    }
    records
}

/// Tags seen over `n` new connections.
fn tags(addr: SocketAddr, n: usize) -> std::collections::BTreeSet<u8> {
    (0..n).filter_map(|_| tag_of(addr)).collect()
}

fn set_of(tags: &[u8]) -> std::collections::BTreeSet<u8> {
    tags.iter().copied().collect()
}

/// Sends `len` bytes through `stream` (an echo) and checks the SHA-256 of
/// what comes back.
fn echo_checked(stream: &mut std::net::TcpStream, len: usize) {
    use sha2::{Digest, Sha256};
    use std::io::{Read, Write};
    let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    let sent = Sha256::digest(&data);
    let mut writer = stream.try_clone().unwrap();
    let send = std::thread::spawn(move || writer.write_all(&data).unwrap());
    let mut back = vec![0; len];
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.read_exact(&mut back).unwrap();
    send.join().unwrap();
    assert_eq!(Sha256::digest(&back), sent, "the echo came back intact");
}

per_mode! {
    fn through_the_binary_srv_targets_serve_and_a_removed_record_takes_no_new_connections(mode) {
        let a = tagged_echo_backend(b'A');
        let b = tagged_echo_backend(b'B');
        let mut dns = Dnsmasq::start(60, &srv_records(&[("a", a.port(), 0), ("b", b.port(), 0)]));
        let binary = Binary::start(&binary_config(mode, dns.addr(), ""), &[]);
        let web = binary.addr();
        eventually(WITHIN, "both SRV targets serve", || tags(web, 20) == set_of(b"AB"));
        // A connection to a, open while its record goes.
        let mut open = (0..50)
            .find_map(|_| {
                let mut s = std::net::TcpStream::connect(web).unwrap();
                let mut tag = [0u8];
                std::io::Read::read_exact(&mut s, &mut tag).unwrap();
                (tag[0] == b'A').then_some(s)
            })
            .expect("a connection to a");
        echo_checked(&mut open, 1 << 16);
        dns.set(&srv_records(&[("b", b.port(), 0)]));
        eventually(WITHIN, "only b takes new connections", || tags(web, 20) == set_of(b"B"));
        // The open connection was left alone.
        echo_checked(&mut open, 1 << 20);
    }
}

/// How many of `n` new connections reached each tag.
fn shares(addr: SocketAddr, n: usize) -> BTreeMap<u8, usize> {
    let mut counts = BTreeMap::new();
    for tag in (0..n).filter_map(|_| tag_of(addr)) {
        *counts.entry(tag).or_default() += 1;
    }
    counts
}

#[test]
fn through_the_binary_srv_weights_share_the_connections() {
    let a = tagged_echo_backend(b'A');
    let b = tagged_echo_backend(b'B');
    let weighted = |wa: u16, wb: u16| {
        vec![
            srv(NAME, "a.example.internal", a.port(), 0, wa),
            srv(NAME, "b.example.internal", b.port(), 0, wb),
            host("a.example.internal", &["127.0.0.1"]),
            host("b.example.internal", &["127.0.0.1"]),
        ]
    };
    let mut dns = Dnsmasq::start(60, &weighted(3, 1));
    let binary = Binary::start(&binary_config(Mode::DEFAULT, dns.addr(), ""), &[]);
    let web = binary.addr();
    eventually(WITHIN, "both serve", || tags(web, 8) == set_of(b"AB"));
    // Smooth weighted round robin is exact over a whole cycle.
    let weighted_3_1 = BTreeMap::from([(b'A', 30), (b'B', 10)]);
    assert_eq!(shares(web, 40), weighted_3_1);
    // SRV weights past 256 are scaled, keeping the ratio: 1:1.
    dns.set(&weighted(5000, 5000));
    let even = BTreeMap::from([(b'A', 20), (b'B', 20)]);
    eventually(WITHIN, "reweighted to 1:1", || shares(web, 40) == even);
}

#[test]
fn through_the_binary_the_next_priority_serves_while_the_first_is_down() {
    let mut a = Switchable::tagged(b'A');
    let b = tagged_echo_backend(b'B');
    let dns = Dnsmasq::start(
        60,
        &srv_records(&[("a", a.addr.port(), 10), ("b", b.port(), 20)]),
    );
    let health = "[services.web.health]\ninterval = \"200ms\"\ntimeout = \"100ms\"\n\
                  healthy_threshold = 1\nunhealthy_threshold = 1\n";
    let binary = Binary::start(&binary_config(Mode::DEFAULT, dns.addr(), health), &[]);
    let web = binary.addr();
    eventually(WITHIN, "tier 0 (a) takes everything", || {
        tags(web, 20) == set_of(b"A")
    });
    a.stop();
    // Clients fail over at once (a refuses), and health checks mark a down.
    eventually(WITHIN, "tier 1 (b) takes everything", || {
        tags(web, 20) == set_of(b"B")
    });
    a.restart();
    eventually(WITHIN, "tier 0 serves again once up", || {
        tags(web, 20) == set_of(b"A")
    });
}

#[test]
fn through_the_binary_a_dead_dns_server_leaves_the_endpoints_serving() {
    let a = tagged_echo_backend(b'A');
    let b = tagged_echo_backend(b'B');
    let mut dns = Dnsmasq::start(60, &srv_records(&[("a", a.port(), 0)]));
    let binary = Binary::start(&binary_config(Mode::DEFAULT, dns.addr(), ""), &[]);
    let web = binary.addr();
    let admin = binary.admin_addr(Duration::from_secs(5));
    eventually(WITHIN, "a serves", || tags(web, 5) == set_of(b"A"));
    assert_eq!(discovery_metrics(admin, "dns:web").0, 1.0);
    dns.stop();
    eventually(WITHIN, "dns:web down, errors counted", || {
        let (up, errors) = discovery_metrics(admin, "dns:web");
        up == 0.0 && errors >= 2.0
    });
    binary.wait_for_line(WITHIN, "keeping its last 1 endpoint(s)");
    assert_eq!(tags(web, 20), set_of(b"A"), "the last answer keeps serving");
    dns.set(&srv_records(&[("a", a.port(), 0), ("b", b.port(), 0)]));
    eventually(WITHIN, "the change made while away is seen", || {
        tags(web, 20) == set_of(b"AB")
    });
    assert_eq!(discovery_metrics(admin, "dns:web").0, 1.0);
    binary.wait_for_line(WITHIN, "answers again, after");
}
