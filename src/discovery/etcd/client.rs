//! Connecting to etcd with the settings of `[discovery.etcd]`: every member
//! URL (the client moves to another member when one dies), the dial
//! timeout, authentication and TLS.

use crate::config::EtcdConfig;
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use std::time::Duration;

/// Connects to the members of `config`.
pub async fn connect(config: &EtcdConfig) -> Result<Client, String> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(config.dial_timeout)
        // A silent partition is noticed by HTTP/2 pings, not only by a reset.
        .with_keep_alive(
            Duration::from_secs(2),
            config.dial_timeout.max(Duration::from_secs(1)),
        )
        .with_keep_alive_while_idle(true);
    if let Some((user, password)) = &config.auth {
        options = options.with_user(user.clone(), password.clone());
    }
    if let Some(tls) = &config.tls {
        let mut t = TlsOptions::new();
        if let Some(ca) = &tls.ca {
            let pem = std::fs::read(ca)
                .map_err(|e| format!("cannot read the etcd CA {}: {e}", ca.display()))?;
            t = t.ca_certificate(Certificate::from_pem(pem));
        }
        if let Some((cert, key)) = &tls.identity {
            let cert_pem = std::fs::read(cert).map_err(|e| {
                format!(
                    "cannot read the etcd client certificate {}: {e}",
                    cert.display()
                )
            })?;
            let key_pem = std::fs::read(key)
                .map_err(|e| format!("cannot read the etcd client key {}: {e}", key.display()))?;
            t = t.identity(Identity::from_pem(cert_pem, key_pem));
        }
        options = options.with_tls(t);
    }
    let connecting = Client::connect(&config.endpoints, Some(options));
    match tokio::time::timeout(config.dial_timeout, connecting).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(format!(
            "cannot connect to etcd at {}: {e}",
            config.endpoints.join(",")
        )),
        Err(_) => Err(format!(
            "cannot connect to etcd at {} within {:?}",
            config.endpoints.join(","),
            config.dial_timeout
        )),
    }
}

/// Capped exponential backoff with jitter: 100 ms doubling to 5 s, each
/// wait a random point between half and all of the current step.
#[derive(Debug)]
pub struct Backoff {
    step: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(5);

    /// A backoff at its first step.
    pub fn new() -> Backoff {
        Backoff { step: Self::FIRST }
    }

    /// Back to the first step (after a success).
    pub fn reset(&mut self) {
        self.step = Self::FIRST;
    }

    /// The next wait.
    pub fn next_wait(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(Self::CAP);
        let half = step / 2;
        half + half.mul_f64(fastrand::f64())
    }
}
