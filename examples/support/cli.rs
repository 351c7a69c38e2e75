//! Error plumbing shared by the bench examples: plain-message errors for
//! `main`, and a `ctx` helper that puts what was being done in front.

use std::error::Error;
use std::fmt;

/// An error whose `Debug` output is its plain message, so that `main`
/// returning it prints `Error: <message>` without quotes.
pub struct CliError(String);

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Error for CliError {}

pub type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// Builds a boxed error from a message.
pub fn fail(msg: impl Into<String>) -> Box<dyn Error> {
    Box::new(CliError(msg.into()))
}

/// Adds `what` as context in front of an error.
pub fn ctx<T, E: fmt::Display>(r: std::result::Result<T, E>, what: &str) -> Result<T> {
    r.map_err(|e| fail(format!("{what}: {e}")))
}
