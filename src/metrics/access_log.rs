//! The access log: one line per closed connection, in logfmt or JSON, to
//! stderr or a file. Workers hand records to a writer thread through a
//! bounded channel and never wait: when the writer falls behind, records
//! are dropped and counted. The file is buffered, flushed when the channel
//! runs dry, and reopened on request (SIGUSR1, for logrotate). The writer
//! sleeps until there is something to write or reopen: an idle proxy's log
//! thread never wakes.

use crate::config::{AccessLogConfig, AccessLogFormat, AccessLogTarget};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde_json::json;
use std::fmt::{self, Write as _};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What the writer thread is handed.
#[derive(Debug)]
enum Entry {
    /// A line to write.
    Record(Record),
    /// Reopen the file (the flag says so too, in case the queue was full).
    Reopen,
    /// Write what is queued, flush and end (at shutdown).
    Close,
}

/// Records waiting for the writer; more are dropped.
const QUEUE: usize = 65536;

/// How a connection ended, as the access log says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The client closed first, then the upstream.
    ClientClosed,
    /// The upstream closed first, then the client.
    UpstreamClosed,
    /// No bytes either way for `idle_timeout`.
    IdleTimeout,
    /// Every connect attempt failed.
    ConnectFailed,
    /// The service had no usable endpoint.
    NoEndpoint,
    /// A read or write failed (usually a reset).
    Reset,
    /// Closed by a graceful shutdown that ran out of time.
    DrainedAtShutdown,
    /// Closed at once: the listener was at `max_connections`.
    Rejected,
    /// Reset at once: the client was over a per-client limit.
    ClientLimit,
    /// Reset at once: the client's address is not a trusted PROXY protocol
    /// source.
    UntrustedSource,
    /// Reset: its PROXY protocol header was missing, malformed or late.
    ProxyHeaderError,
    /// Reset: an SNI listener found no rule for it and has no
    /// `default_service`.
    NoRoute,
}

impl Ending {
    /// The `end` field's value.
    pub fn label(self) -> &'static str {
        match self {
            Ending::ClientClosed => "client_closed",
            Ending::UpstreamClosed => "upstream_closed",
            Ending::IdleTimeout => "idle_timeout",
            Ending::ConnectFailed => "connect_failed",
            Ending::NoEndpoint => "no_endpoint",
            Ending::Reset => "reset",
            Ending::DrainedAtShutdown => "drained_at_shutdown",
            Ending::Rejected => "rejected",
            Ending::ClientLimit => "client_limit",
            Ending::UntrustedSource => "untrusted_source",
            Ending::ProxyHeaderError => "proxy_header_error",
            Ending::NoRoute => "no_route",
        }
    }
}

/// A connection's id in logs, `w<worker>-<n>`: built without allocating and
/// formatted only when a line is actually written. It is also the
/// `PP2_TYPE_UNIQUE_ID` of a v2 PROXY header l4mesh sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnId {
    /// The worker that accepted it.
    pub worker: usize,
    /// Its number on that worker, from 1.
    pub n: u64,
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "w{}-{}", self.worker, self.n)
    }
}

/// One closed connection.
#[derive(Debug, Clone)]
pub struct Record {
    /// Its id, as the debug log lines say it.
    pub id: ConnId,
    /// When it was accepted.
    pub start: SystemTime,
    /// How long it lasted.
    pub duration: Duration,
    /// The listener that accepted it.
    pub listener: Arc<str>,
    /// The client's address: the source a PROXY protocol header gave, or
    /// the TCP peer's.
    pub client: SocketAddr,
    /// The TCP peer when a PROXY protocol header named another client.
    pub peer: Option<SocketAddr>,
    /// The server name of its TLS ClientHello, on an SNI listener.
    pub server_name: Option<Box<str>>,
    /// The upstream it was forwarded to, if any.
    pub endpoint: Option<SocketAddr>,
    /// Bytes from the client.
    pub rx: u64,
    /// Bytes to the client.
    pub tx: u64,
    /// Connect attempts made.
    pub attempts: u32,
    /// How it ended.
    pub end: Ending,
}

impl Record {
    /// The record as one line, without the newline.
    pub fn format(&self, format: AccessLogFormat) -> String {
        let start = self
            .start
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let endpoint = self.endpoint.map(|e| e.to_string());
        let peer = self.peer.map(|p| p.to_string());
        match format {
            AccessLogFormat::Json => json!({
                "start": start, "duration_ms": self.duration.as_secs_f64() * 1000.0,
                "id": self.id.to_string(), "listener": &*self.listener,
                "client": self.client.to_string(), "peer": peer,
                "server_name": self.server_name.as_deref(),
                "endpoint": endpoint, "rx_bytes": self.rx, "tx_bytes": self.tx,
                "attempts": self.attempts, "end": self.end.label(),
            })
            .to_string(),
            AccessLogFormat::Logfmt => {
                let mut line = String::with_capacity(200);
                let _ = write!(
                    line,
                    "start={start:.6} duration_ms={:.3} id={} listener={} client={} peer={} \
                     server_name={} endpoint={} rx_bytes={} tx_bytes={} attempts={} end={}",
                    self.duration.as_secs_f64() * 1000.0,
                    self.id,
                    logfmt_value(&self.listener),
                    self.client,
                    peer.as_deref().unwrap_or("-"),
                    self.server_name.as_deref().unwrap_or("-"),
                    endpoint.as_deref().unwrap_or("-"),
                    self.rx,
                    self.tx,
                    self.attempts,
                    self.end.label()
                );
                line
            }
        }
    }
}

/// A logfmt value: quoted when it holds spaces, quotes or `=`.
fn logfmt_value(value: &str) -> String {
    if value.is_empty() || value.contains([' ', '"', '=', '\\']) {
        format!("{value:?}")
    } else {
        value.to_string()
    }
}

/// Hands records to the writer; cheap to clone, one per worker.
#[derive(Debug, Clone)]
pub struct AccessLog {
    records: Sender<Entry>,
    /// The writer thread, joined by [`AccessLog::close`].
    writer: Arc<Mutex<Option<JoinHandle<()>>>>,
    dropped: Arc<AtomicU64>,
    reopen: Arc<AtomicBool>,
}

impl AccessLog {
    /// Starts the writer thread, or returns `None` when the log is off.
    /// Fails if the file cannot be opened.
    pub fn start(config: &AccessLogConfig) -> io::Result<Option<AccessLog>> {
        let sink = match &config.target {
            AccessLogTarget::Off => return Ok(None),
            AccessLogTarget::Stderr => Sink::Stderr(io::stderr()),
            AccessLogTarget::File(path) => Sink::File(path.clone(), open(path)?),
        };
        let (records, queue) = crossbeam_channel::bounded(QUEUE);
        let reopen: Arc<AtomicBool> = Arc::default();
        let (format, flag) = (config.format, Arc::clone(&reopen));
        let writer = std::thread::Builder::new()
            .name("l4mesh-access-log".into())
            .spawn(move || write_lines(queue, sink, format, &flag))?;
        let log = AccessLog {
            records,
            writer: Arc::new(Mutex::new(Some(writer))),
            dropped: Arc::default(),
            reopen,
        };
        Ok(Some(log))
    }

    /// Queues a record without ever waiting; counts it as dropped when the
    /// writer is behind.
    pub fn record(&self, record: Record) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.records.try_send(Entry::Record(record))
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes every record queued so far, flushes the file and stops the
    /// writer (at shutdown, once no worker records any more): other handles
    /// may live on (the signal thread keeps one), so the writer cannot wait
    /// for every sender to go. Later records are dropped and counted.
    pub fn close(&self) {
        let _ = self.records.send(Entry::Close);
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(writer) = writer
            && writer.join().is_err()
        {
            log::error!("the access-log writer panicked");
        }
    }

    /// Records dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Asks the writer to reopen its file (after logrotate moved it).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
        // Wakes the writer; with the queue full it is awake anyway and sees
        // the flag once it has written what is queued.
        let _ = self.records.try_send(Entry::Reopen);
    }
}

enum Sink {
    Stderr(io::Stderr),
    File(PathBuf, BufWriter<File>),
}

fn open(path: &Path) -> io::Result<BufWriter<File>> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    Ok(BufWriter::with_capacity(64 * 1024, file))
}

fn write_lines(
    queue: Receiver<Entry>,
    mut sink: Sink,
    format: AccessLogFormat,
    reopen: &AtomicBool,
) {
    // Sleeps until the first entry; then writes everything queued, flushes
    // once, and reopens if asked. Ends at a Close ([`AccessLog::close`]),
    // or when every sender is gone.
    while let Ok(first) = queue.recv() {
        // At most a queue's worth per round, so a reopen is not put off for
        // as long as records keep coming.
        let mut closing = false;
        for entry in std::iter::once(first).chain(queue.try_iter().take(QUEUE)) {
            closing |= matches!(entry, Entry::Close);
            if let Entry::Record(record) = entry {
                let mut line = record.format(format);
                line.push('\n');
                let written = match &mut sink {
                    Sink::Stderr(stderr) => stderr.write_all(line.as_bytes()),
                    Sink::File(_, file) => file.write_all(line.as_bytes()),
                };
                if let Err(e) = written {
                    log::warn!("access log: cannot write: {e}");
                }
            }
        }
        flush(&mut sink);
        if closing {
            return;
        }
        if reopen.swap(false, Ordering::Relaxed)
            && let Sink::File(path, file) = &mut sink
        {
            match open(path) {
                Ok(reopened) => {
                    *file = reopened;
                    log::info!("access log: reopened {}", path.display());
                }
                Err(e) => log::warn!("access log: cannot reopen {}: {e}", path.display()),
            }
        }
    }
    flush(&mut sink);
}

fn flush(sink: &mut Sink) {
    if let Sink::File(path, file) = sink
        && let Err(e) = file.flush()
    {
        log::warn!("access log: cannot write {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            id: ConnId { worker: 1, n: 7 },
            start: UNIX_EPOCH + Duration::from_millis(1_700_000_000_250),
            duration: Duration::from_micros(1500),
            listener: Arc::from("web"),
            client: "127.0.0.1:5000".parse().unwrap(),
            peer: None,
            server_name: None,
            endpoint: Some("127.0.0.1:9001".parse().unwrap()),
            rx: 10,
            tx: 20,
            attempts: 1,
            end: Ending::UpstreamClosed,
        }
    }

    #[test]
    fn it_should_write_logfmt_and_json_lines() {
        assert_eq!(
            record().format(AccessLogFormat::Logfmt),
            "start=1700000000.250000 duration_ms=1.500 id=w1-7 listener=web \
             client=127.0.0.1:5000 peer=- server_name=- endpoint=127.0.0.1:9001 rx_bytes=10 \
             tx_bytes=20 attempts=1 end=upstream_closed"
        );
        let relayed = Record {
            peer: Some("127.0.0.9:4000".parse().unwrap()),
            server_name: Some("api.example.com".into()),
            ..record()
        };
        let line = relayed.format(AccessLogFormat::Logfmt);
        assert!(line.contains(" peer=127.0.0.9:4000 server_name=api.example.com "));
        let json: serde_json::Value =
            serde_json::from_str(&record().format(AccessLogFormat::Json)).unwrap();
        assert_eq!(json["end"], "upstream_closed");
        assert_eq!(json["endpoint"], "127.0.0.1:9001");
        assert_eq!(json["tx_bytes"], 20);
        assert_eq!(json["id"], "w1-7");
        assert_eq!(json["peer"], serde_json::Value::Null);
        assert_eq!(json["server_name"], serde_json::Value::Null);
    }

    #[test]
    fn it_should_quote_logfmt_values_that_need_it() {
        assert_eq!(logfmt_value("web"), "web");
        assert_eq!(logfmt_value("a b"), "\"a b\"");
    }
}
