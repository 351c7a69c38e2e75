#!/usr/bin/env python3
"""Memory per idle proxied connection, per forward mode and event loop.

Starts a backend that accepts and holds connections, then for each forward
mode and event loop asked for starts l4mesh in front of it, opens N idle
client connections through it (each sends one byte so it is established end
to end, then stays quiet), waits until the backend holds all N, and reports
the proxy's RSS growth per connection, plus the system-wide kernel memory
growth (/proc/meminfo Slab, MemAvailable) per connection: one markdown row
per (forward, event loop), with what the workers logged they run
("worker N: event loop X").

usage: bench/idle_memory.py [--connections N] [--forward auto|splice|copy|all]
           [--event-loop auto|io_uring|epoll|all] [--bin PATH]
"all" runs each value ("all" event loops: epoll and io_uring). The proxy
needs two descriptors per connection and keeps a quarter of its limit for
splice pipes: under the hard RLIMIT_NOFILE of 20000 here it serves 7475
at once, so N is 7000 by default (more would wait in the listen backlog).
"""
import argparse
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORWARDS = ("auto", "splice", "copy")
LOOPS = ("auto", "io_uring", "epoll")


def meminfo():
    fields = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":", 1)
            fields[key] = int(value.split()[0]) * 1024
    return fields


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def established(port):
    """Established TCP connections whose local port is `port` (IPv4)."""
    with open("/proc/net/tcp") as f:
        next(f)
        return sum(1 for line in f
                   if line.split()[3] == "01" and line.split()[1].endswith(f":{port:04X}"))


def wait_for(what, check, within, detail=lambda: ""):
    """Polls `check` until true; exits after `within` seconds, with `what`
    formatted with `detail()`."""
    deadline = time.time() + within
    while not check():
        if time.time() > deadline:
            sys.exit(f"not within {within} s: {what.format(detail())}")
        time.sleep(0.1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def backend(port, ready_w):
    """Accepts and holds every connection, reading what arrives, until its
    peer closes it."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(4096)
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    os.write(ready_w, b"x")
    held = set()
    deadline = time.time() + 600
    while time.time() < deadline:
        for key, _ in sel.select(timeout=1):
            if key.fileobj is listener:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(False)
                held.add(conn)
                sel.register(conn, selectors.EVENT_READ)
            else:
                try:
                    if key.fileobj.recv(4096):
                        continue
                except BlockingIOError:
                    continue
                except ConnectionError:
                    pass
                # The proxy went away: let the connection go.
                sel.unregister(key.fileobj)
                held.discard(key.fileobj)
                key.fileobj.close()


def logged_loops(log):
    """What the workers logged they run, as "X ×count", or "not logged"."""
    seen = {}
    with open(log) as f:
        for line in f:
            if ": event loop " in line and "worker " in line:
                name = line.rsplit(": event loop ", 1)[1].split()[0]
                seen[name] = seen.get(name, 0) + 1
    return ", ".join(f"{k} ×{v}" for k, v in sorted(seen.items())) or "not logged"


def capacity(log):
    """The clients l4mesh said it serves at once under its descriptor
    limit ("at most N clients open at once"), or None if it did not say."""
    with open(log) as f:
        for line in f:
            if "clients open at once" in line:
                return int(line.split("at most ", 1)[1].split()[0])
    return None


def measure(exe, n, forward, event_loop, back_port, work):
    """Opens n idle connections through l4mesh on `forward`/`event_loop`;
    returns the markdown row."""
    front_port = free_port()
    conf = os.path.join(work, f"{forward}-{event_loop}.toml")
    with open(conf, "w") as f:
        f.write(
            f'[runtime]\nworkers = 2\nforward = "{forward}"\nevent_loop = "{event_loop}"\n'
            f'[listeners.idle]\nlisten = "127.0.0.1:{front_port}"\nservice = "idle"\n'
            f'[services.idle]\nconnect_attempts = 1\n'
            f'endpoints = [{{ addr = "127.0.0.1:{back_port}" }}]\n'
        )
    log = conf[:-len(".toml")] + ".log"
    with open(log, "w") as err:
        proxy = subprocess.Popen([exe, "-c", conf], stderr=err,
                                 env=dict(os.environ, RUST_LOG="info"))
    clients = []
    try:
        def up():
            try:
                socket.create_connection(("127.0.0.1", front_port), timeout=1).close()
                return True
            except OSError:
                return proxy.poll() is not None and sys.exit(f"l4mesh exited, see {log}")
        wait_for("l4mesh listening", up, 15)
        cap = capacity(log)
        if cap is not None and n > cap:
            sys.exit(f"l4mesh serves at most {cap} clients at once under this descriptor "
                     f"limit (see {log}); use --connections {cap} or fewer")
        wait_for("the probe connection gone from the backend",
                 lambda: established(back_port) == 0, 15)
        before_rss, before_mem = rss(proxy.pid), meminfo()
        start = time.time()
        for _ in range(n):
            c = socket.create_connection(("127.0.0.1", front_port), timeout=5)
            c.sendall(b"x")
            clients.append(c)
            if time.time() - start > 300:
                sys.exit("opening connections took over 300 s")
        wait_for(f"{n} connections at the backend (established: {{}})",
                 lambda: established(back_port) >= n, 60, lambda: established(back_port))
        after_rss, after_mem = rss(proxy.pid), meminfo()
        per_conn_rss = (after_rss - before_rss) / n
        slab = (after_mem["Slab"] - before_mem["Slab"]) / n
        used = (before_mem["MemAvailable"] - after_mem["MemAvailable"]) / n
        return (f"| {forward} | {event_loop} | {logged_loops(log)} | {n} | "
                f"{before_rss / 1e6:.1f} → {after_rss / 1e6:.1f} | "
                f"{per_conn_rss / 1024:.2f} | {slab / 1024:.2f} | {used / 1024:.2f} |")
    finally:
        for c in clients:
            c.close()
        proxy.send_signal(signal.SIGKILL)
        proxy.wait()
        wait_for("the backend's connections closed", lambda: established(back_port) == 0, 60)


def main():
    args = argparse.ArgumentParser()
    args.add_argument("--connections", type=int, default=7000)
    args.add_argument("--forward", default="auto", choices=FORWARDS + ("all",))
    args.add_argument("--event-loop", default="auto", choices=LOOPS + ("all",))
    args.add_argument("--bin", help="l4mesh binary (default: cargo build --release)")
    opts = args.parse_args()
    n = opts.connections
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if 2 * n + 200 > hard:
        sys.exit(f"{n} connections need {2 * n + 200} descriptors in the proxy; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    exe = opts.bin
    if not exe:
        subprocess.run(["cargo", "build", "--release", "--bin", "l4mesh"], cwd=ROOT, check=True)
        exe = os.path.join(ROOT, "target/release/l4mesh")
    forwards = FORWARDS if opts.forward == "all" else (opts.forward,)
    loops = ("epoll", "io_uring") if opts.event_loop == "all" else (opts.event_loop,)
    back_port = free_port()
    ready_r, ready_w = os.pipe()
    back_pid = os.fork()
    if back_pid == 0:
        backend(back_port, ready_w)
        os._exit(0)
    os.read(ready_r, 1)
    work = tempfile.mkdtemp(prefix="l4mesh-idle.")
    print("| forward | event_loop | workers logged | connections | proxy RSS MB | "
          "RSS KiB per connection | kernel slab KiB per connection (all sockets) | "
          "MemAvailable drop KiB per connection |")
    print("|---|---|---|---|---|---|---|---|")
    try:
        for forward in forwards:
            for event_loop in loops:
                print(measure(exe, n, forward, event_loop, back_port, work), flush=True)
    finally:
        os.kill(back_pid, signal.SIGKILL)
        os.waitpid(back_pid, 0)
    print(f"(configs and logs kept in {work})", file=sys.stderr)


if __name__ == "__main__":
    main()
