//! What a client may send before its own bytes, parsed without I/O: the
//! PROXY protocol header a trusted proxy puts in front of a connection, and
//! the TLS ClientHello whose server name routes it. The proxy reads the
//! bytes; these parsers say whether they are complete, what they mean, and
//! never read past what they were given.

pub mod client_hello;
pub mod proxy_header;
