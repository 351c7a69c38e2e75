//! `l4mesh ctl`: the registry socket's client. Sends one request, prints
//! the reply readably (a table for `list`) or as JSON, and says whether it
//! succeeded.

use serde_json::Value;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why `ctl` could not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// Nothing answers on the socket.
    #[error(
        "cannot connect to the registry at {path:?}: {source}; is l4mesh running with \
         [registry] socket = {path:?}?"
    )]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The conversation failed midway.
    #[error("registry at {path:?}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The reply was not JSON.
    #[error("registry at {path:?} sent a reply that is not JSON: {reply:?}")]
    BadReply {
        /// The socket path.
        path: PathBuf,
        /// What it sent.
        reply: String,
    },
}

/// The outcome of one request.
#[derive(Debug)]
pub struct Answer {
    /// Whether the registry said `ok`.
    pub ok: bool,
    /// What to print.
    pub text: String,
}

/// Sends `words` joined by spaces as one request and formats the reply.
pub fn request(socket: &Path, words: &[String], json: bool) -> Result<Answer, CtlError> {
    let io_error = |source| CtlError::Io {
        path: socket.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| CtlError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    stream
        .set_read_timeout(Some(Duration::from_secs(35)))
        .map_err(io_error)?;
    let mut line = words.join(" ");
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io_error)?;
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .map_err(io_error)?;
    let value: Value = serde_json::from_str(&reply).map_err(|_| CtlError::BadReply {
        path: socket.to_path_buf(),
        reply: reply.clone(),
    })?;
    let ok = value["ok"].as_bool() == Some(true);
    let text = if json {
        reply.trim_end().to_string()
    } else {
        readable(&value)
    };
    Ok(Answer { ok, text })
}

/// A reply for people: the error, the help text, a table of endpoints, or
/// the reply's fields.
fn readable(reply: &Value) -> String {
    if reply["ok"].as_bool() != Some(true) {
        return format!(
            "error: {}",
            reply["error"].as_str().unwrap_or("unknown error")
        );
    }
    if let Some(help) = reply["help"].as_str() {
        return help.replace("; ", "\n");
    }
    if let Some(message) = reply["message"].as_str() {
        return message.to_string();
    }
    if let Some(endpoints) = reply["endpoints"].as_array() {
        return table(endpoints);
    }
    let fields: Vec<String> = reply
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, v)| *k != "ok" && !v.is_null())
        .map(|(k, v)| {
            format!(
                "{k}={}",
                v.as_str().map_or_else(|| v.to_string(), str::to_string)
            )
        })
        .collect();
    format!("ok {}", fields.join(" "))
}

fn table(endpoints: &[Value]) -> String {
    let headers = [
        "SERVICE", "ADDR", "WEIGHT", "SOURCE", "STATE", "ACTIVE", "TTL",
    ];
    let cell = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    let rows: Vec<Vec<String>> = endpoints
        .iter()
        .map(|e| {
            let ttl = e["ttl_remaining_ms"]
                .as_u64()
                .map_or("-".to_string(), |ms| format!("{:.1}s", ms as f64 / 1000.0));
            ["service", "addr", "weight", "source", "state", "active"]
                .iter()
                .map(|k| cell(&e[*k]))
                .chain([ttl])
                .collect()
        })
        .collect();
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([headers[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let mut out = vec![line(headers.iter().map(|h| h.to_string()).collect())];
    out.extend(rows.into_iter().map(line));
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn it_should_print_a_list_as_an_aligned_table() {
        let reply = json!({"ok": true, "endpoints": [
            {"service": "web", "addr": "127.0.0.1:9001", "weight": 1, "source": "file",
             "state": "up", "active": 2, "ttl_remaining_ms": null},
            {"service": "web", "addr": "127.0.0.1:19002", "weight": 3, "source": "registry",
             "state": "draining", "active": 0, "ttl_remaining_ms": 1500},
        ]});
        let text = readable(&reply);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "SERVICE  ADDR             WEIGHT  SOURCE    STATE     ACTIVE  TTL"
        );
        assert_eq!(
            lines[2],
            "web      127.0.0.1:19002  3       registry  draining  0       1.5s"
        );
    }

    #[test]
    fn it_should_print_errors_and_plain_replies() {
        assert_eq!(readable(&json!({"ok": false, "error": "no"})), "error: no");
        let text = readable(&json!({"ok": true, "service": "web", "new": true, "ttl_ms": null}));
        assert_eq!(text, "ok new=true service=web");
    }
}
