//! The registry source: a Unix socket where services register, deregister
//! and drain endpoints ([`server`], [`protocol`]), the TTL-keeping store of
//! what is registered ([`registrations`]), and the `l4mesh ctl` client
//! ([`ctl`]).

pub mod ctl;
pub mod protocol;
mod registrations;
mod server;

pub use registrations::{EndpointKey, Registered, Registration, Registrations};
pub use server::{RegistryError, RegistryServer};

use serde_json::Value;
use std::sync::Arc;

/// Answers one registry request with its JSON reply: the controller, which
/// applies it (blocking until it has).
pub type Handler = Arc<dyn Fn(protocol::Request) -> Value + Send + Sync>;
