//! Per-client connection limits: a bounded table shared by all workers.
