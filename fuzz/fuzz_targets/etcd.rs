//! Fuzz target `etcd`: arbitrary key and value bytes through the etcd
//! source's schema parser (the first byte splits the input in two).
//!
//! Defends against: panics on anything another etcd client can put under
//! the prefix (non-UTF-8 keys, odd separators, huge or negative weights,
//! JSON of any shape), and against a parsed endpoint that breaks the
//! routing table's rules (weight outside 1..=256, port 0, a wildcard or
//! multicast address, a service name the config would refuse), or a key
//! that does not print back to itself.
#![no_main]

use l4mesh::config::{MAX_WEIGHT, is_valid_name, unusable_endpoint};
use l4mesh::discovery::etcd::schema::{key, parse_key, parse_value};
use libfuzzer_sys::fuzz_target;

const PREFIX: &str = "/l4mesh/";

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let at = usize::from(split).min(rest.len());
    let (raw_key, value) = rest.split_at(at);
    let mut full = PREFIX.as_bytes().to_vec();
    full.extend_from_slice(raw_key);
    match parse_key(PREFIX, &full) {
        Ok(Some(parsed)) => {
            assert!(is_valid_name(&parsed.service));
            assert_ne!(parsed.addr.port(), 0);
            assert!(unusable_endpoint(parsed.addr).is_none());
            let again = key(PREFIX, &parsed.service, parsed.addr);
            assert_eq!(
                parse_key(PREFIX, again.as_bytes()),
                Ok(Some(parsed.clone()))
            );
            if let Ok((endpoint, _)) = parse_value(parsed.addr, value) {
                assert!((1..=MAX_WEIGHT).contains(&endpoint.weight));
                assert_eq!(endpoint.addr, parsed.addr);
            }
        }
        Ok(None) => {}
        Err(why) => assert!(!why.is_empty()),
    }
});
