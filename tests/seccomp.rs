//! Running where io_uring is refused, as under the default seccomp profile
//! of Docker (since 25) and containerd: the epoll loop needs no ring, and
//! every forwarding mode serves.
#![cfg(target_arch = "x86_64")]

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

/// In the child before it runs l4mesh: a seccomp filter that answers
/// `io_uring_setup` with EPERM, as container runtimes' default profiles do,
/// and allows everything else. Only async-signal-safe calls (prctl).
fn refuse_io_uring() -> std::io::Result<()> {
    // Classic BPF over struct seccomp_data { int nr; u32 arch; ... }.
    const LOAD_WORD: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JUMP_IF_EQUAL: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RETURN: u16 = 0x06; // BPF_RET | BPF_K
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const ALLOW: u32 = 0x7fff_0000; // SECCOMP_RET_ALLOW
    const EPERM: u32 = 0x0005_0000 | libc::EPERM as u32; // SECCOMP_RET_ERRNO
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let program = [
        op(LOAD_WORD, 0, 0, 4),                     // arch
        op(JUMP_IF_EQUAL, 1, 0, AUDIT_ARCH_X86_64), // x86_64: look at nr
        op(RETURN, 0, 0, ALLOW),                    // another ABI: allow
        op(LOAD_WORD, 0, 0, 0),                     // nr
        op(JUMP_IF_EQUAL, 0, 1, libc::SYS_io_uring_setup as u32),
        op(RETURN, 0, 0, EPERM),
        op(RETURN, 0, 0, ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: plain prctl calls with a filter that outlives them.
    let installed = unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
            && libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog) == 0
    };
    if installed {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn without_io_uring(command: &mut Command) {
    // SAFETY: the hook only makes prctl calls.
    unsafe { command.pre_exec(refuse_io_uring) };
}

#[test]
fn it_should_serve_in_every_forward_mode_where_io_uring_is_refused() {
    for mode in FORWARD_MODES {
        let text = with_forward(&config_text(&[(echo_backend(), 1)], ""), mode);
        let binary = Binary::start_with(&text, &[], without_io_uring);
        let mut c = TcpStream::connect(binary.addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut writer = c.try_clone().unwrap();
        let data = sent.clone();
        let writing = std::thread::spawn(move || {
            writer.write_all(&data).unwrap();
            writer.shutdown(Shutdown::Write).unwrap();
        });
        let mut back = Vec::new();
        c.read_to_end(&mut back).unwrap();
        writing.join().unwrap();
        assert!(back == sent, "{mode}: {} bytes came back", back.len());
    }
}
