//! The Prometheus text exposition format (0.0.4), written by hand.
//!
//! Why not the `prometheus` or `prometheus-client` crates: both want each
//! metric registered up front as their own atomic (or a custom collector
//! that encodes every sample by hand anyway). Our counters are per-worker
//! single-writer slots living in the routing objects and summed at scrape
//! time, and label sets come and go with reloads; the text format is a few
//! lines of escaping and `# TYPE` headers, checked by `promtool` in the
//! tests.

use super::access_log::AccessLog;
use super::names::*;
use super::process::ProcessStats;
use super::{DiscoveryStats, ReloadStats};
use crate::routing::{CONNECT_BUCKETS, DURATION_BUCKETS, Histogram, PerWorker};
use crate::routing::{ClientLimitReason, EndpointState, FailureReason, ResetCause, Snapshot};
use std::fmt::Write;

mod preamble;

/// Writes one metric family at a time.
struct Writer {
    out: String,
}

impl Writer {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"{}\"", escape(value));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// A histogram's buckets (cumulative), sum and count, summed over workers.
    fn histogram<T, const N: usize>(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        bounds: &[f64; N],
        slots: &PerWorker<T>,
        histogram: impl Fn(&T) -> &Histogram<N>,
    ) {
        let mut cumulative = 0;
        let bucket = format!("{name}_bucket");
        for (i, bound) in bounds.iter().enumerate() {
            cumulative += slots.sum(|s| histogram(s).buckets[i].get());
            let le = bound.to_string();
            let with_le: Vec<(&str, &str)> = labels
                .iter()
                .copied()
                .chain([("le", le.as_str())])
                .collect();
            self.sample(&bucket, &with_le, cumulative);
        }
        let count = slots.sum(|s| histogram(s).count());
        let with_inf: Vec<(&str, &str)> = labels.iter().copied().chain([("le", "+Inf")]).collect();
        self.sample(&bucket, &with_inf, count);
        let sum = slots.sum(|s| histogram(s).sum_micros.get()) as f64 / 1e6;
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, count);
    }
}

/// Escapes a label value: backslash, double quote and newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Everything /metrics reports.
pub struct Sources<'a> {
    /// The routing table, with the counters in it.
    pub snapshot: &'a Snapshot,
    /// Reload outcomes.
    pub reloads: &'a ReloadStats,
    /// The access log, if on.
    pub access_log: Option<&'a AccessLog>,
    /// The discovery sources' state.
    pub discovery: &'a DiscoveryStats,
    /// Seconds accept has been paused at the descriptor budget.
    pub accept_paused_seconds: f64,
}

/// Renders every metric.
pub fn render(sources: &Sources<'_>) -> String {
    let mut w = Writer {
        out: String::with_capacity(16 * 1024),
    };
    let snapshot = sources.snapshot;
    listeners(&mut w, snapshot);
    endpoints(&mut w, snapshot);
    services(&mut w, snapshot);
    control(&mut w, sources);
    process(&mut w);
    w.out
}

fn listeners(w: &mut Writer, snapshot: &Snapshot) {
    w.family(
        DOWNSTREAM_CONNECTIONS_TOTAL,
        "counter",
        "Client connections accepted.",
    );
    for l in &snapshot.listeners {
        let total = l.stats.sum(|s| s.accepted.get());
        w.sample(
            DOWNSTREAM_CONNECTIONS_TOTAL,
            &[("listener", &l.config.name)],
            total,
        );
    }
    w.family(
        DOWNSTREAM_CONNECTIONS_ACTIVE,
        "gauge",
        "Client connections open now.",
    );
    for l in &snapshot.listeners {
        // Read apart, `closed` may include a connection accepted after
        // `accepted` was read: never report a negative count.
        let accepted = l.stats.sum(|s| s.accepted.get());
        let open = accepted.saturating_sub(l.stats.sum(|s| s.closed.get()));
        w.sample(
            DOWNSTREAM_CONNECTIONS_ACTIVE,
            &[("listener", &l.config.name)],
            open,
        );
    }
    w.family(
        DOWNSTREAM_BYTES_TOTAL,
        "counter",
        "Bytes from clients (rx) and to clients (tx).",
    );
    for l in &snapshot.listeners {
        let name = l.config.name.as_str();
        let rx = l.stats.sum(|s| s.rx_bytes.get());
        let tx = l.stats.sum(|s| s.tx_bytes.get());
        w.sample(
            DOWNSTREAM_BYTES_TOTAL,
            &[("listener", name), ("direction", "rx")],
            rx,
        );
        w.sample(
            DOWNSTREAM_BYTES_TOTAL,
            &[("listener", name), ("direction", "tx")],
            tx,
        );
    }
    w.family(
        CONNECTIONS_REJECTED_TOTAL,
        "counter",
        "Client connections closed at once, by the limit that turned them away: \
         max_connections, max_connections_per_client, connection_rate_per_client.",
    );
    for l in &snapshot.listeners {
        let name = l.config.name.as_str();
        let rejected = l.stats.sum(|s| s.rejected.get());
        w.sample(
            CONNECTIONS_REJECTED_TOTAL,
            &[("listener", name), ("reason", "max_connections")],
            rejected,
        );
        if l.config.per_client.is_some() {
            for reason in ClientLimitReason::ALL {
                let n = l.stats.sum(|s| s.client_limited[reason as usize].get());
                w.sample(
                    CONNECTIONS_REJECTED_TOTAL,
                    &[("listener", name), ("reason", reason.label())],
                    n,
                );
            }
        }
    }
    preamble::listeners(w, snapshot);
    w.family(
        CONNECTIONS_RESET_TOTAL,
        "counter",
        "Connections ended with a reset on both sides, by what caused it: a reset (or \
         error) on the client or upstream socket, idle_timeout, or a drain that ran out of time.",
    );
    for l in &snapshot.listeners {
        for cause in ResetCause::ALL {
            let n = l.stats.sum(|s| s.resets[cause as usize].get());
            w.sample(
                CONNECTIONS_RESET_TOTAL,
                &[("listener", &l.config.name), ("cause", cause.label())],
                n,
            );
        }
    }
    w.family(
        CONNECTION_DURATION_SECONDS,
        "histogram",
        "How long client connections lasted, from accept to close.",
    );
    for l in &snapshot.listeners {
        let labels = [("listener", l.config.name.as_str())];
        w.histogram(
            CONNECTION_DURATION_SECONDS,
            &labels,
            &DURATION_BUCKETS,
            &l.stats,
            |s| &s.duration,
        );
    }
}

fn endpoints(w: &mut Writer, snapshot: &Snapshot) {
    let each = || {
        snapshot.services.iter().flat_map(|(name, s)| {
            s.members
                .iter()
                .map(move |m| (name.as_str(), m.endpoint.addr.to_string(), m))
        })
    };
    w.family(
        UPSTREAM_CONNECTIONS_TOTAL,
        "counter",
        "Upstream connections established.",
    );
    for (service, addr, m) in each() {
        let total = m.endpoint.stats.sum(|s| s.connections.get());
        w.sample(
            UPSTREAM_CONNECTIONS_TOTAL,
            &[("service", service), ("endpoint", &addr)],
            total,
        );
    }
    w.family(
        UPSTREAM_CONNECTIONS_ACTIVE,
        "gauge",
        "Upstream connections open or connecting now.",
    );
    for (service, addr, m) in each() {
        let labels = [("service", service), ("endpoint", addr.as_str())];
        w.sample(UPSTREAM_CONNECTIONS_ACTIVE, &labels, m.endpoint.active());
    }
    w.family(
        UPSTREAM_CONNECT_FAILURES_TOTAL,
        "counter",
        "Failed connect attempts, by reason (refused, timeout, other).",
    );
    for (service, addr, m) in each() {
        for reason in FailureReason::ALL {
            let n = m.endpoint.stats.sum(|s| s.failures[reason as usize].get());
            let labels = [
                ("service", service),
                ("endpoint", addr.as_str()),
                ("reason", reason.label()),
            ];
            w.sample(UPSTREAM_CONNECT_FAILURES_TOTAL, &labels, n);
        }
    }
    w.family(
        ENDPOINT_HEALTHY,
        "gauge",
        "1 if health lets the balancer use the endpoint (checks up or off, not ejected), else 0.",
    );
    for (service, addr, m) in each() {
        let labels = [("service", service), ("endpoint", addr.as_str())];
        w.sample(
            ENDPOINT_HEALTHY,
            &labels,
            u8::from(m.endpoint.health.is_usable()),
        );
    }
    w.family(
        OUTLIER_EJECTIONS_TOTAL,
        "counter",
        "Times outlier detection ejected the endpoint.",
    );
    for (service, addr, m) in each() {
        let total = m.endpoint.stats.sum(|s| s.ejections.get());
        let labels = [("service", service), ("endpoint", addr.as_str())];
        w.sample(OUTLIER_EJECTIONS_TOTAL, &labels, total);
    }
    w.family(
        ENDPOINTS,
        "gauge",
        "Endpoints per service and state (up, down, ejected, draining).",
    );
    for (name, s) in &snapshot.services {
        for state in EndpointState::ALL {
            let n = s.members.iter().filter(|m| m.state() == state).count();
            w.sample(ENDPOINTS, &[("service", name), ("state", state.label())], n);
        }
    }
}

fn services(w: &mut Writer, snapshot: &Snapshot) {
    w.family(
        UPSTREAM_CONNECT_DURATION_SECONDS,
        "histogram",
        "Time to establish upstream connections that succeeded.",
    );
    for (name, s) in &snapshot.services {
        let labels = [("service", name.as_str())];
        w.histogram(
            UPSTREAM_CONNECT_DURATION_SECONDS,
            &labels,
            &CONNECT_BUCKETS,
            &s.stats,
            |slot| &slot.connect_duration,
        );
    }
    w.family(
        NO_ENDPOINT_TOTAL,
        "counter",
        "Clients closed because the service had no usable endpoint.",
    );
    for (name, s) in &snapshot.services {
        let total = s.stats.sum(|slot| slot.no_endpoint.get());
        w.sample(NO_ENDPOINT_TOTAL, &[("service", name)], total);
    }
    w.family(
        PANIC_TOTAL,
        "counter",
        "Connections balanced in panic mode, ignoring health.",
    );
    for (name, s) in &snapshot.services {
        let total = s.stats.sum(|slot| slot.panic.get());
        w.sample(PANIC_TOTAL, &[("service", name)], total);
    }
}

/// `l4mesh_discovery_*`, one series per source (`etcd`, `dns:SERVICE`).
fn discovery(w: &mut Writer, stats: &DiscoveryStats) {
    let all = stats.all();
    w.family(
        DISCOVERY_UP,
        "gauge",
        "Whether the discovery source answered at its last attempt.",
    );
    for (name, s) in &all {
        w.sample(DISCOVERY_UP, &[("source", name)], u64::from(s.is_up()));
    }
    w.family(
        DISCOVERY_LAST_SYNC,
        "gauge",
        "Unix time the discovery source last delivered a complete, current view (0: never).",
    );
    for (name, s) in &all {
        w.sample(
            DISCOVERY_LAST_SYNC,
            &[("source", name)],
            s.last_sync_seconds(),
        );
    }
    w.family(
        DISCOVERY_ERRORS_TOTAL,
        "counter",
        "Failed attempts to reach the discovery source; its last endpoints keep serving.",
    );
    for (name, s) in &all {
        w.sample(DISCOVERY_ERRORS_TOTAL, &[("source", name)], s.errors());
    }
}

fn control(w: &mut Writer, sources: &Sources<'_>) {
    w.family(
        CONFIG_RELOADS_TOTAL,
        "counter",
        "Config reloads, by result.",
    );
    w.sample(
        CONFIG_RELOADS_TOTAL,
        &[("result", "success")],
        sources.reloads.successes(),
    );
    w.sample(
        CONFIG_RELOADS_TOTAL,
        &[("result", "failure")],
        sources.reloads.failures(),
    );
    w.family(
        CONFIG_LAST_RELOAD_SUCCESS,
        "gauge",
        "Unix time of the last successful config load.",
    );
    w.sample(
        CONFIG_LAST_RELOAD_SUCCESS,
        &[],
        sources.reloads.last_success_unix(),
    );
    w.family(
        CONFIG_GENERATION,
        "gauge",
        "Generation of the routing table in use.",
    );
    w.sample(CONFIG_GENERATION, &[], sources.snapshot.generation);
    w.family(
        ACCEPT_PAUSED_SECONDS_TOTAL,
        "counter",
        "Seconds spent not accepting because as many clients were open as the descriptor limit \
         allows.",
    );
    w.sample(
        ACCEPT_PAUSED_SECONDS_TOTAL,
        &[],
        sources.accept_paused_seconds,
    );
    discovery(w, sources.discovery);
    if let Some(log) = sources.access_log {
        w.family(
            ACCESS_LOG_DROPPED_TOTAL,
            "counter",
            "Access-log lines dropped because the writer fell behind.",
        );
        w.sample(ACCESS_LOG_DROPPED_TOTAL, &[], log.dropped());
    }
}

/// The `process_*` families; a figure that could not be read is left out
/// (unknown), never written as 0.
fn process(w: &mut Writer) {
    let p = ProcessStats::read();
    let mut figure = |name: &str, kind: &str, help: &str, value: Option<f64>| {
        if let Some(value) = value {
            w.family(name, kind, help);
            w.sample(name, &[], value);
        }
    };
    figure(
        PROCESS_CPU_SECONDS_TOTAL,
        "counter",
        "User and system CPU time spent, in seconds.",
        p.cpu_seconds,
    );
    figure(
        PROCESS_RESIDENT_MEMORY_BYTES,
        "gauge",
        "Resident memory size in bytes.",
        p.resident_bytes.map(|v| v as f64),
    );
    figure(
        PROCESS_VIRTUAL_MEMORY_BYTES,
        "gauge",
        "Virtual memory size in bytes.",
        p.virtual_bytes.map(|v| v as f64),
    );
    figure(
        PROCESS_OPEN_FDS,
        "gauge",
        "Open file descriptors.",
        p.open_fds.map(|v| v as f64),
    );
    figure(
        PROCESS_MAX_FDS,
        "gauge",
        "Maximum number of open file descriptors.",
        p.max_fds.map(|v| v as f64),
    );
    figure(
        PROCESS_START_TIME_SECONDS,
        "gauge",
        "Start time of the process since the Unix epoch, in seconds.",
        p.start_time_seconds,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_should_escape_label_values() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn it_should_write_samples_with_and_without_labels() {
        let mut w = Writer { out: String::new() };
        w.family("x_total", "counter", "X.");
        w.sample("x_total", &[("a", "1"), ("b", "two")], 3);
        w.sample("y", &[], 0.5);
        assert_eq!(
            w.out,
            "# HELP x_total X.\n# TYPE x_total counter\nx_total{a=\"1\",b=\"two\"} 3\ny 0.5\n"
        );
    }
}
