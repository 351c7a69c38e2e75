//! The `l4mesh` command: parse arguments, set up logging, load the config,
//! run the proxy until SIGTERM/SIGINT, exit with a meaningful code.

use anyhow::Context;
use clap::Parser;
use l4mesh::{Config, Proxy};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::path::PathBuf;
use std::process::ExitCode;

/// A fast L4 TCP proxy for service meshes, on io_uring.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The TOML config file.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: PathBuf,
    /// Validate the config file and exit: 0 if valid, 1 with the problems if not.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if cli.check {
        println!(
            "{}: valid ({} listener(s), {} service(s))",
            cli.config.display(),
            config.listeners.len(),
            config.services.len()
        );
        return ExitCode::SUCCESS;
    }
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: &Config) -> anyhow::Result<()> {
    let mut signals =
        Signals::new([SIGTERM, SIGINT]).context("cannot install the signal handlers")?;
    raise_fd_limit();
    let proxy = Proxy::start(config)?;
    for (name, addr) in proxy.listeners() {
        log::info!("listener {name} on {addr}");
    }
    log::info!(
        "l4mesh {} serving with {} worker(s)",
        env!("CARGO_PKG_VERSION"),
        config.runtime.workers
    );
    let stop = proxy.stop_handle();
    let drain = config.runtime.drain_timeout;
    std::thread::Builder::new()
        .name("l4mesh-signals".into())
        .spawn(move || {
            let mut received = signals.forever();
            if let Some(signal) = received.next() {
                log::info!(
                    "signal {signal}: no longer accepting; draining open connections for up to \
                     {drain:?} (send it again to exit at once)"
                );
                stop.stop();
            }
            if received.next().is_some() {
                log::warn!("second signal: exiting without waiting for open connections");
                std::process::exit(1);
            }
        })
        .context("cannot start the signal thread")?;
    proxy.wait();
    log::info!("stopped");
    Ok(())
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit: every proxied
/// connection holds two descriptors, and the default soft limit (often 1024)
/// would cap the proxy at a few hundred connections.
fn raise_fd_limit() {
    /// Descriptors kept for listeners, rings, logs and the like.
    const RESERVED: u64 = 64;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => log::info!(
            "file descriptor limit {limit}: room for about {} proxied connections",
            limit.saturating_sub(RESERVED) / 2
        ),
        Err(e) => log::warn!("cannot raise the file descriptor limit: {e}"),
    }
}
