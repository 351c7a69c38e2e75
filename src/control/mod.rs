//! The control side: the immutable routing [`Snapshot`] that workers read
//! through one atomic load per connection, and everything that builds and
//! publishes the next one: the config file watch, the registry socket and
//! its protocol, and the controller thread that serialises every change.

mod controller;
pub mod ctl;
pub mod protocol;
mod registrations;
mod registry;
mod snapshot;
mod watch;

pub(crate) use controller::Controller;
pub use controller::{Command, ControlHandle, ReloadStats};
pub use registrations::{EndpointKey, Registered, Registration, Registrations};
pub use registry::{RegistryError, RegistryServer};
pub use snapshot::{
    ActiveGuard, Choice, ClientCount, ClientGuard, Endpoint, EndpointState, Listener, Member,
    Outlier, Service, Snapshot, Table,
};
pub use watch::{ConfigWatcher, WatchError};
