//! Fuzz target `registry`: arbitrary bytes through the registry socket's
//! request parser, plus an encode→decode round trip.
//!
//! Defends against: panics on any line a client can send (odd Unicode,
//! huge numbers, overflowing ttls, stray `=`), and against a request whose
//! canonical form parses to something else, which would make `l4mesh ctl`
//! and scripts say one thing and the registry do another.
#![no_main]

use l4mesh::discovery::registry::protocol::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    match parse(line) {
        Ok(request) => assert_eq!(parse(&request.to_string()), Ok(request)),
        Err(message) => assert!(!message.is_empty()),
    }
});
