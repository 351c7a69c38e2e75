//! The PROXY protocol header (v1 text and v2 binary): parsing and encoding.

/// Which header versions a listener takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// Only the v1 text header.
    V1,
    /// Only the v2 binary header.
    V2,
    /// Either.
    Any,
}

/// A header version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The text header.
    V1,
    /// The binary header.
    V2,
}
