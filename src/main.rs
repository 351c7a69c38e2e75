//! The `l4mesh` command: parse arguments, set up logging, run the server
//! until SIGTERM/SIGINT (reloading on SIGHUP), or talk to a running one with
//! `l4mesh ctl`; exit with a meaningful code.

use anyhow::Context;
use clap::{Parser, Subcommand};
use l4mesh::discovery::etcd::ctl as etcd_ctl;
use l4mesh::discovery::registry::ctl;
use l4mesh::{Config, Server, notify};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// A fast L4 TCP proxy for service meshes: an io_uring ring per worker, zero-copy splice.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    /// The TOML config file.
    #[arg(short = 'c', long = "config", value_name = "FILE", required = true)]
    config: Option<PathBuf>,
    /// Validate the config file and exit: 0 if valid, 1 with the problems if not.
    #[arg(long)]
    check: bool,
    /// Take over from the l4mesh running with this upgrade socket (its
    /// `runtime.upgrade_socket`): its listening sockets, registry socket,
    /// admin listener and registered endpoints pass to this process, which
    /// then serves while the old one drains and exits.
    #[arg(long, value_name = "SOCKET", conflicts_with = "check")]
    takeover: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Replace the running l4mesh with this binary without dropping a
    /// client: the running one (found by FILE's `runtime.upgrade_socket`)
    /// starts this binary with `--takeover`, hands it its sockets, drains
    /// and exits. Prints each step; exits 0 once the old process has
    /// exited, 1 if the upgrade failed (the old process serves on).
    Upgrade {
        /// The config file the new process runs with.
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
        /// The binary to start (default: this one).
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
    },
    /// Send one request to a running l4mesh's registry socket, or to etcd.
    ///
    /// Requests: register SERVICE ADDR [weight=N] [ttl=DURATION] | deregister
    /// SERVICE ADDR | drain SERVICE ADDR | undrain SERVICE ADDR | list [SERVICE] |
    /// reload | help.
    /// With --etcd: register SERVICE ADDR [weight=N] [zone=Z] --ttl 10s (keeps a
    /// lease alive until SIGTERM/SIGINT, which revoke it) | deregister SERVICE
    /// ADDR | list [SERVICE].
    /// Exits 0 if the registry answered ok, 1 otherwise.
    #[command(group(clap::ArgGroup::new("target").required(true).args(["socket", "etcd"])))]
    Ctl {
        /// The registry socket (`[registry] socket` in the config).
        #[arg(short = 's', long = "socket", value_name = "SOCKET")]
        socket: Option<PathBuf>,
        /// etcd member URLs instead of a registry socket, comma-separated.
        #[arg(long = "etcd", value_name = "URL", value_delimiter = ',')]
        etcd: Vec<String>,
        /// The etcd key prefix (`[discovery.etcd] prefix`).
        #[arg(long = "prefix", value_name = "PREFIX", default_value = "/l4mesh/")]
        prefix: String,
        /// The lease's time to live for `register` with --etcd.
        #[arg(long = "ttl", value_name = "DURATION", value_parser = l4mesh::config::parse_duration)]
        ttl: Option<Duration>,
        /// Print the raw JSON reply instead of a table or message.
        #[arg(long)]
        json: bool,
        /// The request's words, e.g. `register web 127.0.0.1:9003 weight=2`.
        #[arg(required = true, num_args = 1.., value_name = "REQUEST")]
        request: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if let Some(Command::Upgrade { config, binary }) = &cli.command {
        return upgrade(config, binary.as_deref());
    }
    if let Some(Command::Ctl {
        socket,
        etcd,
        prefix,
        ttl,
        json,
        request,
    }) = &cli.command
    {
        let Some(socket) = socket else {
            return match etcd_ctl::run(etcd.clone(), prefix, *ttl, request) {
                Ok(text) => {
                    // Not println!: a sidecar's supervisor may have closed
                    // stdout after the "registered" line, and the lease is
                    // revoked by now; a panic would make that exit 101.
                    let _ = writeln!(std::io::stdout(), "{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            };
        };
        return match ctl::request(socket, request, *json) {
            Ok(answer) => {
                println!("{}", answer.text);
                if answer.ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let Some(path) = cli.config else {
        eprintln!("error: -c FILE is required");
        return ExitCode::from(2);
    };
    if cli.check {
        return match Config::load(&path) {
            Ok(config) => {
                println!(
                    "{}: valid ({} listener(s), {} service(s))",
                    path.display(),
                    config.listeners.len(),
                    config.services.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match run(&path, cli.takeover.as_deref()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `l4mesh upgrade`: see [`Command::Upgrade`].
fn upgrade(config: &std::path::Path, binary: Option<&std::path::Path>) -> ExitCode {
    let this = match binary {
        Some(binary) => Ok(binary.to_path_buf()),
        None => std::env::current_exe(),
    };
    let outcome = this
        .map_err(|e| format!("cannot tell which binary this is: {e}; give --binary"))
        .and_then(|binary| l4mesh::upgrade::cli::run(config, &binary, &mut std::io::stdout()));
    match outcome {
        Ok(l4mesh::upgrade::cli::Outcome::Done) => ExitCode::SUCCESS,
        Ok(l4mesh::upgrade::cli::Outcome::Failed) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: &std::path::Path, takeover: Option<&std::path::Path>) -> anyhow::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])
        .context("cannot install the signal handlers")?;
    raise_fd_limit();
    let server = Server::start_with(path, takeover)?;
    for (name, addr) in server.listeners() {
        log::info!("listener {name} on {addr}");
    }
    log::info!(
        "l4mesh {} serving {} with {} worker(s); edit the file or send SIGHUP to reload",
        env!("CARGO_PKG_VERSION"),
        path.display(),
        server.workers()
    );
    notify::send("READY=1");
    if let Some(every) = notify::watchdog_interval() {
        log::info!(
            "systemd watchdog: WATCHDOG=1 every {} ms",
            every.as_millis()
        );
        std::thread::Builder::new()
            .name("l4mesh-watchdog".into())
            .spawn(move || {
                loop {
                    notify::send("WATCHDOG=1");
                    std::thread::sleep(every);
                }
            })
            .context("cannot start the watchdog thread")?;
    }
    let stop = server.stop_handle();
    let control = server.control().clone();
    let access_log = server.access_log();
    std::thread::Builder::new()
        .name("l4mesh-signals".into())
        .spawn(move || {
            // A stop signal sent to the process and its group (as `timeout`
            // does) arrives twice at once: only a second one at least a
            // second after the first means "exit now".
            let mut stopping_since: Option<std::time::Instant> = None;
            for signal in signals.forever() {
                if signal == SIGHUP {
                    log::info!("SIGHUP: reloading the config file");
                    control.request_reload(true);
                } else if signal == SIGUSR1 {
                    match &access_log {
                        Some(log) => log.reopen(),
                        None => log::info!("SIGUSR1: the access log is off; nothing to reopen"),
                    }
                } else if stopping_since.is_none() {
                    log::info!(
                        "signal {signal}: no longer accepting; draining open connections (send \
                         it again, a second or more from now, to exit at once)"
                    );
                    stopping_since = Some(std::time::Instant::now());
                    notify::send("STOPPING=1");
                    stop.stop();
                } else if stopping_since.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                    log::debug!(
                        "signal {signal}: already draining (taken as the first one delivered \
                         twice, being within a second of it)"
                    );
                } else {
                    log::warn!("second signal: exiting without waiting for open connections");
                    std::process::exit(1);
                }
            }
        })
        .context("cannot start the signal thread")?;
    server.wait();
    log::info!("stopped");
    Ok(())
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit: every proxied
/// connection holds two descriptors, and the default soft limit (often 1024)
/// would cap the proxy at a few hundred connections. How many clients fit
/// is logged when the proxy starts, which enforces it.
fn raise_fd_limit() {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        log::warn!("cannot raise the file descriptor limit: {e}");
    }
}
