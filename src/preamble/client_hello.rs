//! The TLS ClientHello: its server name (SNI) and ALPN protocols.
