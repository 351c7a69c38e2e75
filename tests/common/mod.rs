//! Test harness: real loopback backends, the proxy as a library and as the
//! real binary, and polling against deadlines instead of sleeping.
#![allow(dead_code)] // each test file uses part of the harness

pub mod dnsmasq;
pub mod etcd;
pub mod identity;
mod mode;
pub mod peers;

#[allow(unused_imports)] // as dead_code above
pub use mode::{Mode, with_mode};

use l4mesh::{Config, Proxy};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Polls `check` until it is true or `within` passes; panics with `what`.
pub fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// Starts a backend on a fresh loopback port that runs `handle` for every
/// connection, each on its own thread.
pub fn backend(handle: impl Fn(TcpStream) + Send + Sync + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = Arc::new(handle);
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let handle = Arc::clone(&handle);
            thread::spawn(move || handle(stream));
        }
    });
    addr
}

/// A backend that echoes every byte and half-closes after the client does.
pub fn echo_backend() -> SocketAddr {
    backend(|mut stream| {
        let mut reader = stream.try_clone().unwrap();
        let _ = std::io::copy(&mut reader, &mut stream);
        let _ = stream.shutdown(Shutdown::Write);
    })
}

/// A backend that writes its name and closes.
pub fn named_backend(name: &'static str) -> SocketAddr {
    backend(move |mut stream| {
        let _ = stream.write_all(name.as_bytes());
    })
}

/// A loopback address where nothing listens (connections are refused). A
/// socket stays bound there, never listening, for the rest of the test
/// process, so no other test can be given the port meanwhile.
pub fn refusing_address() -> SocketAddr {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    std::mem::forget(socket);
    addr
}

/// Builds config text for one listener `web` on port 0 in front of service
/// `web` with these endpoints (`addr` or `addr weight`), plus `extra` keys
/// for the service.
pub fn config_text(endpoints: &[(SocketAddr, u32)], service_extra: &str) -> String {
    let list: Vec<String> = endpoints
        .iter()
        .map(|(a, w)| format!("{{ addr = \"{a}\", weight = {w} }}"))
        .collect();
    format!(
        "[runtime]\nworkers = 2\ndrain_timeout = \"5s\"\n\
         [listeners.web]\nlisten = \"127.0.0.1:0\"\nservice = \"web\"\n\
         [services.web]\n{service_extra}\nendpoints = [{}]\n",
        list.join(", ")
    )
}

/// How a stream that was read to its end ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// A clean EOF (FIN).
    Eof,
    /// A reset (`ECONNRESET`).
    Reset,
}

/// Reads `stream` to its end: every byte and how it ended. Panics on a
/// timeout or any other error.
pub fn read_to_end(stream: &mut TcpStream) -> (Vec<u8>, Ended) {
    let mut bytes = Vec::new();
    match stream.read_to_end(&mut bytes) {
        Ok(_) => (bytes, Ended::Eof),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => (bytes, Ended::Reset),
        Err(e) => panic!("reading to the end after {} bytes: {e}", bytes.len()),
    }
}

/// Starts the proxy library on config text.
pub fn start_proxy(text: &str) -> Proxy {
    let config = Config::parse(text, Path::new("test.toml")).unwrap();
    Proxy::start(&config, None).unwrap()
}

/// Connects to the proxy's `web` listener.
pub fn connect(proxy: &Proxy) -> TcpStream {
    let stream = TcpStream::connect(proxy.local_addr("web").unwrap()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Reads until EOF, as a string.
pub fn read_all(stream: &mut TcpStream) -> String {
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

/// The real `l4mesh` binary, running, with its stderr collected.
pub struct Binary {
    /// The process.
    pub child: Child,
    /// Every stderr line so far.
    pub lines: Arc<Mutex<Vec<String>>>,
    /// The config file it runs with.
    pub config: std::path::PathBuf,
}

impl Binary {
    /// Writes `text` to a config file in a temp dir and runs
    /// `prefix... l4mesh -c FILE`, waiting until listener `web` is up.
    pub fn start(text: &str, prefix: &[&str]) -> Binary {
        Binary::start_with(text, prefix, |_| {})
    }

    /// [`Binary::start`], with `configure` applied to the command before it
    /// is spawned.
    pub fn start_with(text: &str, prefix: &[&str], configure: impl FnOnce(&mut Command)) -> Binary {
        let dir = std::env::temp_dir().join(format!(
            "l4mesh-test-{}-{}",
            std::process::id(),
            fastrand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("l4mesh.toml");
        std::fs::write(&file, text).unwrap();
        let exe = env!("CARGO_BIN_EXE_l4mesh");
        let mut command = match prefix {
            [] => Command::new(exe),
            [first, rest @ ..] => {
                let mut c = Command::new(first);
                c.args(rest).arg(exe);
                c
            }
        };
        command
            .arg("-c")
            .arg(&file)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped());
        configure(&mut command);
        let mut child = command.spawn().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&lines);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("l4mesh: {line}");
                sink.lock().unwrap().push(line);
            }
        });
        let binary = Binary {
            child,
            lines,
            config: file,
        };
        binary.wait_for_line(Duration::from_secs(10), " worker(s); edit the file");
        binary
    }

    /// Waits for a stderr line containing `needle` and returns it.
    pub fn wait_for_line(&self, within: Duration, needle: &str) -> String {
        wait_for_line_in(&self.lines, within, needle)
    }

    /// How many stderr lines contain `needle`.
    pub fn count_lines(&self, needle: &str) -> usize {
        let lines = self.lines.lock().unwrap();
        lines.iter().filter(|l| l.contains(needle)).count()
    }

    /// The address listener `web` logged.
    pub fn addr(&self) -> SocketAddr {
        let line = self.wait_for_line(Duration::from_secs(5), "listener web on ");
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    /// Sends a signal to the process.
    pub fn signal(&self, signal: &str) {
        signal_pid(self.child.id(), signal);
    }

    /// The admin listener's address, as the binary logged it.
    pub fn admin_addr(&self, within: Duration) -> SocketAddr {
        let line = self.wait_for_line(within, "admin listener on http://");
        line.split("http://")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Each thread's name and how many times it has been switched out so
    /// far (voluntary and involuntary context switches): every wake-up
    /// counts one.
    pub fn context_switches(&self) -> Vec<(String, u64)> {
        let tasks = format!("/proc/{}/task", self.child.id());
        let mut threads = Vec::new();
        for task in std::fs::read_dir(tasks).unwrap() {
            let dir = task.unwrap().path();
            let (Ok(name), Ok(status)) = (
                std::fs::read_to_string(dir.join("comm")),
                std::fs::read_to_string(dir.join("status")),
            ) else {
                continue; // The thread ended meanwhile.
            };
            let switches = status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .map(|l| {
                    l.rsplit('\t')
                        .next()
                        .unwrap()
                        .trim()
                        .parse::<u64>()
                        .unwrap()
                })
                .sum();
            threads.push((name.trim().to_string(), switches));
        }
        threads.sort();
        threads
    }

    /// CPU seconds (user + system) the process has used.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the command name, which is in parentheses.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        ticks / 100.0
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fastrand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

/// A temporary directory, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// A fresh, empty directory under the system temp dir.
    pub fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "l4mesh-test-{}-{}",
            std::process::id(),
            fastrand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// A path inside it.
    pub fn join(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A backend that sends one tag byte on connect, then echoes.
pub fn tagged_echo_backend(tag: u8) -> SocketAddr {
    backend(move |mut stream| {
        if stream.write_all(&[tag]).is_err() {
            return;
        }
        let mut reader = stream.try_clone().unwrap();
        let _ = std::io::copy(&mut reader, &mut stream);
        let _ = stream.shutdown(Shutdown::Write);
    })
}

/// Connects to `addr` and returns the backend's tag byte (`None` if the
/// connection closed first).
pub fn tag_of(addr: SocketAddr) -> Option<u8> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut tag = [0u8; 1];
    stream.read_exact(&mut tag).ok()?;
    Some(tag[0])
}

/// `endpoints = [...]` for these addresses, weight 1.
pub fn endpoint_list(addrs: &[SocketAddr]) -> String {
    let list: Vec<String> = addrs
        .iter()
        .map(|a| format!("{{ addr = \"{a}\" }}"))
        .collect();
    format!("endpoints = [{}]", list.join(", "))
}

/// A whole server (file watch, registry socket, controller) on a config
/// file in its own temp dir.
pub struct Served {
    /// The server (dropped before the directory it lives in).
    pub server: l4mesh::Server,
    /// The temp dir holding the config and the socket.
    pub dir: TempDir,
    /// The config file.
    pub path: std::path::PathBuf,
}

impl Served {
    /// Writes `text` (with `SOCKET` replaced by the registry socket path) and
    /// starts a server on it.
    pub fn start(text: &str) -> Served {
        let dir = TempDir::new();
        let path = dir.join("l4mesh.toml");
        std::fs::write(&path, Served::expand(&dir, text)).unwrap();
        let server = l4mesh::Server::start(&path).unwrap();
        Served { dir, path, server }
    }

    fn expand(dir: &TempDir, text: &str) -> String {
        text.replace("SOCKET", &dir.join("registry.sock").display().to_string())
    }

    /// The registry socket's path.
    pub fn socket(&self) -> std::path::PathBuf {
        self.dir.join("registry.sock")
    }

    /// Rewrites the config file in place (truncate and write).
    pub fn write(&self, text: &str) {
        std::fs::write(&self.path, Served::expand(&self.dir, text)).unwrap();
    }

    /// The address listener `name` is bound to now.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.server.local_addr(name).unwrap()
    }

    /// Waits until the controller has counted `n` successful reloads.
    pub fn wait_for_reloads(&self, n: u64) {
        eventually(Duration::from_secs(5), &format!("{n} reloads"), || {
            self.server.reload_stats().successes() >= n
        });
    }

    /// Waits until the controller has counted `n` rejected reloads.
    pub fn wait_for_rejections(&self, n: u64) {
        eventually(
            Duration::from_secs(5),
            &format!("{n} rejected reloads"),
            || self.server.reload_stats().failures() >= n,
        );
    }
}

/// Waits until `lines` holds one containing `needle`, and returns it.
pub fn wait_for_line_in(lines: &Mutex<Vec<String>>, within: Duration, needle: &str) -> String {
    let mut found = String::new();
    eventually(
        within,
        &format!("a log line with {needle:?}"),
        || match lines.lock().unwrap().iter().find(|l| l.contains(needle)) {
            Some(line) => {
                found = line.clone();
                true
            }
            None => false,
        },
    );
    found
}

/// Sends raw bytes as one registry request and returns the parsed reply.
pub fn registry_raw(socket: &Path, request: &[u8]) -> serde_json::Value {
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

/// Sends one registry request line and returns the parsed reply.
pub fn registry(socket: &Path, request: &str) -> serde_json::Value {
    registry_raw(socket, format!("{request}\n").as_bytes())
}

/// `METHOD path` against an admin listener: (status, body).
pub fn get(admin: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(admin).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

/// Every sample of /metrics, by `name{labels}` as written.
pub fn samples(admin: SocketAddr) -> HashMap<String, f64> {
    let (status, body) = get(admin, "GET", "/metrics");
    assert_eq!(status, 200);
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').unwrap();
            (key.to_string(), value.parse().unwrap())
        })
        .collect()
}

/// A backend on one loopback port that can be stopped (the port then
/// refuses connections) and started again on the same port. While stopped,
/// a socket that does not listen keeps the port bound, so no other test can
/// be given it; every socket on the port sets `SO_REUSEPORT` so that the
/// next one binds before the last one closes.
pub struct Switchable {
    /// Its address, the same across restarts.
    pub addr: SocketAddr,
    handle: Arc<dyn Fn(TcpStream) + Send + Sync>,
    running: Option<(Arc<AtomicBool>, thread::JoinHandle<()>)>,
    /// Holds the port while stopped.
    held: Option<socket2::Socket>,
}

/// A socket with `SO_REUSEPORT` bound to `addr`, not listening yet.
fn reuseport_socket(addr: SocketAddr) -> socket2::Socket {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_reuse_port(true).unwrap();
    socket.bind(&addr.into()).unwrap();
    socket
}

impl Switchable {
    /// Starts a backend on a fresh port that runs `handle` for every
    /// connection, each on its own thread.
    pub fn start(handle: impl Fn(TcpStream) + Send + Sync + 'static) -> Switchable {
        let socket = reuseport_socket(SocketAddr::from(([127, 0, 0, 1], 0)));
        socket.listen(128).unwrap();
        let listener: TcpListener = socket.into();
        let mut backend = Switchable {
            addr: listener.local_addr().unwrap(),
            handle: Arc::new(handle),
            running: None,
            held: None,
        };
        backend.serve(listener);
        backend
    }

    /// A switchable backend that sends one tag byte on connect, then echoes.
    pub fn tagged(tag: u8) -> Switchable {
        Switchable::start(move |mut stream| {
            if stream.write_all(&[tag]).is_err() {
                return;
            }
            let mut reader = stream.try_clone().unwrap();
            let _ = std::io::copy(&mut reader, &mut stream);
        })
    }

    fn serve(&mut self, listener: TcpListener) {
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, handle) = (Arc::clone(&stop), Arc::clone(&self.handle));
        let thread = thread::spawn(move || {
            // Polls so that a stop closes the socket promptly; ends with it.
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        let handle = Arc::clone(&handle);
                        thread::spawn(move || handle(stream));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        self.running = Some((stop, thread));
    }

    /// Stops accepting and closes the listening socket: from now on
    /// connections are refused. Open connections go on.
    pub fn stop(&mut self) {
        if let Some((stop, thread)) = self.running.take() {
            self.held = Some(reuseport_socket(self.addr));
            stop.store(true, Ordering::Relaxed);
            thread.join().unwrap();
        }
    }

    /// Listens on the same port again.
    pub fn restart(&mut self) {
        self.stop();
        let socket = reuseport_socket(self.addr);
        socket.listen(128).unwrap();
        self.held = None;
        self.serve(socket.into());
    }
}

impl Drop for Switchable {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The state (`up`, `down`, `ejected`, `draining`) of the endpoint at `addr`
/// of `service` in the current table.
pub fn member_state(table: &l4mesh::routing::Table, service: &str, addr: SocketAddr) -> String {
    let snapshot = table.load();
    let member = snapshot.services[service].member(addr).unwrap();
    member.state().label().to_string()
}

/// A loopback port free just now for both TCP and UDP, for a server a test
/// stops and starts again on the same port (dnsmasq, etcd): from 20000 to
/// 32767, below the kernel's ephemeral range (32768 up) from which every
/// `bind(0)` and outgoing connection of every test takes its port, so none
/// can take it while the server is down. (Peers that are never restarted
/// take 10000 to 19999, `peers::free_addr`.)
pub fn restartable_port() -> u16 {
    free_port_in(20_000..32_768)
}

/// A loopback port from `range` free just now for both TCP and UDP.
pub fn free_port_in(range: std::ops::Range<u16>) -> u16 {
    loop {
        let port = fastrand::u16(range.clone());
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
}

/// A loopback TCP port free just now (from the ephemeral range: see
/// [`restartable_port`] for a server that is restarted on it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends signal `name` (`TERM`, `STOP`, ...) to process `pid` with
/// kill(1), asserting it was delivered.
pub fn signal_pid(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

/// `l4mesh_discovery_up` and `l4mesh_discovery_errors_total` of discovery
/// source `source` (`etcd`, `dns:SERVICE`) on the admin listener.
pub fn discovery_metrics(admin: SocketAddr, source: &str) -> (f64, f64) {
    let m = samples(admin);
    let label = format!("{{source=\"{source}\"}}");
    let find = |metric: &str| {
        m.get(&format!("{metric}{label}"))
            .copied()
            .unwrap_or_else(|| panic!("no {metric} for {source} in {m:?}"))
    };
    (
        find("l4mesh_discovery_up"),
        find("l4mesh_discovery_errors_total"),
    )
}
