//! The control thread: the one place where the routing table changes. It
//! merges every discovery source (the config file, the registry socket,
//! etcd, DNS SRV) with [`crate::routing::Snapshot::build`] and publishes the
//! result; [`requests`] answers the registry's requests.

mod controller;
mod requests;
mod sources;

pub(crate) use controller::Controller;
pub use controller::{Command, ControlHandle};
