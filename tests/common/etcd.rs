//! Real etcd for the fleet tests: Debian's `etcd` (3.4) on free loopback
//! ports with a temp data dir, alone or as a three-member cluster, and
//! `etcdctl` (API v3) to change its keys.
//!
//! Started with a 50 ms heartbeat and 500 ms election timeout, a member
//! answers within about 100 ms. etcd 3.4 supports amd64 without
//! `ETCD_UNSUPPORTED_ARCH`; on other arches the harness sets it. 3.4 has no
//! `--unsafe-no-fsync`.

use super::{TempDir, restartable_port};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One etcd member; killed (and its data dir removed) on drop.
pub struct Etcd {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// `--initial-cluster` (just this member, or the whole cluster).
    cluster: String,
    dir: TempDir,
    child: Option<Child>,
}

impl Etcd {
    /// A single-member etcd, answering.
    pub fn start() -> Etcd {
        let mut last = String::new();
        for _ in 0..5 {
            let (client_port, peer_port) = (restartable_port(), restartable_port());
            let mut etcd = Etcd::new("solo", client_port, peer_port, String::new());
            etcd.cluster = format!("solo={}", etcd.peer_url());
            etcd.spawn();
            match etcd.wait_healthy(Duration::from_secs(10)) {
                Ok(()) => return etcd,
                // Someone took a port between the probe and etcd.
                Err(e) => last = e,
            }
        }
        panic!("etcd did not start: {last}");
    }

    fn new(name: &str, client_port: u16, peer_port: u16, cluster: String) -> Etcd {
        Etcd {
            name: name.to_string(),
            client_port,
            peer_port,
            cluster,
            dir: TempDir::new(),
            child: None,
        }
    }

    /// Its client URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "etcd {} is running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .unwrap();
        let mut command = Command::new("etcd");
        command
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg("--listen-client-urls")
            .arg(self.url())
            .arg("--advertise-client-urls")
            .arg(self.url())
            .arg("--listen-peer-urls")
            .arg(self.peer_url())
            .arg("--initial-advertise-peer-urls")
            .arg(self.peer_url())
            .arg("--initial-cluster")
            .arg(&self.cluster)
            .arg("--initial-cluster-token")
            .arg(format!("l4mesh-test-{}", self.cluster))
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--snapshot-count", "10000", "--logger", "zap"])
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if std::env::consts::ARCH != "x86_64" {
            command.env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH);
        }
        self.child = Some(
            command
                .spawn()
                .expect("cannot run etcd (apt-get install etcd-server etcd-client)"),
        );
    }

    /// Waits until `/health` says true (a leader is known), or the process
    /// exits, or `within` passes.
    pub fn wait_healthy(&mut self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!(
                    "etcd {} exited ({status}): {}",
                    self.name,
                    self.log()
                ));
            }
            if self.healthy() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "etcd {} not healthy within {within:?}: {}",
                    self.name,
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether `GET /health` answers `"health":"true"`.
    pub fn healthy(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.client_port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        if stream
            .write_all(b"GET /health HTTP/1.0\r\nHost: etcd\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut reply = String::new();
        let _ = stream.read_to_string(&mut reply);
        reply.contains("\"health\":\"true\"")
    }

    /// Its log so far (the tail).
    pub fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Kills it (SIGKILL): its port refuses until [`Etcd::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same ports and data dir, and waits until it
    /// is healthy (for a cluster member: until it has a leader).
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.spawn();
            match self.wait_healthy(Duration::from_secs(10)) {
                Ok(()) => return,
                // The port may take a moment to be free again.
                Err(e) if Instant::now() < deadline && self.child.is_none() => {
                    eprintln!("etcd restart: {e}; again");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("etcd {} did not restart: {e}", self.name),
            }
        }
    }

    /// Freezes it (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Thaws it (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let child = self.child.as_ref().expect("etcd is running");
        super::signal_pid(child.id(), name);
    }

    /// Runs `etcdctl ARGS` against this member; its stdout. Panics if it
    /// fails.
    pub fn ctl(&self, args: &[&str]) -> String {
        etcdctl(&self.url(), args)
    }

    /// Runs `etcdctl ARGS` with `input` on its stdin (for `txn`); its
    /// stdout. Panics if it fails.
    pub fn ctl_stdin(&self, args: &[&str], input: &str) -> String {
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.url())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run etcdctl");
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Puts `key` = `value`.
    pub fn put(&self, key: &str, value: &str) {
        self.ctl(&["put", "--", key, value]);
    }

    /// Deletes `key`; how many keys went.
    pub fn delete(&self, key: &str) -> u64 {
        self.ctl(&["del", "--", key]).trim().parse().unwrap_or(0)
    }

    /// The value of `key`, if any.
    pub fn get(&self, key: &str) -> Option<String> {
        let out = self.ctl(&["get", "--print-value-only", "--", key]);
        (!out.is_empty()).then(|| out.trim_end_matches('\n').to_string())
    }

    /// Every key under `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.ctl(&["get", "--prefix", "--keys-only", "--", prefix])
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        let out = self.ctl(&["get", "-w", "json", "--", "/"]);
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        json["header"]["revision"].as_i64().unwrap()
    }

    /// Compacts the history up to the current revision; returns it.
    pub fn compact(&self) -> i64 {
        let revision = self.revision();
        self.ctl(&["compact", "--physical", &revision.to_string()]);
        revision
    }
}

/// Runs `etcdctl --endpoints ENDPOINTS ARGS` (API v3); its stdout. Panics
/// if it keeps failing for 10 s.
///
/// Each try has 2 s: a write sent to a follower just as its leader dies is
/// forwarded to the dead leader and lost, and its client waits out its
/// whole timeout, although a new leader is elected within a second; so a
/// try that times out is made again (a put or delete repeated is harmless
/// here).
pub fn etcdctl(endpoints: &str, args: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(endpoints)
            .arg("--command-timeout=2s")
            .args(args)
            .output()
            .expect("cannot run etcdctl");
        if out.status.success() {
            return String::from_utf8(out.stdout).unwrap();
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            Instant::now() < deadline
                && (err.contains("deadline exceeded") || err.contains("timed out")),
            "etcdctl {args:?}: {err}"
        );
        eprintln!("etcdctl {args:?} timed out; again");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_ref() {
            // A frozen member must be thawed to die promptly and cleanly.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(child.id().to_string())
                .status();
        }
        self.stop();
    }
}

/// A cluster of members on loopback.
pub struct Cluster {
    /// The members, in `--initial-cluster` order.
    pub members: Vec<Etcd>,
}

impl Cluster {
    /// Starts `n` members and waits until each is healthy.
    pub fn start(n: usize) -> Cluster {
        let mut last = String::new();
        for _ in 0..3 {
            match Cluster::try_start(n) {
                Ok(cluster) => return cluster,
                // Someone took a port between the probe and etcd.
                Err(e) => last = e,
            }
        }
        panic!("etcd cluster did not start: {last}");
    }

    fn try_start(n: usize) -> Result<Cluster, String> {
        let ports: Vec<(u16, u16)> = (0..n)
            .map(|_| (restartable_port(), restartable_port()))
            .collect();
        let cluster: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let cluster = cluster.join(",");
        let mut members: Vec<Etcd> = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| Etcd::new(&format!("m{i}"), *client, *peer, cluster.clone()))
            .collect();
        // All at once: none can elect a leader alone.
        for member in &mut members {
            member.spawn();
        }
        for member in &mut members {
            member.wait_healthy(Duration::from_secs(15))?;
        }
        Ok(Cluster { members })
    }

    /// Every member's client URL, comma-separated.
    pub fn urls(&self) -> String {
        let urls: Vec<String> = self.members.iter().map(Etcd::url).collect();
        urls.join(",")
    }

    /// A running member, to read and write through.
    pub fn any(&self) -> &Etcd {
        self.members
            .iter()
            .find(|m| m.child.is_some())
            .expect("a member is running")
    }

    /// Kills member `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        self.members[i].stop();
    }
}
