//! A listener address is l4mesh's alone: a second l4mesh, or any program
//! listening there with `SO_REUSEPORT`, makes l4mesh refuse to start (or
//! a reload refuse the listener) with an error naming the address and the
//! other process, instead of silently sharing the clients.

mod common;

use common::*;
use l4mesh::{Config, Proxy};
use socket2::{Domain, Socket, Type};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A listening socket with `SO_REUSEPORT`, as a second l4mesh's would be.
fn reuseport_listener(addr: &str) -> TcpListener {
    let addr: SocketAddr = addr.parse().unwrap();
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).unwrap();
    socket.set_reuse_port(true).unwrap();
    socket.bind(&addr.into()).unwrap();
    socket.listen(16).unwrap();
    socket.into()
}

/// A child process killed (if still running) when the test ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `config_text` for an echo backend with listener `web` on `listen`.
fn config_on(listen: SocketAddr) -> String {
    config_text(&[(echo_backend(), 1)], "").replace("127.0.0.1:0", &listen.to_string())
}

fn start_error(text: &str) -> String {
    let config = Config::parse(text, Path::new("test.toml")).unwrap();
    match Proxy::start(&config, None) {
        Ok(_) => panic!("started on an address another socket listens on"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn it_should_refuse_to_start_a_second_instance_on_the_same_address_and_name_the_first() {
    let first = Binary::start(&config_text(&[(echo_backend(), 1)], ""), &[]);
    let addr = first.addr();
    let dir = TempDir::new();
    let file = dir.join("second.toml");
    std::fs::write(&file, config_on(addr)).unwrap();
    let mut second = Reaped(
        Command::new(env!("CARGO_BIN_EXE_l4mesh"))
            .arg("-c")
            .arg(&file)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut status = None;
    eventually(Duration::from_secs(20), "the second instance exits", || {
        status = second.0.try_wait().unwrap();
        status.is_some()
    });
    let mut stderr = String::new();
    second
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.unwrap().code(), Some(1), "{stderr}");
    let pid = first.child.id();
    assert!(
        stderr.contains(&format!(
            "listeners.web.listen = \"{addr}\": another process already listens on {addr} (pid \
             {pid}, l4mesh)"
        )),
        "{stderr}"
    );
    // The first one still has every client.
    let mut client = TcpStream::connect(addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client.write_all(b"mine").unwrap();
    let mut back = [0u8; 4];
    client.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"mine");
}

#[test]
fn it_should_refuse_an_address_any_program_listens_on_with_so_reuseport() {
    let held = reuseport_listener("127.0.0.1:0");
    let addr = held.local_addr().unwrap();
    let error = start_error(&config_on(addr));
    let pid = std::process::id();
    assert!(
        error.contains(&format!("already listens on {addr} (pid {pid}, ")),
        "{error}"
    );
    // A wildcard on the same port covers the address too, and the other way
    // round.
    let wildcard = reuseport_listener("0.0.0.0:0");
    let port = wildcard.local_addr().unwrap().port();
    let error = start_error(&config_on(SocketAddr::from(([127, 0, 0, 1], port))));
    assert!(
        error.contains(&format!("already listens on 0.0.0.0:{port} (pid {pid}, ")),
        "{error}"
    );
    let error = start_error(&config_on(SocketAddr::from(([0, 0, 0, 0], addr.port()))));
    assert!(
        error.contains(&format!("already listens on {addr} ")),
        "{error}"
    );
}

#[test]
fn it_should_reject_a_reload_that_adds_a_listener_on_an_address_another_program_listens_on() {
    let echo = echo_backend();
    let held = reuseport_listener("127.0.0.1:0");
    let addr = held.local_addr().unwrap();
    let text = |listeners: &str| {
        format!(
            "[runtime]\nworkers = 2\n{listeners}[services.web]\n{}\n",
            endpoint_list(&[echo])
        )
    };
    let listener = |name: &str, addr: &str| {
        format!("[listeners.{name}]\nlisten = \"{addr}\"\nservice = \"web\"\n")
    };
    let web = listener("web", "127.0.0.1:0");
    let served = Served::start(&text(&web));
    served.write(&text(&(web + &listener("api", &addr.to_string()))));
    served.wait_for_rejections(1);
    assert!(served.server.local_addr("api").is_none());
    // Renaming a listener keeps its address: its own socket is no other
    // process's, so that reload goes through.
    let web = served.addr("web");
    served.write(&text(&listener("front", &web.to_string())));
    served.wait_for_reloads(1);
    assert_eq!(served.server.local_addr("front"), Some(web));
    assert_eq!(served.server.local_addr("web"), None);
}
