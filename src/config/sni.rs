//! Validates a listener's `sni` rules: each name a host name or a one-label
//! wildcard, no name that an earlier rule already takes, a known service,
//! and ALPN protocols that a ClientHello can carry.

use super::file::{FileConfig, FileSniRule};
use super::listener::SniRule;
use super::listeners::known_service;
use super::validate::{Problems, quoted};

/// The rules of listener `key`, lower-cased, or `None` after a problem.
pub(super) fn rules(
    file: &FileConfig,
    key: &str,
    rules: &[FileSniRule],
    problems: &mut Problems,
) -> Option<Vec<SniRule>> {
    let mut out: Vec<SniRule> = Vec::new();
    let mut fine = true;
    if rules.is_empty() {
        problems.push(
            &format!("{key}.sni"),
            "[]",
            "no rule: every client would go to `default_service`",
            "add rules like { names = [\"api.example.com\"], service = \"api\" }, or use \
             `service` instead of `sni`",
        );
        return None;
    }
    for (i, rule) in rules.iter().enumerate() {
        let at = format!("{key}.sni[{i}]");
        known_service(file, &format!("{at}.service"), &rule.service, problems);
        if rule.names.is_empty() {
            fine = false;
            problems.push(
                &format!("{at}.names"),
                "[]",
                "a rule without names never matches",
                "list the server names it takes, like [\"api.example.com\"]",
            );
        }
        let mut alpn: Vec<String> = Vec::new();
        for (j, protocol) in rule.alpn.iter().enumerate() {
            if protocol.is_empty() || protocol.len() > 255 {
                fine = false;
                problems.push(
                    &format!("{at}.alpn[{j}]"),
                    quoted(protocol),
                    "an ALPN protocol name is 1 to 255 bytes",
                    "use a protocol id such as \"h2\" or \"http/1.1\"",
                );
            }
            alpn.push(protocol.clone());
        }
        alpn.sort();
        let mut names: Vec<String> = Vec::new();
        for (j, name) in rule.names.iter().enumerate() {
            let lower = name.to_ascii_lowercase();
            let at_name = format!("{at}.names[{j}]");
            if let Err(why) = check_name(&lower) {
                fine = false;
                problems.push(
                    &at_name,
                    quoted(name),
                    why,
                    "write a host name (\"api.example.com\") or a wildcard of one label \
                     (\"*.example.com\")",
                );
                continue;
            }
            let why = if names.contains(&lower) {
                Some("the rule lists this name twice".to_string())
            } else {
                out.iter()
                    .enumerate()
                    .find(|(_, r)| {
                        r.names.contains(&lower) && (r.alpn.is_empty() || r.alpn == alpn)
                    })
                    .map(|(k, r)| {
                        format!(
                            "sni[{k}] already takes every client asking for it{}, so this rule \
                             never would",
                            if r.alpn.is_empty() {
                                ""
                            } else {
                                " with these protocols"
                            }
                        )
                    })
            };
            if let Some(why) = why {
                fine = false;
                problems.push(
                    &at_name,
                    quoted(name),
                    &why,
                    "remove the duplicate, or put the rule with `alpn` before the one without",
                );
                continue;
            }
            names.push(lower);
        }
        out.push(SniRule {
            names,
            service: rule.service.clone(),
            alpn,
        });
    }
    fine.then_some(out)
}

/// Why `name` (lower-case) cannot be an SNI rule's name: a host name of
/// labels `[a-z0-9_-]` (1 to 63 bytes each, 253 in all, no label starting
/// or ending with `-`), optionally behind one leading `*.` wildcard.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    let host = name.strip_prefix("*.").unwrap_or(name);
    if host.is_empty() {
        return Err("a wildcard needs a domain after `*.`");
    }
    if host.len() > 253 {
        return Err("a host name is at most 253 bytes");
    }
    if host.contains('*') {
        return Err("a wildcard may only be one leading `*.` label, as in \"*.example.com\"");
    }
    for label in host.split('.') {
        if label.is_empty() {
            return Err("a host name has no empty label (no leading, trailing or double dot)");
        }
        if label.len() > 63 {
            return Err("a label of a host name is at most 63 bytes");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err("a host name holds only letters, digits, `-` and `_` between dots");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label of a host name neither starts nor ends with `-`");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_should_take_host_names_and_one_label_wildcards() {
        for good in [
            "api.example.com",
            "*.example.com",
            "localhost",
            "a_b.mesh",
            "x1-2.io",
        ] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
    }

    #[test]
    fn it_should_refuse_misplaced_wildcards_and_bad_labels() {
        for bad in [
            "a.*.com",
            "*foo.com",
            "*",
            "*.",
            "foo.*",
            "example.com.",
            ".example.com",
            "a..b",
            "-a.com",
            "a b.com",
            "ex\u{e4}mple.com",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert!(check_name(&"a".repeat(64)).is_err());
    }
}
