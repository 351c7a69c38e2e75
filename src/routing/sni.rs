//! SNI routing rules: which rule a ClientHello's server name (and ALPN) matches.
