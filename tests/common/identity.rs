//! What the identity and routing tests share: clients that connect from a
//! chosen loopback address, a backend that records what each connection
//! brought, the JSON access log read back, and sha256 of payloads.

use super::eventually;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, channel};
use std::thread;
use std::time::Duration;

/// Connects to `addr` from `source` (any port), with a 10 s read timeout.
pub fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let ip: IpAddr = source.parse().unwrap();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::new(ip, 0).into()).unwrap();
    socket.connect(&addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// `len` bytes of a pattern no header could be mistaken for.
pub fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

/// The sha256 of `bytes`, in hex.
pub fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Sends `data` and reads back as many bytes (an echo through the proxy),
/// then half-closes and expects EOF.
pub fn echo_exactly(stream: &mut TcpStream, data: &[u8]) {
    let mut writer = stream.try_clone().unwrap();
    let sent = data.to_vec();
    let sender = thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut got = Vec::new();
    stream.read_to_end(&mut got).unwrap();
    sender.join().unwrap();
    assert_eq!(got.len(), data.len(), "echoed bytes");
    assert_eq!(sha(&got), sha(data), "echoed bytes' sha256");
}

/// Sends `data` and reads to the end: whether the connection was reset
/// (a reset the write already reported counts: the read after it sees EOF).
pub fn reset_after_sending(stream: &mut TcpStream, data: &[u8]) -> bool {
    if let Err(e) = stream.write_all(data) {
        return matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        );
    }
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

/// Sample `family{listener="LISTENER",reason="REASON"}` of `served`'s
/// /metrics (-1 when absent).
pub fn by_reason(served: &super::Served, family: &str, listener: &str, reason: &str) -> f64 {
    let admin = served.server.admin_addr().unwrap();
    super::samples(admin)
        .get(&format!(
            "{family}{{listener=\"{listener}\",reason=\"{reason}\"}}"
        ))
        .copied()
        .unwrap_or(-1.0)
}

/// A backend that reads each connection to its end, answers nothing, and
/// hands over what it received.
pub struct Recorder {
    /// Where it listens.
    pub addr: SocketAddr,
    received: Receiver<Vec<u8>>,
}

impl Recorder {
    /// Starts one.
    pub fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, received) = channel();
        thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let tx = tx.clone();
                thread::spawn(move || {
                    let mut bytes = Vec::new();
                    let _ = stream.read_to_end(&mut bytes);
                    let _ = tx.send(bytes);
                });
            }
        });
        Recorder { addr, received }
    }

    /// What the next connection brought, once it ended.
    pub fn next(&self) -> Vec<u8> {
        self.received
            .recv_timeout(Duration::from_secs(10))
            .expect("a connection reached the backend")
    }

    /// Whether a connection ended within `wait`.
    pub fn got_any(&self, wait: Duration) -> bool {
        self.received.recv_timeout(wait).is_ok()
    }
}

/// A JSON access log file, read back.
pub struct AccessLog(pub PathBuf);

impl AccessLog {
    /// The `[access_log]` table that writes it.
    pub fn table(&self) -> String {
        format!(
            "[access_log]\npath = \"{}\"\nformat = \"json\"\n",
            self.0.display()
        )
    }

    /// Every record so far.
    pub fn records(&self) -> Vec<serde_json::Value> {
        read_records(&self.0)
    }

    /// Waits for `n` records of listener `listener` and returns them.
    pub fn wait(&self, listener: &str, n: usize) -> Vec<serde_json::Value> {
        let mut found = Vec::new();
        eventually(
            Duration::from_secs(10),
            &format!("{n} records of {listener}"),
            || {
                found = self
                    .records()
                    .into_iter()
                    .filter(|r| r["listener"] == listener)
                    .collect();
                found.len() >= n
            },
        );
        found
    }
}

impl AccessLog {
    /// Waits for the record of listener `listener` whose client is
    /// `client` (peers' readiness probes make records of their own).
    pub fn of_client(&self, listener: &str, client: &str) -> serde_json::Value {
        let mut found = serde_json::Value::Null;
        eventually(
            Duration::from_secs(10),
            &format!("a record of {client} on {listener}"),
            || {
                if let Some(r) = self
                    .records()
                    .into_iter()
                    .find(|r| r["listener"] == listener && r["client"] == client)
                {
                    found = r;
                }
                !found.is_null()
            },
        );
        found
    }
}

fn read_records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A TLS ClientHello for `sni` (none if `None`) offering `alpn`, padded
/// with `pad` bytes (a padding extension, as big post-quantum key shares
/// make real hellos big), in records of at most 16 KiB.
pub fn client_hello(sni: Option<&str>, alpn: &[&str], pad: usize) -> Vec<u8> {
    fn len16(bytes: &[u8]) -> Vec<u8> {
        let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(bytes);
        out
    }
    let mut ext = Vec::new();
    let mut push = |kind: u16, data: Vec<u8>| {
        ext.extend_from_slice(&kind.to_be_bytes());
        ext.extend_from_slice(&len16(&data));
    };
    if let Some(name) = sni {
        let mut entry = vec![0u8];
        entry.extend_from_slice(&len16(name.as_bytes()));
        push(0, len16(&entry));
    }
    if !alpn.is_empty() {
        let mut list = Vec::new();
        for p in alpn {
            list.push(p.len() as u8);
            list.extend_from_slice(p.as_bytes());
        }
        push(16, len16(&list));
    }
    if pad > 0 {
        push(21, vec![0; pad]);
    }
    let mut body = vec![3, 3];
    body.extend_from_slice(&[9; 32]);
    body.push(0);
    body.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
    body.extend_from_slice(&len16(&ext));
    let mut message = vec![1];
    message.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    message.extend_from_slice(&body);
    let mut wire = Vec::new();
    for chunk in message.chunks(16_384) {
        wire.extend_from_slice(&[22, 3, 1]);
        wire.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        wire.extend_from_slice(chunk);
    }
    wire
}
