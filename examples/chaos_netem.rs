//! Delay, jitter, reordering and loss for the chaos suite's upstream link
//! (`tests/chaos/run.sh`), where the kernel has no `sch_netem`.
//!
//! `chaos_netem --queue N --delay-ms D --jitter-ms J --loss-percent P
//! [--lifetime SECS]` binds netfilter queue `N` (iptables `-j NFQUEUE`) in
//! the network namespace it runs in and gives every queued packet a verdict:
//! dropped with probability `P` percent, otherwise accepted after a delay
//! drawn uniformly from `D ± J` milliseconds. As with netem's jitter, a
//! packet drawn a shorter delay overtakes the ones queued before it, so the
//! link reorders. Only packet metadata is copied to user space.
//!
//! The netfilter queue protocol is spoken directly over a netlink socket
//! (`linux/netfilter/nfnetlink_queue.h`), so nothing beyond libc is needed.
//! When it exits (SIGTERM, or after `--lifetime`) the kernel drops the
//! packets it still holds, which the TCP ends see as loss.

use socket2::{Domain, Protocol, Socket, Type};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::ErrorKind;
use std::mem::MaybeUninit;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: chaos_netem --queue N --delay-ms D --jitter-ms J --loss-percent P \
                     [--lifetime SECS]";

/// Errors are plain messages, printed by `main`.
type Result<T> = std::result::Result<T, String>;

/// Puts `what` in front of an error.
fn ctx<T, E: std::fmt::Display>(r: std::result::Result<T, E>, what: &str) -> Result<T> {
    r.map_err(|e| format!("{what}: {e}"))
}

const NETLINK_NETFILTER: i32 = 12;
const SOL_NETLINK: i32 = 270;
const NETLINK_NO_ENOBUFS: i32 = 5;
const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_COPY_META: u8 = 1;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
/// Packets the kernel may hold for us before it drops new ones.
const QUEUE_MAXLEN: u32 = 65536;

struct Options {
    queue: u16,
    delay: Duration,
    jitter: Duration,
    loss: f64,
    lifetime: Option<Duration>,
}

fn main() -> std::process::ExitCode {
    match run_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chaos_netem: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_main() -> Result<()> {
    let opts = parse_args()?;
    let socket = ctx(
        Socket::new(
            Domain::from(libc::AF_NETLINK),
            Type::RAW,
            Some(Protocol::from(NETLINK_NETFILTER)),
        ),
        "netlink socket",
    )?;
    enlarge(&socket)?;
    let mut seq = 0;
    let mut bind = Vec::new();
    let cmd = [NFQNL_CFG_CMD_BIND, 0, 0, libc::AF_INET as u8];
    attr(&mut bind, NFQA_CFG_CMD, &cmd);
    request(&socket, &mut seq, opts.queue, NFQNL_MSG_CONFIG, &bind)?;
    let mut params = Vec::new();
    let mut copy = 0xffffu32.to_be_bytes().to_vec();
    copy.push(NFQNL_COPY_META);
    attr(&mut params, NFQA_CFG_PARAMS, &copy);
    attr(
        &mut params,
        NFQA_CFG_QUEUE_MAXLEN,
        &QUEUE_MAXLEN.to_be_bytes(),
    );
    request(&socket, &mut seq, opts.queue, NFQNL_MSG_CONFIG, &params)?;
    eprintln!(
        "chaos_netem: queue {} bound: delay {:?} ± {:?}, loss {}%",
        opts.queue,
        opts.delay,
        opts.jitter,
        opts.loss * 100.0
    );
    run(&socket, &opts)
}

/// Receives packets and releases each when its delay is up.
fn run(socket: &Socket, opts: &Options) -> Result<()> {
    let started = Instant::now();
    let mut held: BinaryHeap<Reverse<(Instant, u32)>> = BinaryHeap::new();
    let mut buf = vec![MaybeUninit::<u8>::uninit(); 1 << 16];
    let mut out = Vec::new();
    let (mut accepted, mut dropped) = (0u64, 0u64);
    loop {
        let now = Instant::now();
        if opts.lifetime.is_some_and(|l| now - started >= l) {
            eprintln!("chaos_netem: lifetime over: {accepted} accepted, {dropped} dropped");
            return Ok(());
        }
        out.clear();
        while let Some(Reverse((due, id))) = held.peek().copied() {
            if due > now {
                break;
            }
            held.pop();
            verdict(&mut out, opts.queue, id, NF_ACCEPT);
            accepted += 1;
        }
        if !out.is_empty() {
            ctx(socket.send(&out), "send verdicts")?;
        }
        let wait = held
            .peek()
            .map_or(Duration::from_millis(100), |Reverse((due, _))| {
                due.saturating_duration_since(now)
            });
        ctx(
            socket.set_read_timeout(Some(wait.max(Duration::from_micros(200)))),
            "SO_RCVTIMEO",
        )?;
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("netlink recv: {e}")),
        };
        // SAFETY: `recv` initialised the first `n` bytes of `buf`.
        let data: &[u8] = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast(), n) };
        out.clear();
        for id in packet_ids(data) {
            if fastrand::f64() < opts.loss {
                verdict(&mut out, opts.queue, id, NF_DROP);
                dropped += 1;
            } else {
                let spread = opts.jitter.as_secs_f64() * (2.0 * fastrand::f64() - 1.0);
                let delay = (opts.delay.as_secs_f64() + spread).max(0.0);
                held.push(Reverse((now + Duration::from_secs_f64(delay), id)));
            }
        }
        if !out.is_empty() {
            ctx(socket.send(&out), "send verdicts")?;
        }
    }
}

/// The packet ids of the `NFQNL_MSG_PACKET` messages in one datagram.
fn packet_ids(mut data: &[u8]) -> Vec<u32> {
    let mut ids = Vec::new();
    while data.len() >= 16 {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        if len < 16 || len > data.len() {
            break;
        }
        if kind == (NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_PACKET) && len >= 20 {
            let mut attrs = &data[20..len];
            while attrs.len() >= 4 {
                let alen = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
                let atype = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
                if alen < 4 || alen > attrs.len() {
                    break;
                }
                if atype == NFQA_PACKET_HDR && alen >= 8 {
                    ids.push(u32::from_be_bytes([attrs[4], attrs[5], attrs[6], attrs[7]]));
                }
                attrs = attrs.get((alen + 3) & !3..).unwrap_or(&[]);
            }
        }
        let step = (len + 3) & !3;
        data = data.get(step..).unwrap_or(&[]);
    }
    ids
}

/// Appends a verdict message for packet `id`.
fn verdict(out: &mut Vec<u8>, queue: u16, id: u32, verdict: u32) {
    let mut body = Vec::with_capacity(12);
    let mut hdr = verdict.to_be_bytes().to_vec();
    hdr.extend_from_slice(&id.to_be_bytes());
    attr(&mut body, NFQA_VERDICT_HDR, &hdr);
    message(out, NFQNL_MSG_VERDICT, NLM_F_REQUEST, 0, queue, &body);
}

/// Sends one config message and waits for the kernel's acknowledgement.
fn request(socket: &Socket, seq: &mut u32, queue: u16, kind: u16, body: &[u8]) -> Result<()> {
    *seq += 1;
    let mut out = Vec::new();
    message(&mut out, kind, NLM_F_REQUEST | NLM_F_ACK, *seq, queue, body);
    ctx(socket.send(&out), "netlink send")?;
    ctx(
        socket.set_read_timeout(Some(Duration::from_secs(2))),
        "SO_RCVTIMEO",
    )?;
    let mut buf = vec![MaybeUninit::<u8>::uninit(); 4096];
    let n = ctx(socket.recv(&mut buf), "netlink ack")?;
    // SAFETY: `recv` initialised the first `n` bytes of `buf`.
    let data: &[u8] = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast(), n) };
    if data.len() >= 20 && u16::from_ne_bytes([data[4], data[5]]) == NLMSG_ERROR {
        let errno = i32::from_ne_bytes([data[16], data[17], data[18], data[19]]);
        if errno != 0 {
            let err = std::io::Error::from_raw_os_error(-errno);
            return Err(format!("nfqueue config of queue {queue}: {err}"));
        }
        return Ok(());
    }
    Err("nfqueue config: no acknowledgement from the kernel".to_string())
}

/// Appends a netlink message: header, `nfgenmsg` for `queue`, then `body`.
fn message(out: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, queue: u16, body: &[u8]) {
    let len = 16 + 4 + body.len();
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&(NFNL_SUBSYS_QUEUE << 8 | kind).to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&[libc::AF_UNSPEC as u8, 0]);
    out.extend_from_slice(&queue.to_be_bytes());
    out.extend_from_slice(body);
    out.resize((out.len() + 3) & !3, 0);
}

/// Appends a netlink attribute, padded to 4 bytes.
fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    out.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize((out.len() + 3) & !3, 0);
}

/// A large receive buffer (packets arrive in bursts), and no ENOBUFS error
/// when it overflows anyway: a packet lost that way is just more loss.
fn enlarge(socket: &Socket) -> Result<()> {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    for (level, name, value) in [
        (libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 32 << 20),
        (SOL_NETLINK, NETLINK_NO_ENOBUFS, 1),
    ] {
        let value: libc::c_int = value;
        // SAFETY: `fd` is an open socket owned by `socket`, and the option
        // value is a live `c_int` of the length passed.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            return Err(format!("setsockopt({level}, {name}): {err}"));
        }
    }
    Ok(())
}

fn parse_args() -> Result<Options> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut opts = Options {
        queue: 0,
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
        loss: 0.0,
        lifetime: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| USAGE.to_string())?;
        let number = |what: &str| match value.parse::<f64>() {
            Ok(v) if v >= 0.0 && v.is_finite() => Ok(v),
            _ => Err(format!("{what} {value}: not a number of 0 or more")),
        };
        match flag.as_str() {
            "--queue" => opts.queue = ctx(value.parse(), "--queue")?,
            "--delay-ms" => opts.delay = Duration::from_secs_f64(number(flag)? / 1e3),
            "--jitter-ms" => opts.jitter = Duration::from_secs_f64(number(flag)? / 1e3),
            "--loss-percent" => opts.loss = number(flag)? / 100.0,
            "--lifetime" => opts.lifetime = Some(Duration::from_secs_f64(number(flag)?)),
            _ => return Err(USAGE.to_string()),
        }
    }
    Ok(opts)
}
