//! Connecting upstream: one attempt with a timeout, and failover across
//! distinct endpoints of a service up to `connect_attempts`. Every attempt
//! feeds the service's outlier detection: a success ends the endpoint's
//! failure streak, a failure lengthens it and may eject the endpoint.
//!
//! The connect itself is the worker's event loop's ([`EventLoop::connect`]).

use super::io::EventLoop;
use crate::routing::health::monotonic_ms;
use crate::routing::{ActiveGuard, Endpoint, Outlier, Service};
use crate::routing::{CONNECT_BUCKETS, FailureReason};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Why one connect attempt failed. Every kind lets failover try another
/// endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The endpoint answered with a reset: nothing listens there.
    #[error("refused")]
    Refused,
    /// No answer within `connect_timeout`.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// Any other error, such as an unreachable network or no free fd.
    #[error("{0}")]
    Other(#[from] io::Error),
}

impl ConnectError {
    /// The `reason` label of the failure metric.
    pub fn reason(&self) -> FailureReason {
        match self {
            ConnectError::Refused => FailureReason::Refused,
            ConnectError::Timeout(_) => FailureReason::Timeout,
            ConnectError::Other(_) => FailureReason::Other,
        }
    }

    /// Whether it failed for want of descriptors or kernel memory, which
    /// says nothing about the endpoint.
    pub fn is_resource_exhaustion(&self) -> bool {
        match self {
            ConnectError::Other(e) => matches!(
                e.raw_os_error(),
                Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
            ),
            _ => false,
        }
    }
}

/// One failed attempt, for the log line that gives them all.
#[derive(Debug)]
pub struct Attempt {
    /// The endpoint tried.
    pub addr: SocketAddr,
    /// Why it failed.
    pub error: ConnectError,
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.addr, self.error)
    }
}

/// An established upstream connection, over a socket `S` of the worker's
/// event loop.
pub struct Connected<S> {
    /// The connected socket.
    pub stream: S,
    /// The member of the service it goes to.
    pub index: usize,
    /// Connect attempts it took, this one included.
    pub attempts: u32,
    /// Balanced in panic mode (health ignored).
    pub panic: bool,
    /// Counts it as active on the endpoint while alive.
    _active: ActiveGuard,
}

impl<S> Connected<S> {
    /// The socket, and the guard that counts it as active on its endpoint
    /// (keep it for as long as the connection is open).
    pub fn into_parts(self) -> (S, ActiveGuard) {
        (self.stream, self._active)
    }
}

/// Every connect attempt failed, or there was nothing to try.
#[derive(Debug)]
pub struct Failed {
    /// Each attempt, in order (empty when no endpoint was usable).
    pub attempts: Vec<Attempt>,
    /// Balanced in panic mode (health ignored).
    pub panic: bool,
}

/// Connects `client` to an endpoint of `service` on event loop `l`, trying
/// distinct endpoints until one answers or `connect_attempts` have failed.
/// Returns the
/// connection (which counts as active on its endpoint while alive), or every
/// failed attempt. The count starts at the pick, so load-aware policies see
/// connections that are still connecting; an endpoint that fills up
/// (`max_connections_per_endpoint`) between the pick and the count is passed
/// over without counting as an attempt.
///
/// Each attempt is counted in worker `worker`'s slots: a success in the
/// endpoint's connections and the service's connect-time histogram, a
/// failure in the endpoint's failures by reason (and ejections). A failure
/// for want of descriptors says nothing about the endpoint and is not fed to
/// outlier detection.
pub async fn establish<L: EventLoop>(
    l: &L,
    service: &Service,
    client: SocketAddr,
    worker: usize,
) -> Result<Connected<L::Stream>, Failed> {
    let mut tried = Tried::default();
    let mut failed = Vec::new();
    let mut panic = false;
    // Bounded: each pass tries a new member, and there are only so many.
    for _ in 0..service.members.len() {
        if failed.len() >= service.connect_attempts as usize {
            break;
        }
        let retry = !failed.is_empty();
        let Some(choice) = service.choose(client.ip(), retry, &|i| tried.contains(i)) else {
            break;
        };
        tried.insert(choice.index);
        let endpoint = &service.members[choice.index].endpoint;
        let Some(active) = endpoint.try_acquire(service.max_connections_per_endpoint) else {
            continue;
        };
        panic |= choice.panic;
        let addr = endpoint.addr;
        let started = Instant::now();
        let counts = endpoint.stats.slot(worker);
        match l.connect(addr, service.connect_timeout).await {
            Ok(stream) => {
                counts.connections.add(1);
                service.connect_succeeded(choice.index);
                let took = started.elapsed().as_secs_f64();
                let histogram = &service.stats.slot(worker).connect_duration;
                histogram.observe(&CONNECT_BUCKETS, took);
                return Ok(Connected {
                    stream,
                    index: choice.index,
                    attempts: failed.len() as u32 + 1,
                    panic,
                    _active: active,
                });
            }
            Err(error) => {
                counts.failures[error.reason() as usize].add(1);
                log::debug!("connect to {addr} failed: {error}; trying another endpoint");
                if !error.is_resource_exhaustion() {
                    let outlier = service.connect_failed(choice.index, monotonic_ms());
                    report(service, endpoint, &error, outlier, worker);
                }
                failed.push(Attempt { addr, error });
            }
        }
    }
    Err(Failed {
        attempts: failed,
        panic,
    })
}

/// Counts and logs what outlier detection made of one failure.
fn report(
    service: &Service,
    endpoint: &Endpoint,
    error: &ConnectError,
    outlier: Option<Outlier>,
    worker: usize,
) {
    let Some(consecutive) = service.outlier.as_ref().map(|o| o.consecutive_failures) else {
        return;
    };
    let addr = endpoint.addr;
    match outlier {
        None => {}
        Some(Outlier::Ejected(ejection)) => {
            endpoint.stats.slot(worker).ejections.add(1);
            log::warn!(
                "outlier: service {} endpoint {addr} ejected for {:?} after {consecutive} connect \
                 failure(s) in a row (last: {error}; ejection {} in a row)",
                service.name,
                ejection.duration,
                ejection.multiplier
            );
        }
        Some(Outlier::CannotSpare { ejected, total }) => {
            if let Some(held_back) = service.shared.spare_log.allow() {
                log::warn!(
                    "outlier: service {} endpoint {addr} failed {consecutive} connect(s) in a \
                     row but stays in: {ejected} of {total} endpoint(s) are ejected already \
                     (max_ejection_percent {}%; {held_back} similar since the last line)",
                    service.name,
                    service
                        .outlier
                        .as_ref()
                        .map_or(0, |o| o.max_ejection_percent)
                );
            }
        }
    }
}

/// The members already tried for one client. Almost every client needs one
/// or two attempts, so the first few live inline: no allocation per
/// connection on the hot path; more spill to the heap.
#[derive(Debug, Default)]
struct Tried {
    inline: [usize; 4],
    len: usize,
    more: Vec<usize>,
}

impl Tried {
    fn insert(&mut self, index: usize) {
        if self.len < self.inline.len() {
            self.inline[self.len] = index;
            self.len += 1;
        } else {
            self.more.push(index);
        }
    }

    fn contains(&self, index: usize) -> bool {
        self.inline[..self.len].contains(&index) || self.more.contains(&index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_should_remember_every_member_tried_past_the_inline_ones() {
        let mut tried = Tried::default();
        for i in [7, 3, 9, 1, 4, 8] {
            assert!(!tried.contains(i));
            tried.insert(i);
        }
        for i in [7, 3, 9, 1, 4, 8] {
            assert!(tried.contains(i), "{i}");
        }
        assert!(!tried.contains(0));
    }
}
