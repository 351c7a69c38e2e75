//! What the bench examples share: plain-message errors for `main`, a `ctx`
//! helper that puts what was being done in front, and the ping-pong client
//! socket and message.

use std::error::Error;
use std::fmt;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Bytes in one ping-pong message.
pub const MSG_LEN: usize = 64;

/// How long one read or write of the ping-pong client may block.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A ping-pong client connection: `TCP_NODELAY`, read and write timeouts.
pub fn ping_stream(addr: impl ToSocketAddrs + fmt::Display) -> Result<TcpStream> {
    let what = format!("connect to {addr}");
    let stream = ctx(TcpStream::connect(addr), &what)?;
    ctx(stream.set_nodelay(true), "set TCP_NODELAY")?;
    ctx(
        stream.set_read_timeout(Some(IO_TIMEOUT)),
        "set read timeout",
    )?;
    ctx(
        stream.set_write_timeout(Some(IO_TIMEOUT)),
        "set write timeout",
    )?;
    Ok(stream)
}

/// A ping-pong message of printable filler, so captures are easy to read.
pub fn ping_message() -> [u8; MSG_LEN] {
    std::array::from_fn(|i| b'a' + (i % 26) as u8)
}

/// An error whose `Debug` output is its plain message, so that `main`
/// returning it prints `Error: <message>` without quotes.
pub struct CliError(String);

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Error for CliError {}

pub type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// Builds a boxed error from a message.
pub fn fail(msg: impl Into<String>) -> Box<dyn Error> {
    Box::new(CliError(msg.into()))
}

/// Adds `what` as context in front of an error.
pub fn ctx<T, E: fmt::Display>(r: std::result::Result<T, E>, what: &str) -> Result<T> {
    r.map_err(|e| fail(format!("{what}: {e}")))
}
