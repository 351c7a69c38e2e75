//! The stream tells the truth, in every forward mode: a slow reader is
//! never cut while bytes still move, a reset on one side reaches the other
//! as a reset (never as a clean EOF), and a cut l4mesh makes itself (idle
//! timeout, drain) is a reset too; each counted and access-logged.

mod common;

use common::*;
use sha2::{Digest, Sha256};
use socket2::{Domain, SockRef, Socket, Type};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// `len` bytes of a pattern that no shift of itself matches.
fn pattern(len: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A backend that sends `len` pattern bytes as fast as it can, then closes.
/// The bytes are made before it listens: making them per connection could
/// itself outlast a short idle_timeout on a busy machine.
fn sending_backend(len: usize) -> SocketAddr {
    let bytes = std::sync::Arc::new(pattern(len));
    backend(move |mut s| {
        let _ = s.write_all(&bytes);
    })
}

/// Connects to `addr` with a small receive buffer, so that what the client
/// does not read piles up in the proxy rather than in the client's kernel.
fn small_window_client(addr: SocketAddr) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(8 * 1024).unwrap();
    socket.connect(&addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

/// Reads `rate` bytes a second in 1 KiB steps for `slow_for`, then the rest
/// as fast as it comes: a phone on a slow link whose transfer outlives
/// idle_timeout many times over.
fn read_slowly(stream: &mut TcpStream, rate: usize, slow_for: Duration) -> (Vec<u8>, Ended) {
    let mut got = Vec::new();
    let step = 1024;
    let pause = Duration::from_secs_f64(step as f64 / rate as f64);
    let started = Instant::now();
    let mut chunk = vec![0; step];
    while started.elapsed() < slow_for {
        match stream.read(&mut chunk) {
            Ok(0) => return (got, Ended::Eof),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (got, Ended::Reset);
            }
            Err(e) => panic!("slow read after {} bytes: {e}", got.len()),
        }
        thread::sleep(pause);
    }
    let (rest, ended) = read_to_end(stream);
    got.extend_from_slice(&rest);
    (got, ended)
}

fn sha(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

per_mode! {
    /// Several sizes (inside the proxy's buffers and far beyond them) and
    /// reader speeds, with an idle_timeout the transfer outlives several
    /// times (not shorter: a loaded machine can starve the reading thread
    /// for a few hundred milliseconds, which is a real stall): every byte
    /// arrives, then a clean EOF.
    fn it_should_never_cut_a_slow_reader_while_bytes_still_move(mode) {
        for (len, rate) in [(256 << 10, 64_000), (8 << 20, 64_000), (8 << 20, 256_000)] {
            let text = config_text(&[(sending_backend(len), 1)], "idle_timeout = \"500ms\"");
            let proxy = start_proxy(&with_mode(&text, mode));
            let mut client = small_window_client(proxy.local_addr("web").unwrap());
            let (got, ended) = read_slowly(&mut client, rate, Duration::from_millis(1500));
            assert_eq!(
                (got.len(), ended),
                (len, Ended::Eof),
                "{mode}: {len} bytes at {rate} B/s"
            );
            assert!(sha(&got) == sha(&pattern(len)), "{mode}: {len} bytes at {rate} B/s");
        }
    }
}

per_mode! {
    /// The upstream sent its whole reply and its FIN, the client's kernel
    /// took every byte, and the client reads it slowly while keeping its own
    /// side open: idle_timeout cuts the connection (nothing moves), but the
    /// client's complete stream is not reset away: it reads every byte and
    /// a clean EOF.
    fn it_should_not_reset_away_a_complete_stream_the_client_has_not_read_yet(mode) {
        let len = 200_000;
        let (tx, rx) = mpsc::channel();
        let bytes = std::sync::Arc::new(pattern(len));
        let upstream = backend(move |mut s| {
            let _ = s.write_all(&bytes);
            let _ = s.shutdown(Shutdown::Write);
            let mut rest = Vec::new();
            let _ = tx.send(s.read_to_end(&mut rest).map_err(|e| e.kind()));
        });
        let text = config_text(&[(upstream, 1)], "idle_timeout = \"300ms\"");
        let proxy = start_proxy(&with_mode(&text, mode));
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(1 << 20).unwrap();
        socket.connect(&proxy.local_addr("web").unwrap().into()).unwrap();
        let mut client: TcpStream = socket.into();
        client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // The upstream's side of the cut: its client went quiet, a reset.
        let upstream_end = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(upstream_end, Err(std::io::ErrorKind::ConnectionReset), "{mode}");
        let (got, ended) = read_to_end(&mut client);
        assert_eq!((got.len(), ended), (len, Ended::Eof), "{mode}");
        assert!(got == pattern(len), "{mode}");
    }
}

per_mode! {
    /// The upstream sends part of a reply and resets: the client sees a
    /// reset after a true prefix, counted and access-logged as `reset`.
    fn it_should_reset_the_client_when_the_upstream_resets_mid_stream(mode) {
        let sent = 300_000;
        let upstream = backend(move |s| {
            let mut request = [0; 5];
            (&s).read_exact(&mut request).unwrap();
            let _ = (&s).write_all(&pattern(sent));
            SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
            drop(s); // RST
        });
        let dir = TempDir::new();
        let log = dir.join("access.log");
        let served = Served::start(&logged(&[upstream], &log, mode, ""));
        let mut client = TcpStream::connect(served.addr("web")).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        client.write_all(b"hello").unwrap();
        let (got, ended) = read_to_end(&mut client);
        assert_eq!(ended, Ended::Reset, "{mode}: after {} bytes", got.len());
        assert!(got.len() <= sent && got == pattern(sent)[..got.len()], "{mode}");
        let line = access_line(&log);
        assert!(line.contains("\"end\":\"reset\""), "{mode}: {line}");
        let admin = served.server.admin_addr().unwrap();
        eventually(Duration::from_secs(5), "the reset counted", || {
            samples(admin)
                .get("l4mesh_connections_reset_total{listener=\"web\",cause=\"upstream\"}")
                == Some(&1.0)
        });
    }
}

per_mode! {
    /// The client sends and resets: the upstream sees every byte that made
    /// it, then a reset instead of a FIN.
    fn it_should_reset_the_upstream_when_the_client_resets(mode) {
        let (tx, rx) = mpsc::channel();
        let upstream = backend(move |mut s| {
            let mut got = Vec::new();
            let result = s.read_to_end(&mut got);
            let _ = tx.send((got, result.map_err(|e| e.kind())));
        });
        let dir = TempDir::new();
        let log = dir.join("access.log");
        let served = Served::start(&logged(&[upstream], &log, mode, ""));
        let client = TcpStream::connect(served.addr("web")).unwrap();
        (&client).write_all(&pattern(100_000)).unwrap();
        SockRef::from(&client).set_linger(Some(Duration::ZERO)).unwrap();
        drop(client); // RST
        let (got, result) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(result, Err(std::io::ErrorKind::ConnectionReset), "{mode}");
        assert!(got == pattern(100_000)[..got.len()], "{mode}");
        let line = access_line(&log);
        assert!(line.contains("\"end\":\"reset\""), "{mode}: {line}");
        let admin = served.server.admin_addr().unwrap();
        eventually(Duration::from_secs(5), "the reset counted", || {
            samples(admin)
                .get("l4mesh_connections_reset_total{listener=\"web\",cause=\"client\"}")
                == Some(&1.0)
        });
    }
}

per_mode! {
    /// A FIN from either side stays a half-close: the other direction goes
    /// on, and the client sees a clean EOF with every byte.
    fn it_should_keep_a_fin_a_half_close(mode) {
        let upstream = backend(|mut s| {
            let mut request = Vec::new();
            s.read_to_end(&mut request).unwrap();
            s.write_all(&pattern(request.len() * 3)).unwrap();
        });
        let proxy = start_proxy(&with_mode(&config_text(&[(upstream, 1)], ""), mode));
        let mut client = connect(&proxy);
        client.write_all(&[1; 70_000]).unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let (got, ended) = read_to_end(&mut client);
        assert_eq!((got.len(), ended), (210_000, Ended::Eof), "{mode}");
        assert!(got == pattern(210_000), "{mode}");
    }
}

per_mode! {
    /// Silence both ways for idle_timeout is a cut, and both sides are told
    /// so with a reset; activity before it keeps the connection open.
    fn it_should_reset_both_sides_after_idle_timeout(mode) {
        let (tx, rx) = mpsc::channel();
        let upstream = backend(move |mut s| {
            let mut buf = [0; 4];
            let mut result = Ok(());
            // Echoes four-byte pings until the connection ends.
            while result.is_ok() {
                result = s.read_exact(&mut buf).and_then(|()| s.write_all(&buf));
            }
            let _ = tx.send(result.map_err(|e| e.kind()));
        });
        let dir = TempDir::new();
        let log = dir.join("access.log");
        let served = Served::start(&logged(&[upstream], &log, mode, "idle_timeout = \"1s\""));
        let idle = Duration::from_secs(1);
        let mut client = TcpStream::connect(served.addr("web")).unwrap();
        client.set_read_timeout(Some(idle + Duration::from_secs(20))).unwrap();
        // A ping every 100 ms (a tenth of the timeout, so a slow round trip
        // on a loaded machine still leaves plenty) keeps it open past the
        // timeout...
        let started = Instant::now();
        let mut last_sent = started;
        while started.elapsed() < idle + idle / 2 {
            thread::sleep(Duration::from_millis(100));
            // Taken before the bytes move, so the proxy's last activity is later.
            last_sent = Instant::now();
            client.write_all(b"ping").unwrap();
            let mut pong = [0; 4];
            client.read_exact(&mut pong).unwrap();
            assert_eq!(&pong, b"ping", "{mode}");
        }
        // ...silence cuts it, no sooner than the timeout after the last byte,
        // and the client is told with a reset.
        let (got, ended) = read_to_end(&mut client);
        let waited = last_sent.elapsed();
        assert_eq!((got.len(), ended), (0, Ended::Reset), "{mode}");
        assert!(waited >= idle, "{mode}: {waited:?}");
        assert!(waited < idle + Duration::from_secs(10), "{mode}: {waited:?}");
        let upstream_end = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(upstream_end, Err(std::io::ErrorKind::ConnectionReset), "{mode}");
        let line = access_line(&log);
        assert!(line.contains("\"end\":\"idle_timeout\""), "{mode}: {line}");
        let admin = served.server.admin_addr().unwrap();
        let key = "l4mesh_connections_reset_total{listener=\"web\",cause=\"idle_timeout\"}";
        eventually(Duration::from_secs(5), "the cut counted", || {
            samples(admin).get(key) == Some(&1.0)
        });
    }
}

per_mode! {
    /// A connection keeps no routing table alive: after a reload its old
    /// table is freed at once, while the connection goes on.
    fn it_should_not_keep_the_routing_table_it_started_with(mode) {
        let text = with_mode(&config_text(&[(echo_backend(), 1)], ""), mode);
        let served = Served::start(&text);
        let mut client = TcpStream::connect(served.addr("web")).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        client.write_all(b"one").unwrap();
        let mut back = [0; 3];
        client.read_exact(&mut back).unwrap();
        let old = std::sync::Arc::downgrade(&served.server.table().load_full());
        served.write(&text.replace("drain_timeout = \"5s\"", "drain_timeout = \"6s\""));
        served.wait_for_reloads(1);
        eventually(Duration::from_secs(5), "the old table freed", || {
            old.upgrade().is_none()
        });
        client.write_all(b"two").unwrap();
        client.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"two", "{mode}");
    }
}

/// Config text for `endpoints` in `mode` with an admin listener, a JSON
/// access log at `log` and `extra` service keys.
fn logged(endpoints: &[SocketAddr], log: &std::path::Path, mode: Mode, extra: &str) -> String {
    let list: Vec<(SocketAddr, u32)> = endpoints.iter().map(|a| (*a, 1)).collect();
    with_mode(&config_text(&list, extra), mode)
        + &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[access_log]\npath = \"{}\"\nformat = \"json\"\n",
            log.display()
        )
}

/// The access log's only line, once it is written.
fn access_line(log: &std::path::Path) -> String {
    let mut line = String::new();
    eventually(Duration::from_secs(5), "an access-log line", || {
        line = std::fs::read_to_string(log).unwrap_or_default();
        line.ends_with('\n')
    });
    line
}
