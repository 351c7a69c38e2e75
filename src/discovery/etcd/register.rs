//! `l4mesh ctl --etcd`: register an endpoint under a lease kept alive until
//! told to stop (then the lease is revoked, so the key leaves at once),
//! deregister one, or list what etcd holds.

use super::{connect, schema};
use crate::config::EtcdConfig;
use etcd_client::{Client, GetOptions, PutOptions};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

/// One endpoint to register.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The service.
    pub service: String,
    /// The endpoint.
    pub addr: SocketAddr,
    /// Its weight, 1 to 256.
    pub weight: u32,
    /// Its zone, if any.
    pub zone: Option<String>,
    /// The lease's time to live.
    pub ttl: Duration,
}

/// Keeps `reg` registered until `stop` completes, then revokes its lease.
/// When etcd is lost it keeps retrying and registers again on return.
pub async fn register(
    config: &EtcdConfig,
    reg: &Registration,
    stop: impl Future<Output = ()>,
) -> Result<(), String> {
    let mut stop = pin!(stop);
    let key = schema::key(&config.prefix, &reg.service, reg.addr);
    let value = value(reg.weight, reg.zone.as_deref());
    let ttl = reg.ttl.as_secs().max(1) as i64;
    let mut backoff = Backoff::new();
    let mut registered_once = false;
    loop {
        let mut lease = None;
        let why = tokio::select! {
            why = hold(config, &key, &value, ttl, &mut lease, &mut registered_once) => why,
            () = &mut stop => return revoke(config, lease, &key, ttl).await,
        };
        log::warn!("etcd registration of {key}: {why}; retrying");
        let wait = backoff.next_wait();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            // The lease may still be live if etcd answers again.
            () = &mut stop => return revoke(config, lease, &key, ttl).await,
        }
        if lease.is_some() {
            backoff.reset();
        }
    }
}

/// Revokes the lease held, if any, so that the key leaves at once.
async fn revoke(
    config: &EtcdConfig,
    lease: Option<(Client, i64)>,
    key: &str,
    ttl: i64,
) -> Result<(), String> {
    let Some((mut client, id)) = lease else {
        return Ok(());
    };
    within(config.dial_timeout, client.lease_revoke(id))
        .await
        .map_err(|e| {
            format!(
                "cannot revoke lease {id:x} of {key}: {e}; the key leaves when the lease \
                 expires (within {ttl} s)"
            )
        })?;
    log::info!("revoked lease {id:x}: {key} removed");
    Ok(())
}

/// Grants a lease, puts the key and keeps the lease alive; returns why it
/// stopped. `lease` holds the client and lease while it is held.
async fn hold(
    config: &EtcdConfig,
    key: &str,
    value: &str,
    ttl: i64,
    lease: &mut Option<(Client, i64)>,
    registered_once: &mut bool,
) -> String {
    let mut client = match connect(config).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    let limit = config.dial_timeout;
    let id = match within(limit, client.lease_grant(ttl, None)).await {
        Ok(r) => r.id(),
        Err(e) => return format!("cannot grant a lease: {e}"),
    };
    *lease = Some((client.clone(), id));
    let put = PutOptions::new().with_lease(id);
    if let Err(e) = within(limit, client.put(key, value, Some(put))).await {
        return format!("cannot put {key}: {e}");
    }
    if *registered_once {
        log::info!("registered {key} again with lease {id:x}");
    } else {
        println!("registered {key} = {value} with lease {id:x} (ttl {ttl} s)");
        *registered_once = true;
    }
    let (mut keeper, mut responses) = match within(limit, client.lease_keep_alive(id)).await {
        Ok(k) => k,
        Err(e) => return format!("cannot keep lease {id:x} alive: {e}"),
    };
    let every = Duration::from_millis((ttl as u64 * 1000 / 3).max(100));
    loop {
        if let Err(e) = keeper.keep_alive().await {
            return format!("keep-alive of lease {id:x} failed: {e}");
        }
        match tokio::time::timeout(every, responses.message()).await {
            Ok(Ok(Some(r))) if r.ttl() <= 0 => return format!("lease {id:x} expired"),
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => return "etcd closed the keep-alive stream".into(),
            Ok(Err(e)) => return format!("keep-alive of lease {id:x} failed: {e}"),
            Err(_) => return format!("no keep-alive answer for lease {id:x} within {every:?}"),
        }
        tokio::time::sleep(every).await;
    }
}

/// The value stored for an endpoint.
fn value(weight: u32, zone: Option<&str>) -> String {
    let mut v = serde_json::json!({ "weight": weight });
    if let Some(zone) = zone {
        v["zone"] = serde_json::Value::from(zone);
    }
    v.to_string()
}

/// Runs an etcd call that may wait forever for a member when none is up.
async fn within<T>(
    limit: Duration,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

/// Capped exponential backoff with jitter: 100 ms doubling to 5 s, each
/// wait a random point between half and all of the current step.
#[derive(Debug)]
struct Backoff {
    step: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(5);

    fn new() -> Backoff {
        Backoff { step: Self::FIRST }
    }

    fn reset(&mut self) {
        self.step = Self::FIRST;
    }

    fn next_wait(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(Self::CAP);
        let half = step / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

/// Deletes `service`'s endpoint `addr`; says whether it was there.
pub async fn deregister(
    config: &EtcdConfig,
    service: &str,
    addr: SocketAddr,
) -> Result<bool, String> {
    let mut client = connect(config).await?;
    let key = schema::key(&config.prefix, service, addr);
    let r = within(config.dial_timeout, client.delete(key.clone(), None))
        .await
        .map_err(|e| format!("cannot delete {key}: {e}"))?;
    Ok(r.deleted() > 0)
}

/// The endpoints etcd holds (of `service`, or of every service), one line
/// each: `SERVICE ADDR weight=N [zone=Z] [lease=ID]`, or why a key is bad.
pub async fn list(config: &EtcdConfig, service: Option<&str>) -> Result<Vec<String>, String> {
    let mut client = connect(config).await?;
    let prefix = match service {
        Some(s) => format!("{}services/{s}/endpoints/", config.prefix),
        None => format!("{}services/", config.prefix),
    };
    let r = within(
        config.dial_timeout,
        client.get(prefix.clone(), Some(GetOptions::new().with_prefix())),
    )
    .await
    .map_err(|e| format!("cannot read {prefix}: {e}"))?;
    Ok(r.kvs()
        .iter()
        .map(|kv| {
            let parsed = schema::parse_key(&config.prefix, kv.key()).and_then(|k| {
                let k = k.ok_or("not an endpoint key")?;
                schema::parse_value(k.addr, kv.value()).map(|(d, zone)| (k.service, d, zone))
            });
            match parsed {
                Ok((s, d, zone)) => {
                    let mut line = format!("{s} {} weight={}", d.addr, d.weight);
                    if let Some(z) = zone {
                        line.push_str(&format!(" zone={z}"));
                    }
                    if kv.lease() != 0 {
                        line.push_str(&format!(" lease={:x}", kv.lease()));
                    }
                    line
                }
                Err(why) => format!(
                    "# skipped {:?} = {:?}: {why}",
                    String::from_utf8_lossy(kv.key()),
                    String::from_utf8_lossy(kv.value())
                ),
            }
        })
        .collect())
}
