//! One SRV service followed: query, send the endpoints when they changed,
//! wait as the TTL (or the failure backoff) says, again.

use super::query::{Answer, QueryError, Resolver};
use crate::discovery::{Feed, Scope, Update};
use crate::metrics::SourceStatus;
use crate::routing::{Discovered, Source};
use hickory_resolver::proto::rr::Name;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The shortest wait between two answered queries, unless `refresh` is
/// shorter: a TTL of 0 (dnsmasq's default for its own records, and common
/// in service registries) would otherwise have every proxy of a fleet ask
/// its name server in a loop.
pub const FLOOR: Duration = Duration::from_secs(1);

/// The first retry after a failed query; each further one waits twice as
/// long, up to `refresh`.
pub const FIRST_RETRY: Duration = Duration::from_millis(500);

/// How often a service's failures are logged while they last.
pub const WARN_EVERY: Duration = Duration::from_secs(60);

/// What one service follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    /// The service's name.
    pub service: String,
    /// The SRV name as configured.
    pub name: String,
    /// The longest time between two queries.
    pub refresh: Duration,
}

/// Follows `srv` until aborted: each answer whose endpoints differ from the
/// last one sent (and the first) goes to `feed`; a failure sends nothing,
/// so the last endpoints keep serving.
pub async fn follow(srv: Srv, resolver: Arc<Resolver>, feed: Feed, status: Arc<SourceStatus>) {
    let Srv {
        service,
        name,
        refresh,
    } = srv;
    let fqdn = match Name::from_ascii(format!("{}.", name.trim_end_matches('.'))) {
        Ok(fqdn) => fqdn,
        Err(e) => {
            // The config's validation accepts only names that parse.
            log::error!("dns: service {service}: SRV name {name:?} does not parse ({e})");
            status.failed();
            return;
        }
    };
    let mut sent: Option<Vec<Discovered>> = None;
    let mut trouble = Trouble::default();
    let mut failures: u32 = 0;
    loop {
        let wait = match resolver.query(&fqdn).await {
            Ok(answer) => {
                if let Some((failed, lasted)) = trouble.answered(Instant::now()) {
                    log::info!(
                        "dns: service {service}: SRV {name} answers again, after {failed} failed \
                         queries over {:.1}s",
                        lasted.as_secs_f64()
                    );
                }
                report_skipped(&service, &name, &answer, &mut trouble);
                // Up before the update leaves, so that whoever sees the
                // update sees the source up.
                status.synced();
                if sent.as_ref() != Some(&answer.endpoints) {
                    log::info!(
                        "dns: service {service}: SRV {name} gives {} endpoint(s): {}",
                        answer.endpoints.len(),
                        describe(&answer.endpoints)
                    );
                    feed.send(Update {
                        source: Source::Dns,
                        scope: Scope::Services,
                        services: BTreeMap::from([(service.clone(), answer.endpoints.clone())]),
                    });
                    sent = Some(answer.endpoints);
                }
                failures = 0;
                after_answer(refresh, answer.ttl)
            }
            Err(error) => {
                status.failed();
                failures = failures.saturating_add(1);
                let wait = jitter(after_failure(refresh, failures));
                if let Some(held) = trouble.failed(Instant::now()) {
                    let asked = resolver.servers();
                    warn_failure(&service, &name, &asked, &error, sent.as_deref(), wait, held);
                }
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

fn warn_failure(
    service: &str,
    name: &str,
    asked: &str,
    error: &QueryError,
    sent: Option<&[Discovered]>,
    wait: Duration,
    held: u64,
) {
    let keeping = match sent {
        Some(list) => format!("keeping its last {} endpoint(s)", list.len()),
        None => "it has no DNS endpoints yet".to_string(),
    };
    let held = if held > 0 {
        format!(" ({held} more failures since the last line)")
    } else {
        String::new()
    };
    log::warn!(
        "dns: service {service}: SRV {name} (asking {asked}): {error}; {keeping}, \
         retrying in {:.1}s{held}",
        wait.as_secs_f64()
    );
}

fn report_skipped(service: &str, name: &str, answer: &Answer, trouble: &mut Trouble) {
    if !answer.skipped.is_empty() && trouble.skipped(Instant::now()) {
        log::warn!(
            "dns: service {service}: SRV {name}: skipping target(s) {}; the others serve",
            answer.skipped.join(", ")
        );
    }
}

fn describe(endpoints: &[Discovered]) -> String {
    if endpoints.is_empty() {
        return "none (the SRV target is \".\")".to_string();
    }
    // A long answer is summed up: the first few, then a count.
    const SHOWN: usize = 10;
    let mut list: Vec<String> = endpoints
        .iter()
        .take(SHOWN)
        .map(|d| format!("{} weight {} tier {}", d.addr, d.weight, d.tier))
        .collect();
    if endpoints.len() > SHOWN {
        list.push(format!("and {} more", endpoints.len() - SHOWN));
    }
    list.join(", ")
}

/// The wait after an answer whose shortest TTL is `ttl`: the TTL when it is
/// shorter than `refresh`, but not under [`FLOOR`] (or `refresh`, if that
/// is shorter still).
pub fn after_answer(refresh: Duration, ttl: Duration) -> Duration {
    ttl.min(refresh).max(FLOOR.min(refresh))
}

/// The wait after the `failures`-th failed query in a row (from 1):
/// [`FIRST_RETRY`], doubling, at most `refresh`.
pub fn after_failure(refresh: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_RETRY.saturating_mul(1 << doublings).min(refresh)
}

/// `wait` ±10%, so that a fleet of proxies does not retry in step.
fn jitter(wait: Duration) -> Duration {
    wait.mul_f64(0.9 + fastrand::f64() * 0.2)
}

/// When to log a service's failures: the first of a run at once, then at
/// most one line per [`WARN_EVERY`] (across runs, so that a flapping server
/// does not log every query), and a line on recovery when a failure of the
/// run was logged.
#[derive(Debug, Default)]
pub struct Trouble {
    /// Failures in the current run, and when it began.
    run: Option<(u64, Instant)>,
    /// Whether a failure of the current run was logged.
    told: bool,
    last_warn: Option<Instant>,
    held: u64,
    last_skip_warn: Option<Instant>,
}

impl Trouble {
    /// A query failed at `now`: Some(failures held back since the last
    /// line) when this one should be logged.
    pub fn failed(&mut self, now: Instant) -> Option<u64> {
        let run = self.run.get_or_insert((0, now));
        run.0 += 1;
        if self
            .last_warn
            .is_some_and(|last| now.duration_since(last) < WARN_EVERY)
        {
            self.held += 1;
            return None;
        }
        self.last_warn = Some(now);
        self.told = true;
        Some(std::mem::take(&mut self.held))
    }

    /// A query was answered at `now`: Some((failures, how long they
    /// lasted)) when a run of failures that was logged just ended.
    pub fn answered(&mut self, now: Instant) -> Option<(u64, Duration)> {
        let (failures, since) = self.run.take()?;
        std::mem::take(&mut self.told).then(|| (failures, now.duration_since(since)))
    }

    /// An answer skipped some targets at `now`: whether to log it.
    pub fn skipped(&mut self, now: Instant) -> bool {
        if self
            .last_skip_warn
            .is_some_and(|last| now.duration_since(last) < WARN_EVERY)
        {
            return false;
        }
        self.last_skip_warn = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    const S: fn(u64) -> Duration = Duration::from_secs;
    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn it_should_wait_for_the_ttl_when_it_is_shorter_than_refresh() {
        assert_eq!(after_answer(S(10), S(3)), S(3));
        assert_eq!(after_answer(S(10), S(30)), S(10));
    }

    #[test]
    fn it_should_not_ask_faster_than_the_floor_unless_refresh_is_shorter() {
        assert_eq!(after_answer(S(10), S(0)), FLOOR);
        assert_eq!(after_answer(MS(300), S(0)), MS(300));
        assert_eq!(after_answer(MS(300), S(60)), MS(300));
    }

    #[test]
    fn it_should_back_off_after_failures_up_to_refresh() {
        let waits: Vec<Duration> = (1..=6).map(|n| after_failure(S(5), n)).collect();
        assert_eq!(waits, vec![MS(500), S(1), S(2), S(4), S(5), S(5)]);
        assert_eq!(after_failure(MS(200), 1), MS(200));
        assert_eq!(after_failure(S(30), u32::MAX), S(30));
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..1000 {
            let wait = jitter(S(10));
            assert!(wait >= S(9) && wait <= S(11), "{wait:?}");
        }
    }

    #[test]
    fn it_should_log_a_failure_run_at_once_then_once_a_minute_then_its_end() {
        let t0 = Instant::now();
        let mut trouble = Trouble::default();
        assert_eq!(trouble.failed(t0), Some(0));
        assert_eq!(trouble.failed(t0 + S(1)), None);
        assert_eq!(trouble.failed(t0 + S(30)), None);
        assert_eq!(trouble.failed(t0 + S(60)), Some(2));
        assert_eq!(trouble.answered(t0 + S(61)), Some((4, S(61))));
        // Nothing to say after an answer that ended no run.
        assert_eq!(trouble.answered(t0 + S(62)), None);
    }

    #[test]
    fn a_flapping_server_is_logged_at_most_once_a_minute() {
        let t0 = Instant::now();
        let mut trouble = Trouble::default();
        assert_eq!(trouble.failed(t0), Some(0));
        assert!(trouble.answered(t0 + S(1)).is_some());
        // A new run within the minute: held back, and so is its end.
        assert_eq!(trouble.failed(t0 + S(2)), None);
        assert_eq!(trouble.answered(t0 + S(3)), None);
        assert_eq!(trouble.failed(t0 + S(61)), Some(1));
    }

    #[test]
    fn a_long_answer_is_summed_up_in_its_log_line() {
        let many: Vec<Discovered> = (0..12)
            .map(|i| Discovered {
                addr: SocketAddr::from(([127, 0, 0, 1], 7000 + i)),
                weight: 1,
                tier: 0,
            })
            .collect();
        let line = describe(&many);
        assert!(
            line.starts_with("127.0.0.1:7000 weight 1 tier 0, "),
            "{line}"
        );
        assert!(
            line.ends_with("127.0.0.1:7009 weight 1 tier 0, and 2 more"),
            "{line}"
        );
        assert_eq!(describe(&many[..1]), "127.0.0.1:7000 weight 1 tier 0");
    }

    #[test]
    fn skipped_targets_are_logged_once_a_minute() {
        let t0 = Instant::now();
        let mut trouble = Trouble::default();
        assert!(trouble.skipped(t0));
        assert!(!trouble.skipped(t0 + S(59)));
        assert!(trouble.skipped(t0 + S(60)));
    }
}
