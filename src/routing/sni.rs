//! SNI routing rules, compiled off the hot path: which rule a ClientHello's
//! server name (and ALPN protocols) picks.
//!
//! Exact names beat wildcards; a wildcard `*.example.com` matches exactly
//! one more label (`a.example.com`, neither `example.com` nor
//! `a.b.example.com`). Among the rules for the same name, the first in
//! config order whose ALPN condition holds wins: a rule with `alpn` takes a
//! client only if it offers one of those protocols, a rule without takes
//! any. Names are compared lower-case (the parser lower-cases the client's
//! name; the rules are lower-cased here), so a pick allocates nothing.

use std::collections::HashMap;

/// The compiled rules of one listener.
#[derive(Debug, Default)]
pub struct SniRules {
    /// Rule indices by exact name, in config order.
    exact: HashMap<String, Vec<usize>>,
    /// Rule indices by a wildcard's suffix (`example.com` for
    /// `*.example.com`), in config order.
    wildcard: HashMap<String, Vec<usize>>,
    /// Each rule's ALPN protocols (empty: any).
    alpn: Vec<Vec<String>>,
}

impl SniRules {
    /// Compiles rules given as (names, ALPN protocols), in order: rule `i`
    /// of the input is index `i` of [`SniRules::pick`].
    pub fn new<'a>(rules: impl IntoIterator<Item = (&'a [String], &'a [String])>) -> SniRules {
        let mut compiled = SniRules::default();
        for (i, (names, alpn)) in rules.into_iter().enumerate() {
            for name in names {
                let name = name.to_ascii_lowercase();
                match name.strip_prefix("*.") {
                    Some(suffix) => compiled.wildcard.entry(suffix.to_string()),
                    None => compiled.exact.entry(name),
                }
                .or_default()
                .push(i);
            }
            compiled.alpn.push(alpn.to_vec());
        }
        compiled
    }

    /// The index of the rule for a hello naming `server_name` (lower-case)
    /// and offering `alpn`, if any rule takes it.
    pub fn pick(&self, server_name: Option<&str>, alpn: &[String]) -> Option<usize> {
        let name = server_name?;
        let takes = |i: &&usize| {
            let wanted = &self.alpn[**i];
            wanted.is_empty() || wanted.iter().any(|p| alpn.contains(p))
        };
        if let Some(&i) = self.exact.get(name).and_then(|r| r.iter().find(takes)) {
            return Some(i);
        }
        let (_, suffix) = name.split_once('.')?;
        self.wildcard
            .get(suffix)
            .and_then(|r| r.iter().find(takes))
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn rules(spec: &[(&[&str], &[&str])]) -> SniRules {
        let owned: Vec<(Vec<String>, Vec<String>)> =
            spec.iter().map(|(n, a)| (strings(n), strings(a))).collect();
        SniRules::new(owned.iter().map(|(n, a)| (n.as_slice(), a.as_slice())))
    }

    #[test]
    fn it_should_prefer_exact_names_to_wildcards_whatever_the_order() {
        let r = rules(&[(&["*.example.com"], &[]), (&["API.example.com"], &[])]);
        assert_eq!(r.pick(Some("api.example.com"), &[]), Some(1));
        assert_eq!(r.pick(Some("www.example.com"), &[]), Some(0));
    }

    #[test]
    fn it_should_match_a_wildcard_to_exactly_one_label() {
        let r = rules(&[(&["*.example.com"], &[])]);
        assert_eq!(r.pick(Some("a.example.com"), &[]), Some(0));
        assert_eq!(r.pick(Some("example.com"), &[]), None);
        assert_eq!(r.pick(Some("a.b.example.com"), &[]), None);
        assert_eq!(r.pick(Some("aexample.com"), &[]), None);
        assert_eq!(r.pick(None, &[]), None);
    }

    #[test]
    fn it_should_take_the_first_rule_whose_alpn_the_client_offers() {
        let r = rules(&[
            (&["api.example.com"], &["h2"]),
            (&["api.example.com"], &[]),
            (&["*.example.com"], &["h2", "h3"]),
        ]);
        let h2 = strings(&["http/1.1", "h2"]);
        assert_eq!(r.pick(Some("api.example.com"), &h2), Some(0));
        assert_eq!(
            r.pick(Some("api.example.com"), &strings(&["http/1.1"])),
            Some(1)
        );
        assert_eq!(r.pick(Some("api.example.com"), &[]), Some(1));
        assert_eq!(r.pick(Some("w.example.com"), &strings(&["h3"])), Some(2));
        assert_eq!(r.pick(Some("w.example.com"), &[]), None);
    }
}
