//! Human durations such as `"500ms"`, `"2s"`, `"5m"`, `"1h"` or `"1m30s"`.

use std::time::Duration;

/// Parses a duration written as one or more `<whole number><unit>` parts,
/// where the unit is `ms`, `s`, `m` or `h` (spaces between parts are allowed). Returns why it is not one on error.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("it is empty".to_string());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("expected a whole number at `{rest}`"));
        }
        let (number, tail) = rest.split_at(digits);
        let value: u64 = number
            .parse()
            .map_err(|_| format!("the number `{number}` is too large"))?;
        let tail = tail.trim_start();
        let unit_len = tail.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, tail) = tail.split_at(unit_len);
        let part = match unit {
            "ms" => Duration::from_millis(value),
            "s" => Duration::from_secs(value),
            "m" => Duration::from_secs(value.saturating_mul(60)),
            "h" => Duration::from_secs(value.saturating_mul(3600)),
            "" if tail.starts_with('.') => {
                return Err(format!(
                    "`{text}` has a fraction; use a smaller unit instead, like \"1500ms\""
                ));
            }
            "" => return Err(format!("the number `{number}` has no unit")),
            other => return Err(format!("`{other}` is not a unit (use ms, s, m or h)")),
        };
        total = total
            .checked_add(part)
            .ok_or_else(|| "the duration is too large".to_string())?;
        rest = tail.trim_start();
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_should_parse_each_unit_and_compound_forms() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1m 30 s"), Ok(Duration::from_secs(90)));
    }

    #[test]
    fn it_should_explain_what_is_wrong() {
        assert!(parse_duration("").unwrap_err().contains("empty"));
        assert!(parse_duration("10").unwrap_err().contains("no unit"));
        assert!(parse_duration("1.5s").unwrap_err().contains("fraction"));
        assert!(
            parse_duration("3d")
                .unwrap_err()
                .contains("`d` is not a unit")
        );
        assert!(parse_duration("s").unwrap_err().contains("whole number"));
        assert!(
            parse_duration("99999999999999999999s")
                .unwrap_err()
                .contains("too large")
        );
    }
}
