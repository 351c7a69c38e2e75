//! `l4mesh ctl --etcd URL register SERVICE ADDR [weight=N] [zone=Z] --ttl
//! 10s`: the sidecar that keeps an endpoint in etcd for as long as it runs.
//!
//! It grants a lease of the TTL, puts the endpoint's key with it, prints one
//! line, and sends a keep-alive every TTL/3. If the process dies, the lease
//! expires and the key leaves by itself within the TTL. SIGTERM or SIGINT
//! revokes the lease, so the key leaves at once, and exits 0.
//!
//! When etcd is lost it retries with capped exponential backoff and jitter;
//! once back, it keeps the old lease alive if etcd still has it (putting
//! the key again only if it went), else grants a new lease and puts again.

use super::ctl::{Endpoint, EtcdCtlError, TIMEOUT, Target};
use etcd_client::{Client, PutOptions};
use std::io::Write;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};

/// The first wait after a failure; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// The longest wait between two attempts to reach etcd.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What the sidecar holds across reconnections.
#[derive(Default)]
struct Held {
    client: Option<Client>,
    /// The lease the key is put with, while etcd may still have it.
    lease: Option<i64>,
    /// Whether the "registered" line was printed.
    announced: bool,
}

/// Registers `endpoint` under a lease of `ttl` and keeps it alive until
/// SIGTERM or SIGINT, then revokes the lease. Errors only if the signal
/// handlers cannot be installed or the revocation failed (the key then
/// leaves when the lease expires).
pub async fn run(target: &Target, endpoint: &Endpoint, ttl: Duration) -> Result<(), EtcdCtlError> {
    let install =
        |kind| signal(kind).map_err(|e| target.error(format!("cannot handle signals: {e}")));
    let (mut term, mut int) = (
        install(SignalKind::terminate())?,
        install(SignalKind::interrupt())?,
    );
    let mut held = Held::default();
    let name = tokio::select! {
        never = keep(target, endpoint, ttl, &mut held) => match never {},
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    let key = endpoint.key(&target.prefix);
    let Some(lease) = held.lease else {
        log::info!("{name}: {key} was not registered; nothing to revoke");
        return Ok(());
    };
    let revoke = async {
        let mut client = match held.client.take() {
            Some(client) => client,
            None => target.connect().await?,
        };
        client
            .lease_revoke(lease)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(TIMEOUT, revoke).await {
        Ok(Ok(())) => {
            log::info!("{name}: revoked lease {lease:x}; {key} is gone");
            Ok(())
        }
        Ok(Err(why)) => Err(target.error(format!(
            "{name}: cannot revoke lease {lease:x} ({why}); {key} stays until the lease \
             expires, within {} s",
            ttl.as_secs()
        ))),
        Err(_) => Err(target.error(format!(
            "{name}: revoking lease {lease:x} took over {} s; {key} stays until the lease \
             expires, within {} s",
            TIMEOUT.as_secs(),
            ttl.as_secs()
        ))),
    }
}

/// Registers and keeps the lease alive, reconnecting for ever.
async fn keep(
    target: &Target,
    endpoint: &Endpoint,
    ttl: Duration,
    held: &mut Held,
) -> std::convert::Infallible {
    let mut backoff = MIN_BACKOFF;
    let mut lost_since: Option<std::time::Instant> = None;
    loop {
        let why = session(target, endpoint, ttl, held, &mut backoff, &mut lost_since).await;
        held.client = None;
        let wait = backoff.mul_f64(0.8 + 0.4 * fastrand::f64());
        if lost_since.is_none() {
            lost_since = Some(std::time::Instant::now());
            log::warn!(
                "etcd ({}): {why}; retrying with backoff up to {} s",
                target.endpoints.join(","),
                MAX_BACKOFF.as_secs()
            );
        } else {
            log::debug!("etcd still unreachable: {why}; next attempt in {wait:?}");
        }
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection: (re)registers, then sends keep-alives until something
/// fails; returns why.
async fn session(
    target: &Target,
    endpoint: &Endpoint,
    ttl: Duration,
    held: &mut Held,
    backoff: &mut Duration,
    lost_since: &mut Option<std::time::Instant>,
) -> String {
    let key = endpoint.key(&target.prefix);
    let value = endpoint.value();
    let client = match target.connect().await {
        Ok(client) => held.client.insert(client),
        Err(why) => return why,
    };
    let within = |what: &'static str| move |_| format!("{what} took over {} s", TIMEOUT.as_secs());
    // A lease from before the outage: still there?
    if let Some(lease) = held.lease {
        match tokio::time::timeout(TIMEOUT, client.lease_time_to_live(lease, None)).await {
            Err(e) => return within("asking for the lease's TTL")(e),
            Ok(Err(e)) => return format!("cannot ask for lease {lease:x}: {e}"),
            Ok(Ok(r)) if r.ttl() <= 0 => {
                log::warn!(
                    "lease {lease:x} expired while etcd was unreachable, taking {key} with it; \
                     granting a new lease"
                );
                held.lease = None;
            }
            Ok(Ok(r)) => log::info!(
                "etcd reachable again; lease {lease:x} still alive ({} s left)",
                r.ttl()
            ),
        }
    }
    let lease = match held.lease {
        Some(lease) => lease,
        None => {
            let granted =
                tokio::time::timeout(TIMEOUT, client.lease_grant(ttl.as_secs() as i64, None))
                    .await
                    .map_err(within("granting a lease"));
            match granted {
                Ok(Ok(r)) => *held.lease.insert(r.id()),
                Ok(Err(e)) => return format!("cannot grant a lease of {} s: {e}", ttl.as_secs()),
                Err(why) => return why,
            }
        }
    };
    // Put the key unless it is there as it should be (an old lease kept it).
    let current = match tokio::time::timeout(TIMEOUT, client.get(key.as_str(), None)).await {
        Err(e) => return within("reading the key")(e),
        Ok(Err(e)) => return format!("cannot read {key}: {e}"),
        Ok(Ok(r)) => r.kvs().first().map(|kv| (kv.lease(), kv.value().to_vec())),
    };
    if current != Some((lease, value.clone().into_bytes())) {
        let put = client.put(
            key.as_str(),
            value.as_str(),
            Some(PutOptions::new().with_lease(lease)),
        );
        match tokio::time::timeout(TIMEOUT, put).await {
            Err(e) => return within("putting the key")(e),
            Ok(Err(e)) => return format!("cannot put {key}: {e}"),
            Ok(Ok(_)) if held.announced => {
                log::info!("put {key} = {value} again with lease {lease:x}")
            }
            Ok(Ok(_)) => {}
        }
    }
    let (mut keeper, mut stream) =
        match tokio::time::timeout(TIMEOUT, client.lease_keep_alive(lease)).await {
            Err(e) => return within("starting keep-alives")(e),
            Ok(Err(e)) => return format!("cannot keep lease {lease:x} alive: {e}"),
            Ok(Ok(pair)) => pair,
        };
    if !held.announced {
        held.announced = true;
        // The one line a supervisor or a script waits for.
        println!(
            "registered {} {} at {key} = {value} with lease {lease:x} (ttl {} s); \
             SIGTERM deregisters",
            endpoint.service,
            endpoint.addr,
            ttl.as_secs()
        );
        let _ = std::io::stdout().flush();
    }
    if let Some(since) = lost_since.take() {
        log::info!(
            "etcd reachable again after {} s; {key} registered with lease {lease:x}",
            since.elapsed().as_secs()
        );
    }
    *backoff = MIN_BACKOFF;
    let period = ttl / 3;
    loop {
        tokio::time::sleep(period).await;
        if let Err(e) = keeper.keep_alive().await {
            return format!("cannot send a keep-alive for lease {lease:x}: {e}");
        }
        match tokio::time::timeout(period.max(Duration::from_millis(300)), stream.message()).await {
            Err(_) => {
                return format!("no keep-alive answer for lease {lease:x} within {period:?}");
            }
            Ok(Err(e)) => return format!("the keep-alive stream failed: {e}"),
            Ok(Ok(None)) => return "the keep-alive stream ended".into(),
            Ok(Ok(Some(r))) if r.ttl() <= 0 => {
                held.lease = None;
                return format!("lease {lease:x} expired; {key} went with it");
            }
            Ok(Ok(Some(_))) => {}
        }
    }
}
