//! Fuzz target `config`: arbitrary bytes through config parsing and
//! validation.
//!
//! Defends against: panics on malformed TOML, odd Unicode, huge or negative
//! numbers, overflowing durations and weird addresses; and against a config
//! accepted while breaking an invariant the runtime relies on (a listener
//! routed to a missing service, a weight outside 1..=256, zero attempts).
#![no_main]

use l4mesh::Config;
use l4mesh::config::MAX_WEIGHT;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::parse(text, Path::new("fuzz.toml")) {
        for listener in &config.listeners {
            assert!(config.service(&listener.service).is_some());
        }
        for service in &config.services {
            assert!(service.connect_attempts.get() >= 1);
            for endpoint in &service.endpoints {
                assert!((1..=MAX_WEIGHT).contains(&endpoint.weight));
                assert_ne!(endpoint.addr.port(), 0);
            }
        }
    }
});
