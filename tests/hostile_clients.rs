//! The registry socket and the admin listener keep answering well-behaved
//! clients while hundreds of others connect and say nothing, or drip a byte
//! at a time: every request has a deadline for the whole of it, and idle
//! peers cannot fill a small pool of slots.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const SILENT: usize = 300;
const DRIPPING: usize = 100;
/// The servers' whole-request deadline.
const DEADLINE: Duration = Duration::from_secs(5);

/// Writes the next byte of `pattern` to each stream every 500 ms until
/// `stop`; write errors (the server closed) are ignored.
fn drip<S: Write + Send + 'static>(
    mut streams: Vec<S>,
    pattern: &'static [u8],
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        for byte in pattern.iter().cycle() {
            for stream in &mut streams {
                let _ = stream.write_all(&[*byte]);
            }
            let next = Instant::now() + Duration::from_millis(500);
            while Instant::now() < next {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    })
}

#[test]
fn it_should_answer_good_clients_within_a_second_under_hundreds_of_silent_and_dripping_ones() {
    let served = Served::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[registry]\nsocket = \"SOCKET\"\n\
         [listeners.web]\nlisten = \"127.0.0.1:0\"\nservice = \"web\"\n\
         [services.web]\n{}\n",
        endpoint_list(&[echo_backend()])
    ));
    let (socket, admin) = (served.socket(), served.server.admin_addr().unwrap());
    let heartbeat = format!("register web {} ttl=30s", echo_backend());

    let opened = Instant::now();
    let silent_registry: Vec<UnixStream> = (0..SILENT)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();
    let silent_admin: Vec<TcpStream> = (0..SILENT)
        .map(|_| TcpStream::connect(admin).unwrap())
        .collect();
    let dripping_registry: Vec<UnixStream> = (0..DRIPPING)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();
    let dripping_admin: Vec<TcpStream> = (0..DRIPPING)
        .map(|_| TcpStream::connect(admin).unwrap())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let drippers = [
        drip(
            dripping_registry
                .iter()
                .map(|s| s.try_clone().unwrap())
                .collect(),
            b"list web web web ",
            Arc::clone(&stop),
        ),
        drip(
            dripping_admin
                .iter()
                .map(|s| s.try_clone().unwrap())
                .collect(),
            b"GET /healthz HTTP/1.1\r\nX-Drip: aaaaaaaa",
            Arc::clone(&stop),
        ),
    ];

    // A TTL heartbeat, which dripping clients used to keep out until the
    // registration lapsed.
    for round in 0..5 {
        let started = Instant::now();
        let reply = registry(&socket, &heartbeat);
        let registry_took = started.elapsed();
        assert_eq!(reply["ok"], true, "round {round}: {reply}");
        assert_eq!(reply["new"], round == 0, "round {round}: {reply}");
        assert!(
            registry_took < Duration::from_secs(1),
            "round {round}: the registry answered in {registry_took:?}"
        );
        let started = Instant::now();
        let (status, body) = get(admin, "GET", "/healthz");
        let admin_took = started.elapsed();
        assert_eq!((status, body.as_str()), (200, "ok\n"), "round {round}");
        assert!(
            admin_took < Duration::from_secs(1),
            "round {round}: /healthz answered in {admin_took:?}"
        );
        eprintln!("round {round}: registry {registry_took:?}, /healthz {admin_took:?}");
        thread::sleep(Duration::from_millis(200));
    }

    // The dripping clients are cut off at the deadline for the whole
    // request, although they never paused for as long as a read timeout.
    let mut reader = BufReader::new(&dripping_registry[0]);
    reader
        .get_ref()
        .set_read_timeout(Some(DEADLINE * 3))
        .unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let cut = opened.elapsed();
    let reply: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(reply["ok"], false, "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .starts_with("no complete request line within 5s"),
        "{reply}"
    );
    assert!(cut < DEADLINE + Duration::from_secs(3), "cut after {cut:?}");
    let mut admin_client = &dripping_admin[0];
    admin_client.set_read_timeout(Some(DEADLINE * 3)).unwrap();
    let mut response = String::new();
    admin_client.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{response}"
    );
    // So are the silent ones, with the same answers.
    let mut response = String::new();
    (&silent_admin[SILENT - 1])
        .read_to_string(&mut response)
        .unwrap();
    assert!(
        response.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{response}"
    );
    let mut line = String::new();
    BufReader::new(&silent_registry[SILENT - 1])
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.contains("no complete request line within 5s"),
        "{line}"
    );

    stop.store(true, Ordering::Relaxed);
    for dripper in drippers {
        dripper.join().unwrap();
    }
}

#[test]
fn it_should_tell_a_client_past_the_limit_to_retry_rather_than_reset_it() {
    const LIMIT: usize = 1024;
    let served = Served::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[registry]\nsocket = \"SOCKET\"\n\
         [listeners.web]\nlisten = \"127.0.0.1:0\"\nservice = \"web\"\n\
         [services.web]\n{}\n",
        endpoint_list(&[echo_backend()])
    ));
    let (socket, admin) = (served.socket(), served.server.admin_addr().unwrap());
    // Accepted in the order they connect: these take every slot.
    let silent_admin: Vec<TcpStream> = (0..LIMIT)
        .map(|_| TcpStream::connect(admin).unwrap())
        .collect();
    let silent_registry: Vec<UnixStream> = (0..LIMIT)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();

    // Clients that take 300 ms to write their request (less than the 1 s
    // a client past the limit is given): the request is read before the
    // answer, so they get the reason, not a reset or a broken pipe.
    let thinking = Duration::from_millis(300);
    let mut late_admin = TcpStream::connect(admin).unwrap();
    let mut late_registry = UnixStream::connect(&socket).unwrap();
    thread::sleep(thinking);
    let started = Instant::now();
    late_admin
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    late_admin.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.1 503 Service Unavailable\r\n")
            && response.ends_with("\r\n\r\ntoo many admin clients at once; try again\n"),
        "{response}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    late_registry.write_all(b"list\n").unwrap();
    let mut line = String::new();
    BufReader::new(&late_registry).read_line(&mut line).unwrap();
    let reply: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        reply,
        serde_json::json!({"ok": false, "error": "too many registry clients at once (1024); try again"})
    );

    // A slot freed is a slot for the next client.
    drop(silent_admin);
    drop(silent_registry);
    eventually(Duration::from_secs(5), "slots free again", || {
        get(admin, "GET", "/healthz").0 == 200 && registry(&socket, "list")["ok"] == true
    });
}
