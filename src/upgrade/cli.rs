//! `l4mesh upgrade -c FILE`: ask the l4mesh running on FILE's upgrade
//! socket to start a binary (this one, by default) that takes it over,
//! print each step, and wait until the old process has exited.

use super::wire::Channel;
use crate::config::Config;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// How the upgrade ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The new process serves and the old one has exited.
    Done,
    /// It did not happen; the old process serves on.
    Failed,
}

/// Runs the upgrade, printing each step to `out`; an error says why it
/// could not even begin (nothing changed).
pub fn run(config: &Path, binary: &Path, out: &mut impl Write) -> Result<Outcome, String> {
    let started = Instant::now();
    let parsed = Config::load(config).map_err(|e| format!("{e}; nothing changed"))?;
    let Some(socket) = parsed.runtime.upgrade_socket else {
        return Err(format!(
            "{}: runtime.upgrade_socket is not set, so the running l4mesh cannot be upgraded \
             without a restart; fix: set it (e.g. \"/run/l4mesh/upgrade.sock\") and restart once",
            config.display()
        ));
    };
    let config = std::fs::canonicalize(config).map_err(|e| format!("{}: {e}", config.display()))?;
    let binary = std::fs::canonicalize(binary).map_err(|e| format!("{}: {e}", binary.display()))?;
    let channel = Channel::connect(&socket).map_err(|e| {
        format!(
            "runtime.upgrade_socket = {:?}: cannot reach the running l4mesh: {e}; is it running \
             with this config?",
            socket
        )
    })?;
    let (binary, config) = (binary.to_string_lossy(), config.to_string_lossy());
    channel
        .send(&["spawn", &binary, &config])
        .map_err(|e| format!("cannot ask the running l4mesh: {e}"))?;
    let mut old = None;
    let mut handed = false;
    let mut failed = false;
    let say = |out: &mut dyn Write, text: &str| {
        let _ = writeln!(out, "[{:6.3}s] {text}", started.elapsed().as_secs_f64());
    };
    loop {
        let message = match channel.recv() {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(_) if failed => return Ok(Outcome::Failed),
            Err(e) => {
                say(out, &format!("lost the connection to the old process: {e}"));
                return Ok(Outcome::Failed);
            }
        };
        match message.verb() {
            "old" => {
                old = message.word(1).parse::<u32>().ok();
                say(
                    out,
                    &format!("the running l4mesh is pid {}", message.word(1)),
                );
            }
            "spawned" => say(
                out,
                &format!(
                    "started {} as pid {}, taking over",
                    message.word(2),
                    message.word(1)
                ),
            ),
            "log" => say(out, &format!("new: {}", message.word(1))),
            "step" => say(out, message.word(1)),
            "handed" => handed = true,
            "failed" | "error" => {
                say(out, &format!("upgrade failed: {}", message.word(1)));
                if failed {
                    return Ok(Outcome::Failed);
                }
                // The new process's last words (why it failed) and its
                // exit may follow.
                failed = true;
                let _ = channel.set_timeout(Some(Duration::from_secs(2)));
            }
            other => say(out, &format!("(unknown message `{other}`)")),
        }
    }
    if failed {
        return Ok(Outcome::Failed);
    }
    if !handed {
        say(
            out,
            "upgrade failed: the old process closed the connection before handing over",
        );
        return Ok(Outcome::Failed);
    }
    // The connection closes when the old process exits.
    if let Some(pid) = old {
        let deadline = Instant::now() + Duration::from_secs(5);
        while is_running(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        say(out, &format!("pid {pid} has exited; the upgrade is done"));
    }
    Ok(Outcome::Done)
}

/// Whether process `pid` exists and has not exited (a zombie has).
fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the command name, which is in parentheses.
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}
