//! The admin listener's HTTP server: one request per connection, answered
//! and closed, on its own thread with an event loop (a current-thread tokio
//! runtime), so that neither silent nor slow clients can keep others out.
//!
//! - Up to [`Limits::clients`] connections are served at once; each idle
//!   one costs a descriptor and a task holding a 1 KiB buffer, not a thread.
//! - A request's head must arrive whole within [`Limits::deadline`], counted
//!   from the accept, not per read: a client dripping a byte at a time is
//!   answered `408` and closed as surely as a silent one.
//! - Past the limit, up to [`Limits::overflow`] more connections are read
//!   for at most [`Limits::busy_deadline`] and answered `503`; reading the
//!   request first means the client sees the answer, not a reset (closing a
//!   TCP socket with unread bytes sends RST). Past both, accepting waits and
//!   clients stay in the listen backlog.
//! - Every connection ends with a lingering close: shutdown, then the
//!   client's late bytes are read and dropped for a moment, for the same
//!   reason.
//!
//! Requests are parsed with `httparse` within [`MAX_REQUEST`] bytes.

use crate::accept_gate::{Seat, accept_gated, unless_paused};
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, timeout, timeout_at};

/// The largest request head read, in bytes.
pub const MAX_REQUEST: usize = 8192;
/// How long a response may take to be written.
const WRITE_DEADLINE: Duration = Duration::from_secs(5);
/// How long late bytes are read and dropped after the response.
const LINGER: Duration = Duration::from_millis(500);

/// How much the server takes on.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once.
    pub clients: usize,
    /// Connections answered `503` at once beyond `clients`.
    pub overflow: usize,
    /// How long a request head may take to arrive, from the accept.
    pub deadline: Duration,
    /// How long an over-the-limit request is read before the `503`.
    pub busy_deadline: Duration,
}

impl Limits {
    /// The admin listener's: 1024 clients, 64 more answered `503`, 5 s for
    /// a request, 1 s for one that gets the `503`.
    pub const ADMIN: Limits = Limits {
        clients: 1024,
        overflow: 64,
        deadline: Duration::from_secs(5),
        busy_deadline: Duration::from_secs(1),
    };
}

/// One response; the connection closes after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
    /// Extra headers.
    pub headers: Vec<(&'static str, &'static str)>,
}

impl Response {
    /// A `text/plain` response.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain",
            body: body.into(),
            headers: Vec::new(),
        }
    }

    /// The bytes on the wire.
    fn to_bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            431 => "Request Header Fields Too Large",
            _ => "Service Unavailable",
        };
        let mut head = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(self.body.as_bytes());
        bytes
    }
}

/// What answers a request: `(method, path without the query)` to a response.
pub type Answer = dyn Fn(&str, &str) -> Response + Send + Sync;

/// Serves `listener` on a new thread named `name`, until the process ends,
/// accepting only while `paused` is false.
pub fn spawn(
    listener: std::net::TcpListener,
    limits: Limits,
    name: &str,
    answer: Arc<Answer>,
    paused: watch::Receiver<bool>,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            runtime.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => {
                        unless_paused(paused, || accept(&listener, limits, Arc::clone(&answer)))
                            .await;
                    }
                    Err(e) => log::error!("admin: cannot serve the listener: {e}"),
                }
            })
        })?;
    Ok(())
}

async fn accept(listener: &TcpListener, limits: Limits, answer: Arc<Answer>) {
    let serve = |(stream, _), seat: Seat| {
        let answer = Arc::clone(&answer);
        tokio::spawn(async move {
            let served = if seat.is_busy() {
                serve(stream, limits.busy_deadline, None).await
            } else {
                serve(stream, limits.deadline, Some(&*answer)).await
            };
            if let Err(e) = served {
                log::debug!("admin client: {e}");
            }
            drop(seat);
        });
    };
    accept_gated(
        "admin",
        limits.clients,
        limits.overflow,
        || listener.accept(),
        serve,
    )
    .await;
}

/// What the client sent.
enum Head {
    /// A complete request head.
    Request { method: String, path: String },
    /// The connection closed first.
    Closed,
    /// More than [`MAX_REQUEST`] bytes without the end of the head.
    TooLarge,
    /// Not HTTP.
    Bad(httparse::Error),
}

/// Reads one request within `deadline` and answers it with `answer`, or
/// `503` when there is none (the server is full), then closes.
async fn serve(
    mut stream: TcpStream,
    deadline: Duration,
    answer: Option<&Answer>,
) -> io::Result<()> {
    let head = timeout(deadline, read_head(&mut stream)).await;
    let response = match (head, answer) {
        (Ok(Head::Closed), _) => return Ok(()),
        (_, None) => Response::text(503, "too many admin clients at once; try again\n"),
        (Err(_), Some(_)) => Response::text(
            408,
            format!(
                "no complete request within {}s; send the whole request at once\n",
                deadline.as_secs()
            ),
        ),
        (Ok(Head::TooLarge), Some(_)) => Response::text(431, "request too large\n"),
        (Ok(Head::Bad(e)), Some(_)) => Response::text(400, format!("bad request: {e}\n")),
        (Ok(Head::Request { method, path }), Some(answer)) => answer(&method, &path),
    };
    match timeout(WRITE_DEADLINE, stream.write_all(&response.to_bytes())).await {
        Ok(written) => written?,
        Err(_) => return Err(io::ErrorKind::TimedOut.into()),
    }
    linger_close(stream).await;
    Ok(())
}

/// Reads until the end of a request head (an error reading counts as the
/// connection closing).
async fn read_head(stream: &mut TcpStream) -> Head {
    // Grown as bytes come: a silent client holds only the chunk.
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Head::Closed,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {
                let method = request.method.unwrap_or("").to_string();
                let target = request.path.unwrap_or("");
                let path = target.split('?').next().unwrap_or("").to_string();
                return Head::Request { method, path };
            }
            Ok(httparse::Status::Partial) if head.len() < MAX_REQUEST => continue,
            Ok(httparse::Status::Partial) => return Head::TooLarge,
            Err(e) => return Head::Bad(e),
        }
    }
}

/// Half-closes, then reads and drops what the client still sends for up to
/// [`LINGER`], so that closing with unread bytes does not reset the
/// connection before the client has read the response.
async fn linger_close(mut stream: TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let until = Instant::now() + LINGER;
    let mut sink = [0u8; 1024];
    while let Ok(Ok(n)) = timeout_at(until, stream.read(&mut sink)).await {
        if n == 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream as StdTcpStream};
    use std::time::Instant as StdInstant;

    /// A server with `limits` that answers every request `200 ok`.
    fn server(limits: Limits) -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let answer: Arc<Answer> = Arc::new(|_: &str, path: &str| Response::text(200, path));
        let (_, paused) = watch::channel(false);
        spawn(listener, limits, "test-http", answer, paused).unwrap();
        addr
    }

    fn connect(addr: SocketAddr) -> StdTcpStream {
        let stream = StdTcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
    }

    /// Sends `request` and reads the whole response; an error (a reset)
    /// fails the test.
    fn ask(stream: &mut StdTcpStream, request: &str) -> String {
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    const LIMITS: Limits = Limits {
        clients: 2,
        overflow: 2,
        deadline: Duration::from_millis(800),
        busy_deadline: Duration::from_millis(300),
    };

    #[test]
    fn it_should_read_the_request_of_a_client_over_the_limit_and_answer_503() {
        let addr = server(LIMITS);
        // Two silent clients take both slots (accepted in connect order).
        let silent: Vec<_> = (0..2).map(|_| connect(addr)).collect();
        let mut late = connect(addr);
        let response = ask(&mut late, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            response.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{response}"
        );
        assert!(response.ends_with("too many admin clients at once; try again\n"));
        drop(silent);
    }

    #[test]
    fn it_should_answer_408_to_silent_and_dripping_clients_at_the_deadline_not_per_read() {
        let addr = server(LIMITS);
        let started = StdInstant::now();
        let mut silent = connect(addr);
        let mut dripping = connect(addr);
        let mut response = String::new();
        // A byte every 100 ms: never a read timeout, but never a whole head.
        for byte in b"GET /healthz HTTP/1.1\r\nX: ".iter().cycle().take(12) {
            dripping.write_all(&[*byte]).unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
        dripping.read_to_string(&mut response).unwrap();
        let elapsed = started.elapsed();
        assert!(
            response.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{response}"
        );
        assert!(
            elapsed >= LIMITS.deadline && elapsed < LIMITS.deadline * 3,
            "{elapsed:?}"
        );
        let mut response = String::new();
        silent.read_to_string(&mut response).unwrap();
        assert!(
            response.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{response}"
        );
        // Once both have gone, their slots are free again.
        drop((silent, dripping));
        let deadline = StdInstant::now() + Duration::from_secs(5);
        let response = loop {
            let response = ask(&mut connect(addr), "GET /healthz HTTP/1.1\r\n\r\n");
            if !response.starts_with("HTTP/1.1 503") || StdInstant::now() > deadline {
                break response;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.ends_with("\r\n\r\n/healthz"), "{response}");
    }

    #[test]
    fn it_should_answer_bad_and_oversized_requests() {
        let addr = server(LIMITS);
        let response = ask(&mut connect(addr), "\x01\x02 nonsense\r\n\r\n");
        assert!(
            response.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{response}"
        );
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_REQUEST));
        let mut stream = connect(addr);
        // The server answers once it has read MAX_REQUEST bytes; the rest of
        // the request is read and dropped, so no reset cuts the answer.
        let response = ask(&mut stream, &huge);
        assert!(
            response.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{response}"
        );
    }
}
