//! The server name a client asks for, checked as a host name and put in
//! the form routing compares: lower-case, without a trailing dot.

use super::HelloError;

/// A host name: ASCII labels of `[A-Za-z0-9_-]` (`_` is common in meshes),
/// 1 to 63 bytes each, 253 in all, lower-cased. One trailing dot is
/// dropped: `example.com.` is the same name, fully qualified.
pub(super) fn host_name(raw: &[u8]) -> Result<String, HelloError> {
    let bad = HelloError::Malformed("server name is not a valid host name");
    let raw = raw.strip_suffix(b".").unwrap_or(raw);
    if raw.is_empty() || raw.len() > 253 {
        return Err(bad);
    }
    for label in raw.split(|&b| b == b'.') {
        let fine = !label.is_empty()
            && label.len() <= 63
            && label
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !fine {
            return Err(bad);
        }
    }
    Ok(raw
        .iter()
        .map(|&b| char::from(b.to_ascii_lowercase()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(raw: &str) -> Result<String, HelloError> {
        host_name(raw.as_bytes())
    }

    #[test]
    fn it_should_keep_host_names_lower_case_without_a_trailing_dot() {
        assert_eq!(name("Big.Example.COM."), Ok("big.example.com".into()));
        assert_eq!(name("_grpc.svc-1.mesh"), Ok("_grpc.svc-1.mesh".into()));
        assert_eq!(name("localhost"), Ok("localhost".into()));
        let longest = format!("{0}.{0}.{0}.{1}", "a".repeat(63), "b".repeat(61));
        assert_eq!(longest.len(), 253);
        assert_eq!(name(&longest), Ok(longest.clone()));
        assert_eq!(name(&format!("{longest}.")), Ok(longest.clone()));
        let invalid = Err(HelloError::Malformed(
            "server name is not a valid host name",
        ));
        for bad in [
            "", ".", "a..io", ".a.io", "a.io..", "a b.io", "a/b", "é.io", "a*.io", "*.a.io",
        ] {
            assert_eq!(name(bad), invalid, "{bad}");
        }
        assert_eq!(name(&"a".repeat(64)), invalid);
        assert_eq!(name(&format!("{longest}b")), invalid);
    }
}
