//! SNI routing rules, compiled off the hot path: which rule a ClientHello's
//! server name (and ALPN protocols) picks.
//!
//! Exact names beat wildcards; a wildcard `*.example.com` matches exactly
//! one more label (`a.example.com`, neither `example.com` nor
//! `a.b.example.com`). Among the rules for the same name, the first in
//! config order whose ALPN condition holds wins: a rule with `alpn` takes a
//! client only if it offers one of those protocols, a rule without takes
//! any; a client turned away by every exact rule of its name for want of a
//! protocol may still be taken by a wildcard. Names are compared lower-case
//! (the parser lower-cases the client's name; the rules are lower-cased
//! here), so a pick allocates nothing: two hash lookups, by the name and by
//! the name minus its first label.
//!
//! Names are checked before they get here, by `crate::config::check_sni_name`.

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

    /// The index of the rule for a hello naming `server_name` (lower-case,
    /// as the ClientHello parser gives it) and offering `alpn`, if any rule
    /// takes it. No name, no rule: the caller sends the client to the
    /// listener's default service.
    pub fn pick(&self, server_name: Option<&str>, alpn: &[String]) -> Option<usize> {
        let name = server_name?;
        let takes = |&&i: &&usize| {
            self.alpn
                .get(i)
                .is_some_and(|wanted| wanted.is_empty() || wanted.iter().any(|p| alpn.contains(p)))
        };
        if let Some(&i) = self.exact.get(name).and_then(|r| r.iter().find(takes)) {
            return Some(i);
        }
        // A wildcard stands for exactly one label, and not an empty one.
        let (label, suffix) = name.split_once('.')?;
        if label.is_empty() {
            return None;
        }
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
        assert_eq!(r.pick(Some("_svc.example.com"), &[]), Some(0));
        assert_eq!(r.pick(Some("example.com"), &[]), None);
        assert_eq!(r.pick(Some("a.b.example.com"), &[]), None);
        assert_eq!(r.pick(Some("aexample.com"), &[]), None);
        assert_eq!(r.pick(Some(".example.com"), &[]), None);
        assert_eq!(r.pick(Some("a.example.org"), &[]), None);
    }

    #[test]
    fn it_should_route_every_name_of_a_rule_to_it() {
        let r = rules(&[
            (&["api.example.com"], &[]),
            (&["*.Example.COM", "Example.com"], &[]),
        ]);
        assert_eq!(r.pick(Some("api.example.com"), &[]), Some(0));
        assert_eq!(r.pick(Some("example.com"), &[]), Some(1));
        assert_eq!(r.pick(Some("www.example.com"), &[]), Some(1));
        assert_eq!(r.pick(Some("other.com"), &[]), None);
    }

    #[test]
    fn it_should_route_no_name_and_no_rules_nowhere() {
        let r = rules(&[(&["*.example.com", "example.com"], &[])]);
        assert_eq!(r.pick(None, &[]), None);
        assert_eq!(r.pick(None, &strings(&["h2"])), None);
        assert_eq!(r.pick(Some(""), &[]), None);
        assert_eq!(rules(&[]).pick(Some("example.com"), &[]), None);
    }

    #[test]
    fn it_should_take_the_first_rule_whose_alpn_the_client_offers() {
        let r = rules(&[
            (&["api.example.com"], &["h2"]),
            (&["api.example.com"], &[]),
            (&["*.example.com"], &["h2", "h3"]),
            (&["*.example.com"], &["http/1.1"]),
        ]);
        let h2 = strings(&["http/1.1", "h2"]);
        assert_eq!(r.pick(Some("api.example.com"), &h2), Some(0));
        assert_eq!(
            r.pick(Some("api.example.com"), &strings(&["http/1.1"])),
            Some(1)
        );
        assert_eq!(r.pick(Some("api.example.com"), &[]), Some(1));
        assert_eq!(r.pick(Some("w.example.com"), &strings(&["h3"])), Some(2));
        assert_eq!(r.pick(Some("w.example.com"), &h2), Some(2));
        assert_eq!(
            r.pick(Some("w.example.com"), &strings(&["http/1.1"])),
            Some(3)
        );
        assert_eq!(r.pick(Some("w.example.com"), &[]), None);
        assert_eq!(r.pick(Some("w.example.com"), &strings(&["H2"])), None);
    }

    #[test]
    fn it_should_fall_back_to_a_wildcard_when_no_exact_rule_takes_the_protocols() {
        let r = rules(&[(&["api.example.com"], &["h2"]), (&["*.example.com"], &[])]);
        assert_eq!(r.pick(Some("api.example.com"), &strings(&["h2"])), Some(0));
        assert_eq!(
            r.pick(Some("api.example.com"), &strings(&["http/1.1"])),
            Some(1)
        );
        let only_exact = rules(&[(&["api.example.com"], &["h2"])]);
        assert_eq!(only_exact.pick(Some("api.example.com"), &[]), None);
    }
}
