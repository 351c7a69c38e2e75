//! Fuzz target `config`: arbitrary bytes through config parsing and
//! validation.
//!
//! Defends against: panics on malformed TOML, odd Unicode, huge or negative
//! numbers, overflowing durations and weird addresses; and against a config
//! accepted while breaking an invariant the runtime relies on (a listener
//! routed to a missing service, a weight outside 1..=256, zero attempts, a
//! health-check timeout not below its interval, a percentage over 100, an
//! ejection cap below its base, a name that cannot be addressed through the
//! registry, an endpoint that loops back to a listener or cannot be
//! connected to, a splicing buffer smaller than the scratch chunk, a socket
//! mode outside 0600..=0777); and against an error that does not name the
//! key and the fix.
#![no_main]

use l4mesh::Config;
use l4mesh::config::{
    ConfigError, MAX_WEIGHT, SCRATCH_BYTES, is_valid_name, looping_listener, unusable_endpoint,
};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = match Config::parse(text, Path::new("fuzz.toml")) {
        Ok(config) => config,
        Err(ConfigError::Invalid { problems, .. }) => {
            assert!(!problems.is_empty());
            for p in &problems {
                assert!(!p.key.is_empty() && !p.value.is_empty());
                assert!(!p.reason.is_empty() && !p.fix.is_empty());
            }
            return;
        }
        Err(ConfigError::Syntax { message, .. }) => {
            assert!(message.starts_with("line "), "{message}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    if config.runtime.forward.splices() {
        assert!(config.runtime.buffer_size >= SCRATCH_BYTES);
    }
    if let Some(registry) = &config.registry {
        assert!(registry.mode <= 0o777 && registry.mode & 0o600 == 0o600);
    }
    for listener in &config.listeners {
        assert!(is_valid_name(&listener.name));
        assert!(config.service(&listener.service).is_some());
        assert!(listener.max_connections != Some(0));
    }
    for service in &config.services {
        assert!(is_valid_name(&service.name));
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
            assert!(unusable_endpoint(endpoint.addr).is_none());
            assert!(looping_listener(endpoint.addr, &config.listeners).is_none());
        }
    }
});
