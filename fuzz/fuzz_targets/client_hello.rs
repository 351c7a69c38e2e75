//! Fuzz target `client_hello`: arbitrary bytes through the TLS ClientHello
//! parser under several limits, and arbitrary names through the SNI rules.
//!
//! Defends against: a panic or out-of-bounds read on any bytes a client can
//! send before TLS starts (every length field is the client's); a hello
//! that parses differently once more bytes follow it (a split across
//! segments must not change the route); a limit that is not held; and a
//! rule lookup that panics on an odd name.
#![no_main]

use l4mesh::preamble::client_hello::{HelloError, Parse, parse};
use l4mesh::routing::sni::SniRules;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for limit in [64, 517, 16 * 1024, 64 * 1024] {
        match parse(data, limit) {
            Ok(Parse::Complete(hello)) => {
                let mut longer = data.to_vec();
                longer.extend_from_slice(&[0x17, 3, 3, 0, 1, 0]);
                assert_eq!(parse(&longer, limit), Ok(Parse::Complete(hello.clone())));
                if let Some(name) = &hello.server_name {
                    assert!(!name.is_empty() && name.len() <= 253);
                    assert_eq!(name, &name.to_ascii_lowercase());
                }
            }
            Err(HelloError::TooLarge { needed, limit: l }) => assert!(needed > l && l == limit),
            Ok(Parse::Incomplete) | Err(_) => {}
        }
    }
    let names = [String::from("*.example.com"), String::from("api.example.com")];
    let alpn = [String::from("h2")];
    let rules = SniRules::new([(&names[..], &alpn[..]), (&names[1..], &[][..])]);
    let name = String::from_utf8_lossy(data).to_ascii_lowercase();
    let _ = rules.pick(Some(&name), &alpn);
});
