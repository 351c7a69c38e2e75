//! Fuzz target `config`: arbitrary bytes through config parsing and
//! validation.
//!
//! Defends against: panics on malformed TOML, odd Unicode, huge or negative
//! numbers, overflowing durations and weird addresses; and against a config
//! accepted while breaking an invariant the runtime relies on (a listener
//! routed to a missing service, a weight outside 1..=256, zero attempts, a
//! health-check timeout not below its interval, a percentage over 100, an
//! ejection cap below its base).
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
            assert!(listener.max_connections != Some(0));
        }
        for service in &config.services {
            assert!(service.connect_attempts.get() >= 1);
            assert!(service.panic_threshold <= 100);
            assert!(service.max_connections_per_endpoint != Some(0));
            if let Some(health) = &service.health {
                assert!(health.timeout < health.interval);
                assert!(health.send.as_ref().is_none_or(|s| !s.is_empty()));
                assert!(health.expect.as_ref().is_none_or(|e| !e.is_empty()));
            }
            if let Some(outlier) = &service.outlier {
                assert!(outlier.base_ejection <= outlier.max_ejection);
                assert!(outlier.max_ejection_percent <= 100);
            }
            for endpoint in &service.endpoints {
                assert!((1..=MAX_WEIGHT).contains(&endpoint.weight));
                assert_ne!(endpoint.addr.port(), 0);
            }
        }
    }
});
