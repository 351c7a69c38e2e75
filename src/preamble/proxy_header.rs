//! The PROXY protocol header (v1 text and v2 binary): parsing and encoding.
