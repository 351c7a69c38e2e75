//! The DNS SRV source. (Being written.)

use super::Feed;
use crate::config::Config;
use crate::metrics::DiscoveryStats;
use std::sync::Arc;
use tokio::sync::watch;

/// Follows the SRV records of every service that asks for them, as the
/// config (and its reloads) says, until aborted.
pub async fn run(configs: watch::Receiver<Arc<Config>>, feed: Feed, stats: Arc<DiscoveryStats>) {
    let _ = (configs, feed, stats);
    std::future::pending::<()>().await;
}
