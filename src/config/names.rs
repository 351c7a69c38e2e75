//! Listener and service names: which are allowed, and how a name is written
//! in a key path.
//!
//! A name travels as one word in registry requests (`register web ...`) and
//! as a bare value in logfmt access-log lines (`listener=web`), so it may
//! hold only `[A-Za-z0-9_.-]`: a space, `=` or quote would split or break
//! both.

/// Whether `name` may name a listener or a service: one or more of
/// `[A-Za-z0-9_.-]`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The key path of table `name` in `section`, as TOML writes it: bare when
/// it can be (`services.web`), quoted otherwise (`services."a b"`,
/// `services."v1.2"`).
pub fn table_key(section: &str, name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if bare {
        format!("{section}.{name}")
    } else {
        format!("{section}.{name:?}")
    }
}

/// A valid name close to `name`: each byte outside the allowed set becomes
/// `_` (a name with none left becomes `name`).
pub fn suggested_name(name: &str) -> String {
    let fixed: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if fixed.is_empty() {
        "name".to_string()
    } else {
        fixed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_should_allow_letters_digits_underscore_dot_and_dash_only() {
        for good in ["web", "api-v2", "a_b", "v1.2", "X9"] {
            assert!(is_valid_name(good), "{good}");
        }
        for bad in ["", "a b", "a=b", "a\"b", "é", "a\nb", "a/b", "a:b"] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn it_should_quote_a_name_that_is_not_a_bare_key() {
        assert_eq!(table_key("services", "web"), "services.web");
        assert_eq!(table_key("services", "v1.2"), "services.\"v1.2\"");
        assert_eq!(table_key("listeners", "a b"), "listeners.\"a b\"");
        assert_eq!(table_key("listeners", ""), "listeners.\"\"");
    }

    #[test]
    fn it_should_suggest_a_valid_name() {
        assert_eq!(suggested_name("my web"), "my_web");
        assert_eq!(suggested_name("a=b\"c"), "a_b_c");
        assert_eq!(suggested_name(""), "name");
        assert!(is_valid_name(&suggested_name("ünï côdé")));
    }
}
