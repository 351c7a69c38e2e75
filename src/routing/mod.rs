//! The routing model every layer reads: where endpoints come from, what a
//! discovery source reports, and the immutable snapshot the workers route by.
//! It depends on `config` and `balance` only.

mod discovered;
mod source;

pub use discovered::Discovered;
pub use source::Source;
