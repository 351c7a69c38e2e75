//! Refuses to listen on an address another process already listens on.
//!
//! Every listener socket sets `SO_REUSEPORT` so that each worker has its own
//! socket on the same port. The kernel lets any socket that also sets it,
//! owned by the same user, join that group, and then splits new clients
//! between them: a second l4mesh started by mistake (or any other program
//! with `SO_REUSEPORT`) would silently take half the traffic, and a first
//! l4mesh would join such a program's port the same way.
//!
//! Why a look at `/proc/net/tcp{,6}` before binding, rather than binding the
//! first socket without `SO_REUSEPORT`: the kernel lets a socket join a
//! group only if every socket in it set the option, so a first socket
//! without it would keep our own workers out too. The look is made only for
//! an explicit port (port 0 binds never share: the kernel picks a port no
//! socket holds) and leaves out this proxy's own listeners (a reload that
//! renames or moves a listener over its old address binds the new socket
//! before the old one closes). A process that starts listening between the
//! look and the bind is not caught; the look costs one read of each table
//! per listener bound, only at start and on reloads that add a listener.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The `st` column's value for a listening socket.
const LISTEN: u8 = 0x0A;

/// A listening socket of another process that overlaps the wanted address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The address it listens on (a wildcard covers every address of its
    /// family on that port).
    pub addr: SocketAddr,
    /// Which process holds it, as well as can be told.
    pub process: Process,
}

/// The process holding a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Process {
    /// Found through `/proc/PID/fd`.
    Found {
        /// Its id.
        pid: u32,
        /// Its command name (`/proc/PID/comm`).
        comm: String,
    },
    /// No process this user may look into holds it (another user's, or in
    /// another PID namespace); the socket's owner uid is known.
    Hidden {
        /// The socket's owner.
        uid: u32,
    },
}

impl fmt::Display for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Process::Found { pid, comm } => write!(f, "pid {pid}, {comm}"),
            Process::Hidden { uid } => write!(
                f,
                "a process of uid {uid} that this user cannot see; `sudo ss -ltnp` names it"
            ),
        }
    }
}

/// One row of `/proc/net/tcp` or `/proc/net/tcp6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Row {
    local: SocketAddr,
    state: u8,
    uid: u32,
    inode: u64,
}

/// The first listening socket, other than `own` (socket inodes of this
/// proxy's listeners), that clients of `wanted` could reach instead of
/// ours. `None` when there is none, or when `/proc/net` cannot be read (no
/// procfs: the check is skipped, as it cannot be made).
pub fn holder(wanted: SocketAddr, own: &HashSet<u64>) -> Option<Holder> {
    let mut rows = Vec::new();
    for (path, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        match std::fs::read_to_string(path) {
            Ok(text) => rows.extend(parse(&text, v6)),
            Err(e) => log::debug!("cannot read {path} ({e}); not checking it for {wanted}"),
        }
    }
    let row = rows.into_iter().find(|row| {
        row.state == LISTEN && !own.contains(&row.inode) && overlaps(wanted, row.local)
    })?;
    let process = match find_process(row.inode) {
        Some((pid, comm)) => Process::Found { pid, comm },
        None => Process::Hidden { uid: row.uid },
    };
    Some(Holder {
        addr: row.local,
        process,
    })
}

/// Whether a client of `wanted` could reach a socket listening on `held`:
/// the same port, and the same address or a wildcard on either side (of
/// the same family; an IPv4-mapped IPv6 address counts as IPv4).
fn overlaps(wanted: SocketAddr, held: SocketAddr) -> bool {
    if wanted.port() != held.port() {
        return false;
    }
    let (a, b) = (canonical(wanted.ip()), canonical(held.ip()));
    a == b || (a.is_ipv4() == b.is_ipv4() && (a.is_unspecified() || b.is_unspecified()))
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The rows of a `/proc/net/tcp` (or `tcp6`, with `v6`) table; lines that
/// do not parse are left out.
fn parse(text: &str, v6: bool) -> Vec<Row> {
    text.lines()
        .skip(1)
        .filter_map(|line| row(line, v6))
        .collect()
}

fn row(line: &str, v6: bool) -> Option<Row> {
    // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (ip, port) = fields.get(1)?.split_once(':')?;
    let ip = if v6 { ipv6(ip)? } else { IpAddr::V4(ipv4(ip)?) };
    Some(Row {
        local: SocketAddr::new(ip, u16::from_str_radix(port, 16).ok()?),
        state: u8::from_str_radix(fields.get(3)?, 16).ok()?,
        uid: fields.get(7)?.parse().ok()?,
        inode: fields.get(9)?.parse().ok()?,
    })
}

/// The kernel prints each 32-bit word of an address as the number it holds
/// in host byte order, so the word's native bytes are the address's bytes.
fn word(hex: &str) -> Option<[u8; 4]> {
    (hex.len() == 8)
        .then(|| u32::from_str_radix(hex, 16).ok())
        .flatten()
        .map(u32::to_ne_bytes)
}

fn ipv4(hex: &str) -> Option<Ipv4Addr> {
    word(hex).map(Ipv4Addr::from)
}

fn ipv6(hex: &str) -> Option<IpAddr> {
    if hex.len() != 32 || !hex.is_ascii() {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, chunk) in bytes.chunks_mut(4).enumerate() {
        chunk.copy_from_slice(&word(&hex[i * 8..i * 8 + 8])?);
    }
    Some(IpAddr::V6(Ipv6Addr::from(bytes)))
}

/// The process (pid and command name) with a descriptor on socket `inode`,
/// among those this user may look into.
fn find_process(inode: u64) -> Option<(u32, String)> {
    let target = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // Processes of other users, and ones that ended meanwhile, fail here.
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|link| link.as_os_str() == target.as_str())
        });
        if holds {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            return Some((pid, comm.trim().to_string()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::os::fd::AsFd;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn it_should_read_both_tables_as_the_kernel_prints_them() {
        // Lines as /proc/net/tcp{,6} print them on a little-endian machine.
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  \
                  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 \
                  00:00000000 00000000  1000        0 4242 1 0000000010f9a30a 100 0 0 10 0\n";
        let v6 = "  sl  local_address                         remote_address                        \
                  st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: \
                  00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A \
                  00000000:00000000 00:00000000 00000000     0        0 77 1 0000000000000000 100 0 \
                  0 10 0\n";
        if cfg!(target_endian = "little") {
            assert_eq!(
                parse(v4, false),
                [Row {
                    local: addr("127.0.0.1:8080"),
                    state: LISTEN,
                    uid: 1000,
                    inode: 4242
                }]
            );
            assert_eq!(parse(v6, true)[0].local, addr("[::1]:80"));
        }
        assert_eq!(parse("header\nnot a row\n", false), []);
    }

    #[test]
    fn it_should_treat_a_wildcard_on_either_side_as_overlapping() {
        assert!(overlaps(addr("127.0.0.1:80"), addr("127.0.0.1:80")));
        assert!(overlaps(addr("127.0.0.1:80"), addr("0.0.0.0:80")));
        assert!(overlaps(addr("0.0.0.0:80"), addr("127.0.0.2:80")));
        assert!(overlaps(addr("[::]:80"), addr("[::1]:80")));
        assert!(overlaps(
            addr("127.0.0.1:80"),
            addr("[::ffff:127.0.0.1]:80")
        ));
        assert!(!overlaps(addr("127.0.0.1:80"), addr("127.0.0.1:81")));
        assert!(!overlaps(addr("127.0.0.1:80"), addr("127.0.0.2:80")));
        assert!(!overlaps(addr("127.0.0.1:80"), addr("[::]:80")));
    }

    #[test]
    fn it_should_name_this_process_as_the_holder_of_its_listener_unless_it_is_its_own() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let bound = listener.local_addr().unwrap();
        let found = holder(bound, &HashSet::new()).unwrap();
        assert_eq!(found.addr, bound);
        match found.process {
            Process::Found { pid, .. } => assert_eq!(pid, std::process::id()),
            other => panic!("{other:?}"),
        }
        let inode = rustix::fs::fstat(listener.as_fd()).unwrap().st_ino;
        assert_eq!(holder(bound, &HashSet::from([inode])), None);
    }
}
