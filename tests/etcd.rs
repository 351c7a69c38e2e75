//! The etcd source against real etcd (stage 1: the source alone, its feed a
//! channel) and `l4mesh ctl --etcd` as a real process.

mod common;
mod support_etcd;

use common::signal_pid;
use l4mesh::config::EtcdConfig;
use l4mesh::discovery::{Feed, Scope, Update};
use l4mesh::metrics::{DiscoveryStats, SourceStatus};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use support_etcd::{Etcd, Gate, Killed, Kv};

const PREFIX: &str = "/l4mesh/";

fn key(service: &str, addr: &str) -> String {
    format!("{PREFIX}services/{service}/endpoints/{addr}")
}

fn weight(n: u32) -> String {
    format!("{{\"weight\": {n}}}")
}

/// Every log line, for the tests that look for a warning.
fn logs() -> &'static Mutex<Vec<String>> {
    static LOGS: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    LOGS.get_or_init(Mutex::default)
}

struct Recorder;
impl log::Log for Recorder {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Info
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            let line = format!("{} {}", r.level(), r.args());
            eprintln!("{line}");
            logs().lock().unwrap().push(line);
        }
    }
    fn flush(&self) {}
}

/// The etcd source running on its own thread, its updates in a channel.
struct Source {
    rx: Receiver<Update>,
    status: Arc<SourceStatus>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Each service's endpoints (addr, weight) as the updates so far say.
    view: BTreeMap<String, Vec<(SocketAddr, u32)>>,
    /// Every update received, in order.
    updates: Vec<Update>,
}

impl Source {
    fn start(endpoints: Vec<String>) -> Source {
        static LOGGER: Recorder = Recorder;
        if log::set_logger(&LOGGER).is_ok() {
            log::set_max_level(log::LevelFilter::Info);
        }
        let config = EtcdConfig {
            endpoints,
            prefix: PREFIX.into(),
            auth: None,
            tls: None,
            dial_timeout: Duration::from_millis(500),
        };
        let (tx, rx) = channel();
        let tx = Mutex::new(tx);
        let feed = Feed::new(move |u| {
            let _ = tx.lock().unwrap().send(u);
        });
        let status = DiscoveryStats::default().source("etcd");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let s = Arc::clone(&status);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                tokio::select! {
                    () = l4mesh::discovery::etcd::run(config, feed, s) => {}
                    _ = stopped => {}
                }
            });
        });
        Source {
            rx,
            status,
            stop: Some(stop),
            thread: Some(thread),
            view: BTreeMap::new(),
            updates: Vec::new(),
        }
    }

    fn apply(&mut self, u: Update) {
        if u.scope == Scope::All {
            self.view.clear();
        }
        for (service, list) in &u.services {
            let list: Vec<_> = list.iter().map(|d| (d.addr, d.weight)).collect();
            assert!(
                !list.is_empty() || self.view.contains_key(service) || u.scope == Scope::All,
                "an empty list for a service that had nothing: {u:?}"
            );
            if list.is_empty() {
                self.view.remove(service);
            } else {
                self.view.insert(service.clone(), list);
            }
        }
        self.updates.push(u);
    }

    /// Takes updates until `check` holds on the view, within `within`.
    fn wait(&mut self, within: Duration, what: &str, check: impl Fn(&Source) -> bool) {
        let deadline = Instant::now() + within;
        while !check(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(u) => self.apply(u),
                Err(_) => panic!(
                    "{what}: not within {within:?}; view {:?}; updates {:?}",
                    self.view, self.updates
                ),
            }
        }
    }

    /// Takes what arrives in `during`; none of it may be an update.
    fn quiet(&mut self, during: Duration) {
        if let Ok(u) = self.rx.recv_timeout(during) {
            panic!("an update while nothing changed: {u:?}");
        }
    }

    fn endpoints(&self, service: &str) -> Vec<(SocketAddr, u32)> {
        self.view.get(service).cloned().unwrap_or_default()
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn up_within(src: &Source, within: Duration) {
    let deadline = Instant::now() + within;
    while !src.status.is_up() {
        assert!(
            Instant::now() < deadline,
            "the source not up within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

const SOON: Duration = Duration::from_secs(5);

#[test]
fn initial_read_then_puts_deletes_and_weights() {
    let etcd = Etcd::start();
    let mut kv = etcd.kv();
    kv.put(&key("web", "127.0.0.1:9001"), &weight(1));
    kv.put(
        &key("web", "127.0.0.1:9002"),
        "{\"weight\": 3, \"zone\": \"a\"}",
    );
    kv.put(&key("db", "127.0.0.1:5432"), "{}");
    let mut src = Source::start(etcd.urls());
    src.wait(SOON, "the initial read", |s| !s.updates.is_empty());
    let first = &src.updates[0];
    assert_eq!(first.scope, Scope::All);
    assert_eq!(first.services.len(), 2, "{first:?}");
    assert_eq!(
        src.endpoints("web"),
        vec![(a("127.0.0.1:9001"), 1), (a("127.0.0.1:9002"), 3)]
    );
    assert_eq!(src.endpoints("db"), vec![(a("127.0.0.1:5432"), 1)]);
    up_within(&src, SOON);

    kv.put(&key("web", "127.0.0.1:9003"), &weight(2));
    src.wait(SOON, "a put", |s| s.endpoints("web").len() == 3);
    let last = src.updates.last().unwrap();
    assert_eq!(last.scope, Scope::Services);
    assert_eq!(last.services.keys().collect::<Vec<_>>(), ["web"]);

    kv.put(&key("web", "127.0.0.1:9001"), &weight(7));
    src.wait(SOON, "a new weight", |s| {
        s.endpoints("web").contains(&(a("127.0.0.1:9001"), 7))
    });
    kv.delete(&key("web", "127.0.0.1:9002"));
    src.wait(SOON, "a delete", |s| {
        s.endpoints("web") == vec![(a("127.0.0.1:9001"), 7), (a("127.0.0.1:9003"), 2)]
    });
    kv.delete(&key("db", "127.0.0.1:5432"));
    src.wait(SOON, "the last endpoint of db deleted", |s| {
        !s.view.contains_key("db")
    });
    assert_eq!(
        src.updates.last().unwrap().services.get("db"),
        Some(&Vec::new())
    );
}

#[test]
fn one_transaction_of_100_puts_is_one_update() {
    let etcd = Etcd::start();
    let mut kv = etcd.kv();
    let mut src = Source::start(etcd.urls());
    src.wait(SOON, "the initial read", |s| !s.updates.is_empty());
    let pairs: Vec<(String, String)> = (0..100)
        .map(|i| {
            (
                key(&format!("s{}", i % 10), &format!("127.0.0.1:{}", 10000 + i)),
                weight(1),
            )
        })
        .collect();
    kv.put_all(&pairs);
    src.wait(SOON, "100 endpoints", |s| {
        s.view.values().map(Vec::len).sum::<usize>() == 100
    });
    assert_eq!(src.updates.len(), 2, "one update for the transaction");
    assert_eq!(src.updates[1].services.len(), 10);
    src.quiet(Duration::from_millis(300));
}

#[test]
fn malformed_keys_and_values_are_skipped_with_a_warning() {
    let etcd = Etcd::start();
    let mut kv = etcd.kv();
    let mut src = Source::start(etcd.urls());
    src.wait(SOON, "the initial read", |s| !s.updates.is_empty());
    let bad = [
        (key("web", "127.0.0.1:9002"), "not json".to_string()),
        (key("web", "127.0.0.1:9003"), weight(0)),
        (key("web", "127.0.0.1:9004"), weight(257)),
        (key("web", "nohost"), weight(1)),
        (key("web", "0.0.0.0:80"), weight(1)),
        (format!("{PREFIX}services/web/other/127.0.0.1:1"), weight(1)),
    ];
    let mut pairs: Vec<(String, String)> = bad.to_vec();
    pairs.push((key("web", "127.0.0.1:9001"), weight(2)));
    pairs.push((key("api", "[::1]:8080"), weight(1)));
    kv.put_all(&pairs);
    src.wait(SOON, "the good endpoints", |s| s.view.len() == 2);
    assert_eq!(src.endpoints("web"), vec![(a("127.0.0.1:9001"), 2)]);
    assert_eq!(src.endpoints("api"), vec![(a("[::1]:8080"), 1)]);
    assert_eq!(src.updates.len(), 2, "{:?}", src.updates);
    let logs = logs().lock().unwrap().clone();
    for (k, _) in &bad {
        assert!(
            logs.iter()
                .any(|l| l.starts_with("WARN") && l.contains(k.as_str())),
            "no warning naming {k}: {logs:#?}"
        );
    }
    assert!(
        logs.iter()
            .any(|l| l.contains("not json") && l.contains("not JSON"))
    );
}

#[test]
fn etcd_killed_keeps_the_endpoints_and_catches_up_after_restart() {
    let mut etcd = Etcd::start();
    let mut kv = etcd.kv();
    kv.put(&key("web", "127.0.0.1:9001"), &weight(1));
    let mut src = Source::start(etcd.urls());
    src.wait(SOON, "the initial read", |s| s.endpoints("web").len() == 1);
    etcd.kill(0);
    let deadline = Instant::now() + SOON;
    while src.status.is_up() {
        assert!(
            Instant::now() < deadline,
            "the source still up 5 s after etcd died"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    src.quiet(Duration::from_millis(1500));
    assert!(!src.status.is_up());
    assert!(src.status.errors() >= 1);
    assert!(
        logs()
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("unreachable for") && l.contains("of 1 service(s)")),
        "no staleness warning"
    );
    etcd.restart(0);
    kv.put(&key("web", "127.0.0.1:9002"), &weight(1));
    src.wait(
        Duration::from_secs(10),
        "the change after etcd's return",
        |s| s.endpoints("web").len() == 2,
    );
    up_within(&src, SOON);
    assert!(
        logs()
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("etcd reachable again"))
    );
}

#[test]
fn a_partition_resumes_from_the_last_revision_with_the_changes_made_meanwhile() {
    let etcd = Etcd::start();
    let gate = Gate::new(etcd.addr(0));
    let mut kv = etcd.kv();
    kv.put(&key("web", "127.0.0.1:9001"), &weight(1));
    kv.put(&key("web", "127.0.0.1:9002"), &weight(1));
    let mut src = Source::start(vec![gate.url()]);
    src.wait(SOON, "the initial read", |s| s.endpoints("web").len() == 2);
    gate.cut();
    let deadline = Instant::now() + SOON;
    while src.status.is_up() {
        assert!(
            Instant::now() < deadline,
            "the source still up after the cut"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    kv.delete(&key("web", "127.0.0.1:9001"));
    kv.put(&key("web", "127.0.0.1:9003"), &weight(4));
    kv.put(&key("db", "127.0.0.1:5432"), &weight(1));
    src.quiet(Duration::from_millis(500));
    gate.restore();
    src.wait(
        Duration::from_secs(10),
        "the changes made while cut off",
        |s| {
            s.endpoints("web") == vec![(a("127.0.0.1:9002"), 1), (a("127.0.0.1:9003"), 4)]
                && s.endpoints("db").len() == 1
        },
    );
    assert!(
        src.updates[1..].iter().all(|u| u.scope == Scope::Services),
        "resumed, not resynced: {:?}",
        src.updates
    );
}

#[test]
fn compaction_while_disconnected_resyncs_in_full_without_stale_endpoints() {
    let etcd = Etcd::start();
    let gate = Gate::new(etcd.addr(0));
    let mut kv = etcd.kv();
    kv.put(&key("web", "127.0.0.1:9001"), &weight(1));
    kv.put(&key("old", "127.0.0.1:7000"), &weight(1));
    let mut src = Source::start(vec![gate.url()]);
    src.wait(SOON, "the initial read", |s| s.view.len() == 2);
    gate.cut();
    let deadline = Instant::now() + SOON;
    while src.status.is_up() {
        assert!(
            Instant::now() < deadline,
            "the source still up after the cut"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    kv.delete(&key("old", "127.0.0.1:7000"));
    kv.delete(&key("web", "127.0.0.1:9001"));
    kv.put(&key("web", "127.0.0.1:9002"), &weight(2));
    let rev = kv.put("/unrelated", "x");
    kv.compact(rev);
    let before = src.updates.len();
    gate.restore();
    src.wait(Duration::from_secs(10), "the full resync", |s| {
        s.updates.len() > before
    });
    let resync = &src.updates[before];
    assert_eq!(resync.scope, Scope::All, "{resync:?}");
    assert_eq!(src.view.len(), 1, "{:?}", src.view);
    assert_eq!(src.endpoints("web"), vec![(a("127.0.0.1:9002"), 2)]);
    assert!(
        logs()
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("compacted"))
    );
    kv.put(&key("web", "127.0.0.1:9003"), &weight(1));
    src.wait(SOON, "watching again after the resync", |s| {
        s.endpoints("web").len() == 2
    });
}

#[test]
fn three_members_losing_the_one_in_use_misses_no_change() {
    let mut etcd = Etcd::cluster(3);
    let mut src = Source::start(etcd.urls());
    src.wait(SOON, "the initial read", |s| !s.updates.is_empty());
    // The watch uses one member; killing each in turn kills that one too.
    for i in 0..3 {
        etcd.kill(i);
        let mut kv = Kv::new((0..3).filter(|&j| j != i).map(|j| etcd.url(j)).collect());
        let addr = format!("127.0.0.1:{}", 9000 + i);
        kv.put(&key("web", &addr), &weight(1));
        src.wait(
            Duration::from_secs(20),
            &format!("the put with member {i} dead"),
            |s| s.endpoints("web").len() == i + 1,
        );
        etcd.restart(i);
    }
    assert!(
        src.updates
            .iter()
            .skip(1)
            .all(|u| u.scope == Scope::Services)
    );
}

/// `l4mesh ctl --etcd URL register ...`, running.
fn register_helper(etcd: &Etcd, service: &str, addr: &str, ttl: &str) -> Killed {
    Killed(
        Command::new(env!("CARGO_BIN_EXE_l4mesh"))
            .args(["ctl", "--etcd", &etcd.urls().join(",")])
            .args([
                "register", service, addr, "weight=3", "zone=z1", "--ttl", ttl,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    )
}

fn wait_for_key(kv: &mut Kv, key: &str, present: bool, within: Duration) -> Duration {
    let start = Instant::now();
    while kv.get(key).is_some() != present {
        assert!(
            start.elapsed() < within,
            "{key} {} within {within:?}",
            if present {
                "did not appear"
            } else {
                "did not leave"
            }
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

#[test]
fn register_helper_sigterm_revokes_the_lease_at_once() {
    let etcd = Etcd::start();
    let mut kv = etcd.kv();
    let mut child = register_helper(&etcd, "web", "127.0.0.1:9100", "2s");
    let k = key("web", "127.0.0.1:9100");
    wait_for_key(&mut kv, &k, true, SOON);
    assert_eq!(kv.get(&k).unwrap(), "{\"weight\":3,\"zone\":\"z1\"}");
    // Held past its TTL by the keep-alives.
    std::thread::sleep(Duration::from_secs(3));
    assert!(kv.get(&k).is_some(), "the lease was not kept alive");
    signal_pid(child.id(), "TERM");
    let gone = wait_for_key(&mut kv, &k, false, Duration::from_secs(1));
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(out.starts_with("registered "), "{out}");
    eprintln!("key gone {gone:?} after SIGTERM");
}

#[test]
fn register_helper_killed_leaves_with_its_lease() {
    let etcd = Etcd::start();
    let mut kv = etcd.kv();
    let mut child = register_helper(&etcd, "web", "127.0.0.1:9101", "2s");
    let k = key("web", "127.0.0.1:9101");
    wait_for_key(&mut kv, &k, true, SOON);
    child.kill().unwrap();
    let _ = child.wait();
    std::thread::sleep(Duration::from_millis(1000));
    assert!(kv.get(&k).is_some(), "gone before the lease expired");
    let gone = wait_for_key(&mut kv, &k, false, Duration::from_secs(4));
    eprintln!("key gone {:?} after SIGKILL", gone + Duration::from_secs(1));
}

#[test]
fn ctl_etcd_list_and_deregister() {
    let etcd = Etcd::start();
    let mut kv = etcd.kv();
    kv.put(
        &key("web", "127.0.0.1:9001"),
        "{\"weight\": 2, \"zone\": \"b\"}",
    );
    kv.put(&key("db", "127.0.0.1:5432"), "{}");
    let ctl = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_l4mesh"))
            .args(["ctl", "--etcd", &etcd.url(0)])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (ok, out) = ctl(&["list"]);
    assert!(ok);
    assert_eq!(
        out,
        "db 127.0.0.1:5432 weight=1\nweb 127.0.0.1:9001 weight=2 zone=b\n"
    );
    let (ok, out) = ctl(&["list", "web"]);
    assert!(ok);
    assert_eq!(out, "web 127.0.0.1:9001 weight=2 zone=b\n");
    let (ok, _) = ctl(&["deregister", "web", "127.0.0.1:9001"]);
    assert!(ok);
    assert!(kv.get(&key("web", "127.0.0.1:9001")).is_none());
    let (ok, _) = ctl(&["register", "web", "0.0.0.0:1"]);
    assert!(!ok, "a wildcard address is refused");
}

#[test]
fn register_helper_registers_again_after_etcd_returns() {
    let mut etcd = Etcd::start();
    let mut kv = etcd.kv();
    let mut child = Killed(
        Command::new(env!("CARGO_BIN_EXE_l4mesh"))
            .args(["ctl", "--etcd", &etcd.url(0)])
            .args(["register", "web", "127.0.0.1:9102", "--ttl", "2s"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = Arc::clone(&lines);
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            eprintln!("ctl: {line}");
            sink.lock().unwrap().push(line);
        }
    });
    let k = key("web", "127.0.0.1:9102");
    wait_for_key(&mut kv, &k, true, SOON);
    etcd.kill(0);
    // Down for longer than the TTL: the helper's keep-alives fail.
    std::thread::sleep(Duration::from_secs(3));
    etcd.restart(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("again with lease"))
    {
        assert!(
            Instant::now() < deadline,
            "not registered again: {:?}",
            lines.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The key outlives the old lease and leaves with the new one.
    std::thread::sleep(Duration::from_secs(3));
    assert!(kv.get(&k).is_some(), "the key left with the old lease");
    signal_pid(child.id(), "TERM");
    wait_for_key(&mut kv, &k, false, Duration::from_secs(1));
    assert!(child.wait().unwrap().success());
}
