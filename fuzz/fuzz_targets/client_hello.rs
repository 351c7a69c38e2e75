//! Fuzz target `client_hello`: arbitrary bytes through the TLS ClientHello
//! parser under several limits, and through the SNI rule matcher as both
//! rules and names, checked against a plain linear search.
//!
//! Defends against: a panic, overflow or out-of-bounds read on any bytes a
//! client can send before TLS starts (every length field is the client's);
//! an answer that changes once more bytes arrive (the proxy parses after
//! each read, so a hello split across segments must route as it would
//! whole, and an error must not turn into a hello); a limit that is not
//! held, or a larger limit that refuses what a smaller one took; a hello
//! whose name or protocols break the promises routing relies on
//! (lower-case host names, non-empty protocols); and a rule lookup that
//! panics on an odd name or disagrees with the documented precedence
//! (exact before wildcard, one label per wildcard, first rule in config
//! order whose ALPN the client offers).
#![no_main]

use l4mesh::preamble::client_hello::{Hello, HelloError, Parse, parse};
use l4mesh::routing::sni::SniRules;
use libfuzzer_sys::fuzz_target;

const LIMITS: [usize; 5] = [0, 64, 517, 16 * 1024, 64 * 1024];

fuzz_target!(|data: &[u8]| {
    let mut parsed = Hello::default();
    for (i, &limit) in LIMITS.iter().enumerate() {
        let whole = parse(data, limit);
        check_prefixes(data, limit, &whole);
        match &whole {
            Ok(Parse::Complete(hello)) => {
                check_hello(hello);
                for &larger in &LIMITS[i + 1..] {
                    assert_eq!(parse(data, larger), whole);
                }
                parsed = hello.clone();
            }
            Err(HelloError::TooLarge { needed, limit: l }) => {
                assert!(*needed > *l && *l == limit);
            }
            Err(HelloError::NotTls) => assert_ne!(data.first(), Some(&22)),
            Ok(Parse::Incomplete) | Err(HelloError::Malformed(_)) => {}
        }
    }
    check_rules(data, &parsed);
});

/// Any prefix of `data` parses as `Incomplete` or as `data` does, and an
/// answer other than `Incomplete` stays the same with more bytes after it.
fn check_prefixes(data: &[u8], limit: usize, whole: &Result<Parse, HelloError>) {
    let cuts = [
        data.len() / 2,
        data.len().saturating_sub(1),
        usize::from(data.last().copied().unwrap_or(0)) * 16,
    ];
    for cut in cuts {
        let Some(prefix) = data.get(..cut) else {
            continue;
        };
        let part = parse(prefix, limit);
        assert!(part == Ok(Parse::Incomplete) || part == *whole, "{cut}");
    }
    if *whole != Ok(Parse::Incomplete) {
        let mut longer = data.to_vec();
        longer.extend_from_slice(&[0x17, 3, 3, 0, 1, 0]);
        longer.extend_from_slice(data);
        assert_eq!(parse(&longer, limit), *whole);
    }
}

/// The promises a parsed hello makes to routing.
fn check_hello(hello: &Hello) {
    if let Some(name) = &hello.server_name {
        assert!(!name.is_empty() && name.len() <= 253, "{name}");
        assert!(!name.ends_with('.'), "{name}");
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b)),
            "{name}"
        );
        assert!(name.split('.').all(|l| !l.is_empty() && l.len() <= 63));
    }
    for protocol in &hello.alpn {
        assert!(!protocol.is_empty() && protocol.len() <= 255);
    }
}

/// Rules read from `data` as text (a line per rule: names, then `|` and
/// ALPN protocols), picked for names from the same text and for `hello`,
/// against a linear search of the rules.
fn check_rules(data: &[u8], hello: &Hello) {
    let text = String::from_utf8_lossy(data);
    let rules: Vec<(Vec<String>, Vec<String>)> = text
        .lines()
        .take(16)
        .map(|line| {
            let (names, alpn) = line.split_once('|').unwrap_or((line, ""));
            (words(names), words(alpn))
        })
        .collect();
    let matcher = SniRules::new(rules.iter().map(|(n, a)| (n.as_slice(), a.as_slice())));
    // The search below compares lower-case names, as the matcher does.
    let rules: Vec<(Vec<String>, Vec<String>)> = rules
        .into_iter()
        .map(|(n, a)| (n.iter().map(|n| n.to_ascii_lowercase()).collect(), a))
        .collect();
    let mut offers = words(&text);
    offers.truncate(4);
    let mut names: Vec<String> = text
        .split(|c: char| c.is_whitespace() || c == '|' || c == ',')
        .take(32)
        .map(str::to_ascii_lowercase)
        .collect();
    // Each name one label deeper, to reach wildcards.
    let deeper: Vec<String> = names.iter().map(|n| format!("x.{n}")).collect();
    names.extend(deeper);
    for name in &names {
        for alpn in [&offers[..], &[][..]] {
            assert_eq!(
                matcher.pick(Some(name), alpn),
                linear_pick(&rules, name, alpn),
                "{name:?} {alpn:?}"
            );
        }
    }
    let name = hello.server_name.as_deref();
    assert_eq!(
        matcher.pick(name, &hello.alpn),
        name.and_then(|n| linear_pick(&rules, n, &hello.alpn))
    );
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| !w.is_empty())
        .take(8)
        .map(String::from)
        .collect()
}

/// The documented precedence, searched rule by rule (names lower-case).
fn linear_pick(rules: &[(Vec<String>, Vec<String>)], name: &str, alpn: &[String]) -> Option<usize> {
    let takes = |wanted: &[String]| wanted.is_empty() || wanted.iter().any(|p| alpn.contains(p));
    let exact = rules.iter().position(|(names, wanted)| {
        takes(wanted) && names.iter().any(|n| !n.starts_with("*.") && n == name)
    });
    exact.or_else(|| {
        let (label, suffix) = name.split_once('.')?;
        if label.is_empty() {
            return None;
        }
        rules.iter().position(|(names, wanted)| {
            takes(wanted) && names.iter().any(|n| n.strip_prefix("*.") == Some(suffix))
        })
    })
}
