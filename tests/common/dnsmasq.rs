//! A real DNS server for the SRV tests: Debian's dnsmasq on a free loopback
//! port (UDP and TCP), authoritative-style for `example.internal` (names it
//! has no record for are NXDOMAIN), with records the test sets.
//!
//! dnsmasq rereads only its hosts files on SIGHUP, not `srv-host=`, so
//! [`Dnsmasq::set`] restarts it on the same port and waits until it
//! answers. Every record gets the same TTL (`--local-ttl`).

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary: Debian's path, or the first `dnsmasq` on `PATH`.
fn program() -> &'static str {
    if std::path::Path::new("/usr/sbin/dnsmasq").exists() {
        "/usr/sbin/dnsmasq"
    } else {
        "dnsmasq"
    }
}

/// A running dnsmasq; killed on drop.
pub struct Dnsmasq {
    port: u16,
    ttl: u32,
    dir: super::TempDir,
    child: Option<Child>,
}

impl Dnsmasq {
    /// Starts dnsmasq serving `records` (dnsmasq config lines such as
    /// `srv-host=_echo._tcp.example.internal,a.example.internal,7001,10,5`
    /// and `host-record=a.example.internal,127.0.0.1`) with TTL `ttl`.
    pub fn start(ttl: u32, records: &[String]) -> Dnsmasq {
        let mut last = String::new();
        for _ in 0..10 {
            let port = super::restartable_port();
            let mut server = Dnsmasq {
                port,
                ttl,
                dir: super::TempDir::new(),
                child: None,
            };
            match server.spawn(records) {
                Ok(()) => return server,
                // Someone took the port between the probe and dnsmasq.
                Err(e) => last = e,
            }
        }
        panic!("dnsmasq did not start: {last}");
    }

    /// Where it answers (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Replaces every record: restarts dnsmasq on the same port and waits
    /// until it answers.
    pub fn set(&mut self, records: &[String]) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.spawn(records) {
                Ok(()) => return,
                // The port may take a moment to be free again.
                Err(e) if Instant::now() < deadline => {
                    eprintln!("dnsmasq restart: {e}; again");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("dnsmasq did not restart on port {}: {e}", self.port),
            }
        }
    }

    /// Kills it: its port refuses (ICMP) until [`Dnsmasq::set`] restarts it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes it (SIGSTOP): queries go unanswered and time out.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Thaws it (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let child = self.child.as_ref().expect("dnsmasq is running");
        super::signal_pid(child.id(), name);
    }

    fn spawn(&mut self, records: &[String]) -> Result<(), String> {
        let conf = self.dir.join("dnsmasq.conf");
        let mut text = String::from("local=/example.internal/\n");
        for record in records {
            text.push_str(record);
            text.push('\n');
        }
        std::fs::write(&conf, text).unwrap();
        let log = std::fs::File::create(self.dir.join("dnsmasq.log")).unwrap();
        let mut child = Command::new(program())
            .arg("--keep-in-foreground")
            .arg(format!("--port={}", self.port))
            .arg("--listen-address=127.0.0.1")
            .arg("--bind-interfaces")
            .arg("--no-resolv")
            .arg("--no-hosts")
            .arg("--pid-file=")
            .arg("--log-facility=-")
            .arg(format!("--local-ttl={}", self.ttl))
            .arg(format!("--conf-file={}", conf.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e} (apt-get install dnsmasq)", program()))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(self.dir.join("dnsmasq.log")).unwrap_or_default();
                return Err(format!("dnsmasq exited ({status}): {log}"));
            }
            if answers(self.addr()) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("dnsmasq did not answer within 5s".into());
            }
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether a DNS server answers at `addr` (any reply to a query for
/// `ready.example.internal` A within 100 ms).
fn answers(addr: SocketAddr) -> bool {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut query = vec![0x4c, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["ready", "example", "internal"] {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    if socket.send_to(&query, addr).is_err() {
        std::thread::sleep(Duration::from_millis(20));
        return false;
    }
    let mut reply = [0u8; 512];
    match socket.recv_from(&mut reply) {
        Ok((n, _)) => n >= 2 && reply[..2] == query[..2],
        Err(_) => {
            // Refused (nothing listens yet) returns at once: do not spin.
            std::thread::sleep(Duration::from_millis(20));
            false
        }
    }
}

/// `srv-host=` for `name` pointing at `target:port` with `priority` and
/// `weight`.
pub fn srv(name: &str, target: &str, port: u16, priority: u16, weight: u16) -> String {
    format!("srv-host={name},{target},{port},{priority},{weight}")
}

/// `host-record=` giving `name` these addresses.
pub fn host(name: &str, addrs: &[&str]) -> String {
    format!("host-record={name},{}", addrs.join(","))
}
