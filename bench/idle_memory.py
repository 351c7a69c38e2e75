#!/usr/bin/env python3
"""Memory per idle proxied connection.

Starts a backend that accepts and holds connections, starts l4mesh in front
of it (forward mode from argv), opens N idle client connections through it
(each sends one byte so it is established end to end, then stays quiet),
and reports the proxy's RSS growth per connection, plus the system-wide
kernel memory growth (/proc/meminfo Slab + pipe-free) per connection.

usage: bench/idle_memory.py [--connections N] [--forward auto|splice|copy]
The proxy needs two descriptors per connection: N must fit the hard
RLIMIT_NOFILE (20000 on this machine, so 9000 by default).
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


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def backend(port, ready_w):
    """Accepts and holds every connection, reading what arrives."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(4096)
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    os.write(ready_w, b"x")
    held = []
    deadline = time.time() + 600
    while time.time() < deadline:
        for key, _ in sel.select(timeout=1):
            if key.fileobj is listener:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(False)
                held.append(conn)
                sel.register(conn, selectors.EVENT_READ)
            else:
                try:
                    if not key.fileobj.recv(4096):
                        sel.unregister(key.fileobj)
                except (BlockingIOError, ConnectionError):
                    pass


def main():
    args = argparse.ArgumentParser()
    args.add_argument("--connections", type=int, default=9000)
    args.add_argument("--forward", default="auto")
    opts = args.parse_args()
    n = opts.connections
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if 2 * n + 200 > hard:
        sys.exit(f"{n} connections need {2 * n + 200} descriptors in the proxy; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    exe = os.path.join(ROOT, "target/release/l4mesh")
    if not os.path.exists(exe):
        subprocess.run(["cargo", "build", "--release", "--bin", "l4mesh"], cwd=ROOT, check=True)
    back_port, front_port = free_port(), free_port()
    ready_r, ready_w = os.pipe()
    back_pid = os.fork()
    if back_pid == 0:
        backend(back_port, ready_w)
        os._exit(0)
    os.read(ready_r, 1)
    conf = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    conf.write(
        f'[runtime]\nworkers = 2\nforward = "{opts.forward}"\n'
        f'[listeners.idle]\nlisten = "127.0.0.1:{front_port}"\nservice = "idle"\n'
        f'[services.idle]\nconnect_attempts = 1\n'
        f'endpoints = [{{ addr = "127.0.0.1:{back_port}" }}]\n'
    )
    conf.close()
    proxy = subprocess.Popen(
        [exe, "-c", conf.name],
        env=dict(os.environ, RUST_LOG="warn"),
    )
    clients = []
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", front_port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(1)
        before_rss, before_mem = rss(proxy.pid), meminfo()
        start = time.time()
        for i in range(n):
            c = socket.create_connection(("127.0.0.1", front_port), timeout=5)
            c.sendall(b"x")
            clients.append(c)
            if time.time() - start > 300:
                sys.exit("opening connections took over 300 s")
        time.sleep(3)
        after_rss, after_mem = rss(proxy.pid), meminfo()
        per_conn_rss = (after_rss - before_rss) / n
        slab = (after_mem["Slab"] - before_mem["Slab"]) / n
        used = ((before_mem["MemAvailable"] - after_mem["MemAvailable"])) / n
        print(f"forward={opts.forward} connections={n}")
        print(f"proxy RSS: {before_rss / 1e6:.1f} MB -> {after_rss / 1e6:.1f} MB, "
              f"{per_conn_rss / 1024:.2f} KiB per connection")
        print(f"kernel slab (all processes: client, backend and proxy sockets): "
              f"{slab / 1024:.2f} KiB per connection")
        print(f"MemAvailable drop (whole machine): {used / 1024:.2f} KiB per connection")
    finally:
        for c in clients:
            c.close()
        proxy.send_signal(signal.SIGKILL)
        proxy.wait()
        os.kill(back_pid, signal.SIGKILL)
        os.waitpid(back_pid, 0)
        os.unlink(conf.name)


if __name__ == "__main__":
    main()
