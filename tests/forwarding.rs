//! Forwarding over real loopback sockets: exact bytes, half-close both ways,
//! resets, and services without endpoints.

mod common;

use common::*;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Deterministic pseudo-random bytes (xorshift), so both ends can hash them.
fn pattern(seed: &mut u64, chunk: &mut [u8]) {
    for b in chunk.iter_mut() {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *b = *seed as u8;
    }
}

per_mode! {
    fn it_should_echo_100_megabytes_exactly(mode) {
        const TOTAL: usize = 100 << 20;
        let proxy = start_proxy(&with_mode(&config_text(&[(echo_backend(), 1)], ""), mode));
        let mut client = connect(&proxy);
        let mut writer = client.try_clone().unwrap();
        let sent = thread::spawn(move || {
            let (mut seed, mut hash, mut chunk) =
                (0x9E37_79B9_7F4A_7C15u64, Sha256::new(), vec![0; 1 << 16]);
            for _ in 0..TOTAL / chunk.len() {
                pattern(&mut seed, &mut chunk);
                hash.update(&chunk);
                writer.write_all(&chunk).unwrap();
            }
            writer.shutdown(Shutdown::Write).unwrap();
            hash.finalize()
        });
        let (mut received, mut hash, mut chunk) = (0, Sha256::new(), vec![0; 1 << 16]);
        loop {
            let n = client.read(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            hash.update(&chunk[..n]);
            received += n;
        }
        assert_eq!(received, TOTAL, "{mode}");
        assert_eq!(hash.finalize(), sent.join().unwrap(), "{mode}");
    }
}

per_mode! {
    /// Thousands of short messages, each answered before the next: every fill
    /// is short, so a readiness cleared wrongly would stall a round trip (the
    /// read timeout fails the test). Sizes vary from 1 byte to past the
    /// short-fill threshold, and every 100th is 200 KB, so `auto` moves between
    /// copying and splicing both ways; the last message arrives with the
    /// client's EOF.
    fn it_should_carry_small_round_trips_and_a_trailing_eof_without_a_stall(mode) {
        let proxy = start_proxy(&with_mode(&config_text(&[(echo_backend(), 1)], ""), mode));
        let mut client = connect(&proxy);
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut back = vec![0; 200_000];
        for round in 0..3000usize {
            let size = if round % 100 == 99 { 200_000 } else { 1 + round % 1500 };
            let message: Vec<u8> = (0..size).map(|i| (i + round) as u8).collect();
            let mut writer = client.try_clone().unwrap();
            let sent = message.clone();
            let writing = thread::spawn(move || writer.write_all(&sent).unwrap());
            client.read_exact(&mut back[..size]).unwrap();
            writing.join().unwrap();
            assert!(back[..size] == message[..], "{mode}: round {round}");
        }
        client.write_all(b"last").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"last", "{mode}");
    }
}

per_mode! {
    /// TCP urgent (out-of-band) data followed by the client's EOF: like HAProxy
    /// and nginx, the urgent byte itself is dropped and every byte around it
    /// carried. Splicing cannot pass the urgent mark; the recv that confirms
    /// its "EOF" does (without an EOF, see docs/DESIGN.md).
    fn it_should_carry_the_bytes_around_urgent_data(mode) {
        let proxy = start_proxy(&with_mode(&config_text(&[(echo_backend(), 1)], ""), mode));
        let mut client = connect(&proxy);
        client.write_all(b"abc").unwrap();
        socket2::SockRef::from(&client).send_out_of_band(b"!").unwrap();
        client.write_all(b"def").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).unwrap();
        assert_eq!(back, b"abcdef", "{mode}");
    }
}

per_mode! {
    fn it_should_pass_the_clients_eof_on_and_still_carry_the_reply(mode) {
        // The upstream answers only after it reads EOF.
        let upstream = backend(|mut s| {
            let mut request = Vec::new();
            s.read_to_end(&mut request).unwrap();
            s.write_all(format!("got {} bytes", request.len()).as_bytes())
                .unwrap();
        });
        let proxy = start_proxy(&with_mode(&config_text(&[(upstream, 1)], ""), mode));
        let mut client = connect(&proxy);
        client.write_all(&[7; 5000]).unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let (got, ended) = read_to_end(&mut client);
        assert_eq!((&got[..], ended), (&b"got 5000 bytes"[..], Ended::Eof), "{mode}");
    }
}

per_mode! {
    fn it_should_keep_carrying_the_clients_bytes_after_the_upstream_closes_its_side(mode) {
        let (got_tx, got_rx) = mpsc::channel();
        let upstream = backend(move |mut s| {
            s.write_all(b"bye").unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).unwrap();
            got_tx.send(rest).unwrap();
        });
        let proxy = start_proxy(&with_mode(&config_text(&[(upstream, 1)], ""), mode));
        let mut client = connect(&proxy);
        assert_eq!(read_to_end(&mut client), (b"bye".to_vec(), Ended::Eof), "{mode}");
        client.write_all(b"still talking").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let rest = got_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(rest, b"still talking", "{mode}");
    }
}

#[test]
fn it_should_close_a_client_at_once_when_the_service_has_no_endpoints() {
    let proxy = start_proxy(&config_text(&[], ""));
    let mut client = connect(&proxy);
    let started = Instant::now();
    assert_eq!(read_all(&mut client), "");
    assert!(started.elapsed() < Duration::from_secs(2));
}
