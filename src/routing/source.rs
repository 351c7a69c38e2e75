//! Where an endpoint comes from.

/// A discovery source. When two sources name the same address for one
/// service, the one listed first here owns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// Declared in the config file.
    File,
    /// Registered through the registry socket.
    Registry,
    /// Read from etcd (`[discovery.etcd]`, `discovery = "etcd"`).
    Etcd,
    /// Answered by DNS SRV (`discovery = { srv = ... }`).
    Dns,
}

impl Source {
    /// Every source, in precedence order.
    pub const ALL: [Source; 4] = [Source::File, Source::Registry, Source::Etcd, Source::Dns];

    /// The name used in replies, listings and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Source::File => "file",
            Source::Registry => "registry",
            Source::Etcd => "etcd",
            Source::Dns => "dns",
        }
    }
}
