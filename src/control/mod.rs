//! The control side: building the immutable routing [`Snapshot`] that
//! workers read through one atomic load per connection.

mod snapshot;

pub use snapshot::{ActiveGuard, Endpoint, Member, Service, Snapshot, Table};
