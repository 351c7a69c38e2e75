#!/usr/bin/env python3
"""System calls l4mesh makes per request, on each event loop.

For each event loop asked for, starts l4mesh (release build, 2 workers) in
front of an nginx HTTP backend that answers "ok", and counts every system
call of every l4mesh thread while a bounded client makes exactly N
`Connection: close` requests (a connection each), then while it makes N
keep-alive requests (CLIENTS connections, N / CLIENTS requests each). It
prints a markdown table of calls per request, per kind (io_uring_enter
included), and writes it to --out if given. An idle window of the same
length counts what the process does with no traffic (reported, not
subtracted).

Counting: `perf stat -e 'syscalls:sys_enter_*' -p PID` (exact counts from
the kernel's tracepoints, all threads, little slowdown) or, with
--tool strace, `strace -c -f -p PID` (exact too, but ptrace slows every call,
which changes how many events each wait returns).

usage: python3 bench/syscalls.py [--event-loop epoll|io_uring|auto|all]
           [--forward auto|splice|copy] [--requests N] [--clients C]
           [--tool perf|strace] [--bin PATH] [--out FILE.md]

Needs: perf (apt-get install linux-perf, or linux-tools-$(uname -r) on
Ubuntu) or strace (apt-get install strace), nginx (apt-get install nginx),
root or kernel.perf_event_paranoid <= -1 for the tracepoints. Not part of
CI. Every load is bounded: N requests, and each socket times out after 10 s.
"""
import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOPS = ("epoll", "io_uring", "auto")
REQUEST_CLOSE = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
REQUEST_KA = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
TIMEOUT = 10


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc, what):
    deadline = time.time() + 15
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} not listening on {port} within 15 s")


def start_nginx(work, port):
    d = os.path.join(work, "nginx")
    os.makedirs(d)
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        default_type text/plain;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
""")
    proc = subprocess.Popen(
        ["nginx", "-p", d, "-c", conf, "-e", f"{d}/error.log", "-g", "daemon off;"])
    wait_listening(port, proc, "nginx")
    return proc


def start_l4mesh(exe, work, loop, forward, front, back):
    conf = os.path.join(work, f"l4mesh-{loop}.toml")
    with open(conf, "w") as f:
        f.write(
            f'[runtime]\nworkers = 2\nforward = "{forward}"\nevent_loop = "{loop}"\n'
            f'[listeners.http]\nlisten = "127.0.0.1:{front}"\nservice = "http"\n'
            f'[services.http]\nconnect_timeout = "1s"\nconnect_attempts = 1\n'
            f'endpoints = [{{ addr = "127.0.0.1:{back}" }}]\n')
    with open(os.path.join(work, f"l4mesh-{loop}.log"), "w") as log:
        proc = subprocess.Popen([exe, "-c", conf], stderr=log,
                                env=dict(os.environ, RUST_LOG="info"))
    wait_listening(front, proc, f"l4mesh ({loop})")
    return proc


def logged_loops(work, loop):
    """What the workers logged they run ("worker N: event loop X"), as
    "X ×count" for each X, or "not logged"."""
    seen = {}
    with open(os.path.join(work, f"l4mesh-{loop}.log")) as f:
        for line in f:
            if ": event loop " in line and "worker " in line:
                name = line.rsplit(": event loop ", 1)[1].split()[0]
                seen[name] = seen.get(name, 0) + 1
    return ", ".join(f"{k} ×{v}" for k, v in sorted(seen.items())) or "not logged"


def read_response(sock, buf):
    """Reads one HTTP response (headers and a Content-Length body) from
    `sock`, `buf` holding bytes already read; returns what is left over."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"EOF inside the headers after {len(buf)} bytes")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(f"not a 200: {head[:60]!r}")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(rest) < length:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("EOF inside the body")
        rest += chunk
    return rest[length:]


def close_requests(port, n):
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
            s.sendall(REQUEST_CLOSE)
            if read_response(s, b""):
                raise ConnectionError("bytes after the response")
            if s.recv(1):
                raise ConnectionError("no EOF after a Connection: close response")


def keepalive_requests(port, n):
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        left = b""
        for _ in range(n):
            s.sendall(REQUEST_KA)
            left = read_response(s, left)


def run_clients(kind, port, requests, clients):
    """Makes exactly `requests` requests of `kind` over `clients` threads;
    exits on any failure."""
    work = keepalive_requests if kind == "keep-alive" else close_requests
    errors = []

    def client(n):
        try:
            work(port, n)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    share = [requests // clients + (i < requests % clients) for i in range(clients)]
    threads = [threading.Thread(target=client, args=(n,)) for n in share]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        sys.exit(f"{kind}: {len(errors)} client(s) failed: {errors[:3]}")


class Counter:
    """Counts the system calls of process `pid` (every thread) between
    start() and stop()."""

    def __init__(self, tool, pid, work, name):
        self.tool, self.pid = tool, pid
        self.out = os.path.join(work, f"{name}.{tool}")
        self.log = open(self.out + ".log", "w")
        if tool == "perf":
            # Counters start disabled (-D -1) and are enabled through the
            # control fifo, whose ack says when they count.
            ctl, ack = self.out + ".ctl", self.out + ".ack"
            os.mkfifo(ctl)
            os.mkfifo(ack)
            cmd = ["perf", "stat", "-x", ",", "-o", self.out, "-D", "-1",
                   "--control", f"fifo:{ctl},{ack}",
                   "-e", "syscalls:sys_enter_*", "-p", str(pid)]
            self.proc = subprocess.Popen(cmd, stderr=self.log)
            self.enable_perf(ctl, ack)
        else:
            cmd = ["strace", "-c", "-f", "-q", "-o", self.out, "-p", str(pid)]
            self.proc = subprocess.Popen(cmd, stderr=self.log)
            self.wait_traced()

    def failed(self, why):
        self.log.flush()
        with open(self.out + ".log") as f:
            sys.exit(f"{self.tool} {why}: {f.read()[-500:]}")

    def enable_perf(self, ctl, ack):
        def on_alarm(*_):
            self.failed("did not answer on its control fifo within 30 s")

        old = signal.signal(signal.SIGALRM, on_alarm)
        signal.alarm(30)
        try:
            with open(ctl, "w") as c, open(ack) as a:
                c.write("enable\n")
                c.flush()
                if not a.readline().startswith("ack"):
                    self.failed("did not ack enable")
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)

    def wait_traced(self):
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self.failed("exited")
            if self.all_traced():
                return
            time.sleep(0.05)
        sys.exit(f"{self.tool} did not attach to {self.pid} within 30 s")

    def all_traced(self):
        task = f"/proc/{self.pid}/task"
        for tid in os.listdir(task):
            with open(f"{task}/{tid}/status") as f:
                tracer = next(l for l in f if l.startswith("TracerPid:"))
            if tracer.split()[1] == "0":
                return False
        return True

    def stop(self):
        """Ends counting; returns {syscall name: count}."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=30)
        self.log.close()
        with open(self.out) as f:
            text = f.read()
        counts = {}
        if self.tool == "perf":
            for line in text.splitlines():
                fields = line.split(",")
                if len(fields) > 2 and fields[2].startswith("syscalls:sys_enter_"):
                    if fields[0].isdigit() and int(fields[0]):
                        counts[fields[2][len("syscalls:sys_enter_"):]] = int(fields[0])
        else:
            # % time, seconds, usecs/call, calls, [errors], syscall
            for line in text.splitlines():
                fields = line.split()
                if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
                    counts[fields[-1]] = int(fields[3])
        return counts


def measure(opts, exe, work, loop, back):
    front = free_port()
    proxy = start_l4mesh(exe, work, loop, opts.forward, front, back)
    results = {}
    try:
        # Warm up both paths (pools, lazily created state) before counting.
        run_clients("close", front, 2 * opts.clients, opts.clients)
        run_clients("keep-alive", front, 2 * opts.clients, opts.clients)
        longest = 0.0
        for kind in ("close", "keep-alive"):
            counter = Counter(opts.tool, proxy.pid, work, f"{loop}-{kind}")
            start = time.time()
            run_clients(kind, front, opts.requests, opts.clients)
            took = time.time() - start
            longest = max(longest, took)
            results[kind] = (counter.stop(), took)
        counter = Counter(opts.tool, proxy.pid, work, f"{loop}-idle")
        idle = max(longest, 1.0)  # an idle window as long as the longest run
        time.sleep(idle)
        results["idle"] = (counter.stop(), idle)
        results["logged"] = logged_loops(work, loop)
    finally:
        proxy.send_signal(signal.SIGTERM)
        try:
            proxy.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait()
    return results


def table(opts, measured):
    """The markdown report: totals, then each call per request."""
    rev = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                         capture_output=True, text=True).stdout.strip() or "?"
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    lines = [
        "# System calls per request",
        "",
        f"- {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, l4mesh {rev}, "
        f"kernel {os.uname().release}, {os.cpu_count()} CPUs, load average {load}.",
        f"- `python3 {os.path.relpath(sys.argv[0], ROOT)} {' '.join(sys.argv[1:])}` "
        f"({opts.tool}), forward = \"{opts.forward}\", "
        f"2 workers, {opts.requests} requests of each kind over {opts.clients} "
        "client connection(s) at a time, nginx backend answering \"ok\". Every call "
        "of every l4mesh thread counts (the control plane's too: see the idle column).",
        "- \"workers logged\": what the workers said they run (`worker N: event loop X`).",
        "",
        "| event_loop | workers logged | requests | system calls per request "
        "| io_uring_enter per request | req/s under the counter | idle calls in as long |",
        "|---|---|---|---|---|---|---|",
    ]
    names = set()
    for loop, res in measured.items():
        idle = sum(res["idle"][0].values())
        for kind in ("close", "keep-alive"):
            counts, took = res[kind]
            names.update(counts)
            total = sum(counts.values())
            lines.append(
                f"| {loop} | {res['logged']} | {kind} | {total / opts.requests:.2f} | "
                f"{counts.get('io_uring_enter', 0) / opts.requests:.2f} | "
                f"{opts.requests / took:,.0f} | {idle} in {res['idle'][1]:.1f} s |")
    cols = [(loop, kind) for loop in measured for kind in ("close", "keep-alive")]
    lines += ["", "Per request, by call (calls under 0.01 per request left out):", "",
              "| call | " + " | ".join(f"{l} {k}" for l, k in cols) + " |",
              "|---|" + "---|" * len(cols)]

    def per(loop, kind, name):
        return measured[loop][kind][0].get(name, 0) / opts.requests

    order = sorted(names, key=lambda n: -max(per(l, k, n) for l, k in cols))
    for name in order:
        if max(per(l, k, name) for l, k in cols) < 0.01:
            continue
        lines.append(f"| {name} | " + " | ".join(f"{per(l, k, name):.2f}" for l, k in cols)
                     + " |")
    return "\n".join(lines)


def main():
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("--event-loop", default="all", choices=LOOPS + ("all",))
    args.add_argument("--forward", default="auto", choices=("auto", "splice", "copy"))
    args.add_argument("--requests", type=int, default=4000)
    args.add_argument("--clients", type=int, default=8)
    args.add_argument("--tool", default="perf", choices=("perf", "strace"))
    args.add_argument("--bin", help="l4mesh binary (default: cargo build --release)")
    args.add_argument("--out", help="also write the table to this markdown file")
    opts = args.parse_args()
    if opts.requests < opts.clients or opts.clients < 1:
        sys.exit("--requests must be at least --clients, and --clients at least 1")
    for tool in (opts.tool, "nginx"):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode:
            sys.exit(f"{tool} not found (see the apt-get line in this script's header)")
    exe = opts.bin
    if not exe:
        subprocess.run(["cargo", "build", "--release", "--bin", "l4mesh"], cwd=ROOT, check=True)
        exe = os.path.join(ROOT, "target/release/l4mesh")
    loops = ("epoll", "io_uring") if opts.event_loop == "all" else (opts.event_loop,)
    work = tempfile.mkdtemp(prefix="l4mesh-syscalls.")
    os.chmod(work, 0o755)  # nginx workers run as an unprivileged user
    back = free_port()
    nginx = start_nginx(work, back)
    measured = {}
    try:
        for loop in loops:
            print(f"[{loop}] {opts.requests} close + {opts.requests} keep-alive requests",
                  file=sys.stderr)
            measured[loop] = measure(opts, exe, work, loop, back)
    finally:
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(timeout=15)
    report = table(opts, measured)
    print(report)
    if opts.out:
        with open(opts.out, "w") as f:
            f.write(report + "\n")
    print(f"(counter output kept in {work})", file=sys.stderr)


if __name__ == "__main__":
    main()
