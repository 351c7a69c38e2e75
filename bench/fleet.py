#!/usr/bin/env python3
"""The fleet benchmark (issue 11), python3 stdlib only; bench/fleet.sh runs it.

    bench/fleet.py run L4MESH PINGPONG OUT.md
    bench/fleet.py names NAME...        (internal: name-answering backends)
    bench/fleet.py churn URL PREFIX SERVICE RATE SECONDS   (internal)

`run` starts etcd (temp data dir, free loopback ports, no fsync) and measures:

  a. cold start: FLEET_ENDPOINTS endpoints in FLEET_SERVICES services are put
     in etcd first; one l4mesh with a listener per service (port 0) starts;
     the time from its spawn to the first connection through the listener of
     service s0000 (whose only endpoint, in etcd alone, is a real backend)
     that the backend answers; VmRSS a second after that. workers = 0 (one
     per CPU); the other endpoints are addresses nothing listens on.
  b. propagation: FLEET_PROXIES l4mesh processes (workers = 1) watch one
     etcd; FLEET_CHANGES times, service `mover`'s only endpoint moves between
     backends A and B in one etcd txn (delete + put). From the txn's reply,
     every proxy is polled with fresh connections until one is answered by
     the new backend; the delay of that connection's reply is recorded.
  c. hot path: ping-pong round trips (examples/pingpong, one persistent
     connection per phase) through l4mesh to an echo endpoint found in etcd,
     in rounds of three phases: no etcd writes; FLEET_RATE writes a second
     under a prefix l4mesh does not watch (the control: same etcd and writer
     CPU, no update for l4mesh); FLEET_RATE changes a second to other
     endpoints of the same service (put or delete, at most 10 live).

Keys are PREFIX/services/SERVICE/endpoints/ADDR with values {"weight": N},
written through etcd's JSON gateway (/v3/kv/...). Everything started is
stopped by PID (SIGTERM, then SIGKILL) on exit, error or signal; every wait
has a deadline.
"""

import asyncio
import base64
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

PREFIX = "/l4mesh/"
ENV = os.environ


def setting(name, default):
    return int(ENV.get(f"FLEET_{name}", default))


def log(msg):
    print(time.strftime("[%H:%M:%S] ") + msg, file=sys.stderr, flush=True)


def free_port():
    """A loopback port nothing listens on now (probed with port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def b64(s):
    return base64.b64encode(s.encode()).decode()


def key(service, addr):
    return f"{PREFIX}services/{service}/endpoints/{addr}"


def put_op(service, addr, weight=1):
    return {"request_put": {"key": b64(key(service, addr)),
                            "value": b64(json.dumps({"weight": weight}))}}


def delete_op(service, addr):
    return {"request_delete_range": {"key": b64(key(service, addr))}}


class Etcd:
    """A JSON-gateway client on one persistent HTTP connection."""

    def __init__(self, port):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def call(self, path, body):
        data = json.dumps(body)
        for attempt in (0, 1):
            try:
                self.conn.request("POST", path, data, {"Content-Type": "application/json"})
                resp = self.conn.getresponse()
                text = resp.read()
                if resp.status != 200:
                    raise SystemExit(f"etcd {path}: HTTP {resp.status}: {text[:300]!r}")
                return json.loads(text)
            except (ConnectionError, http.client.HTTPException):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                if attempt:
                    raise

    def txn(self, ops):
        return self.call("/v3/kv/txn", {"success": ops})


# ---------------------------------------------------------------- processes
class Procs:
    """Everything started, stopped by PID on exit."""

    def __init__(self, work):
        self.work = work
        self.procs = []

    def start(self, name, argv, env=None, stdout=None):
        logf = open(os.path.join(self.work, f"{name}.log"), "wb")
        p = subprocess.Popen(argv, stdout=stdout or logf, stderr=logf, stdin=subprocess.DEVNULL,
                             env={**ENV, **(env or {})}, start_new_session=True)
        p.name, p.logpath = name, logf.name
        self.procs.append(p)
        return p

    def stop(self, procs=None):
        procs = list(self.procs if procs is None else procs)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p in self.procs:
                self.procs.remove(p)


def wait_for(what, check, secs, proc=None):
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        v = check()
        if v:
            return v
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{proc.name} exited ({proc.returncode}) waiting for {what}; log {proc.logpath}")
        time.sleep(0.01)
    raise SystemExit(f"timed out after {secs}s waiting for {what}")


def listeners(logpath):
    """{listener name: port} from l4mesh's 'listener NAME on ADDR' log lines."""
    with open(logpath, errors="replace") as f:
        return {m[1]: int(m[2]) for m in re.finditer(r"listener (\S+) on [\d.]+:(\d+)", f.read())}


def start_etcd(procs):
    client, peer = free_port(), free_port()
    data = os.path.join(procs.work, "etcd-data")
    help_text = subprocess.run(["etcd", "--help"], capture_output=True, text=True).stdout
    argv = ["etcd", "--name", "bench", "--data-dir", data,
            "--listen-client-urls", f"http://127.0.0.1:{client}",
            "--advertise-client-urls", f"http://127.0.0.1:{client}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"bench=http://127.0.0.1:{peer}",
            "--log-level", "warn"]
    if "unsafe-no-fsync" in help_text:
        argv.append("--unsafe-no-fsync")
    p = procs.start("etcd", argv, env={"ETCD_UNSUPPORTED_ARCH": ENV.get("ETCD_UNSUPPORTED_ARCH", "")})
    etcd = Etcd(client)

    def up():
        try:
            etcd.call("/v3/kv/range", {"key": b64("/")})
            return True
        except (OSError, http.client.HTTPException, SystemExit):
            return False
    wait_for("etcd to answer", up, 20, p)
    return etcd, f"http://127.0.0.1:{client}", "unsafe-no-fsync" in help_text


def start_names(procs, names):
    """One process answering each connection with NAME\\n on its own port."""
    p = procs.start("names", [sys.executable, __file__, "names", *names], stdout=subprocess.PIPE)
    ports = {}
    for _ in names:
        name, port = p.stdout.readline().decode().split()
        ports[name] = int(port)
    return ports


def l4mesh_config(url, listeners_of, workers):
    lines = ["[runtime]", f"workers = {workers}", 'drain_timeout = "1s"', "",
             "[discovery.etcd]", f'endpoints = ["{url}"]', f'prefix = "{PREFIX}"', ""]
    for service in listeners_of:
        lines += [f"[listeners.{service}]", 'listen = "127.0.0.1:0"', f'service = "{service}"',
                  f"[services.{service}]", 'discovery = "etcd"', 'connect_timeout = "200ms"', ""]
    return "\n".join(lines)


def ask(port, timeout=1.0):
    """The line a connection through 127.0.0.1:PORT gets ('' if none)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            return s.recv(64).decode().strip()
    except OSError:
        return ""


def start_l4mesh(procs, name, binary, config, workers):
    path = os.path.join(procs.work, f"{name}.toml")
    with open(path, "w") as f:
        f.write(config)
    return procs.start(name, [binary, "-c", path], env={"RUST_LOG": ENV.get("RUST_LOG", "info")})


# ------------------------------------------------------------ measurements
def cold_start(procs, etcd, url, binary):
    services, endpoints = setting("SERVICES", 1000), setting("ENDPOINTS", 10000)
    ports = start_names(procs, ["cold"])
    names = [f"s{i:04d}" for i in range(services)]
    ops = []
    # s0000's only endpoint is the real backend; the rest are addresses in
    # 127.0.1.0/24 that nothing listens on (no health checks: never dialled).
    ops.append(put_op(names[0], f"127.0.0.1:{ports['cold']}"))
    for i in range(endpoints - 1):
        svc = names[1 + i % (services - 1)] if services > 1 else names[0]
        ops.append(put_op(svc, f"127.0.1.{1 + i // 50000 % 250}:{10000 + i % 50000}"))
    t = time.monotonic()
    for i in range(0, len(ops), 100):
        etcd.txn(ops[i:i + 100])
    log(f"a: put {endpoints} endpoints in {services} services in {time.monotonic() - t:.1f}s")
    config = l4mesh_config(url, names, 0)
    t0 = time.monotonic()
    p = start_l4mesh(procs, "cold", binary, config, 0)
    port = wait_for("listener s0000", lambda: listeners(p.logpath).get("s0000"), 60, p)
    wait_for("the first connection through s0000 answered by the etcd endpoint",
             lambda: ask(port, 0.5) == "cold", 60, p)
    cold = time.monotonic() - t0
    time.sleep(1)
    with open(f"/proc/{p.pid}/status") as f:
        rss = int(re.search(r"VmRSS:\s+(\d+)", f.read())[1])
    bound = len(listeners(p.logpath))
    procs.stop([p])
    etcd.call("/v3/kv/deleterange", {"key": b64(PREFIX), "range_end": b64(PREFIX[:-1] + "0")})
    return {"services": services, "endpoints": endpoints, "listeners": bound,
            "cold_s": cold, "rss_mb": rss / 1024}


async def first_answer(port, want, t0, deadline):
    """Connect to PORT again and again until WANT answers; the delay from T0."""
    while time.monotonic() < deadline:
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1)
            try:
                line = await asyncio.wait_for(r.read(64), 1)
            finally:
                w.close()
            if line.decode().strip() == want:
                return time.monotonic() - t0
        except (OSError, asyncio.TimeoutError):
            await asyncio.sleep(0.001)
    return None


def propagation(procs, etcd, url, binary):
    n, changes = setting("PROXIES", 20), setting("CHANGES", 1000)
    budget = setting("CHANGES_SECS", 480)
    ports = start_names(procs, ["A", "B"])
    etcd.txn([put_op("mover", f"127.0.0.1:{ports['A']}")])
    proxies = [start_l4mesh(procs, f"p{i:02d}", binary, l4mesh_config(url, ["mover"], 1), 1)
               for i in range(n)]
    lports = [wait_for(f"{p.name}'s listener", lambda p=p: listeners(p.logpath).get("mover"), 30, p)
              for p in proxies]
    for p, port in zip(proxies, lports):
        wait_for(f"{p.name} serving A from etcd", lambda port=port: ask(port) == "A", 30, p)
    log(f"b: {n} proxies serve A; moving the endpoint {changes} times")
    delays, missed, done = [], 0, 0
    current, stop_at = "A", time.monotonic() + budget

    async def one(want, t0):
        return await asyncio.gather(*(first_answer(port, want, t0, t0 + 5) for port in lports))

    for _ in range(changes):
        if time.monotonic() > stop_at:
            log(f"b: time budget {budget}s spent after {done} changes; stopping there")
            break
        new = "B" if current == "A" else "A"
        etcd.txn([delete_op("mover", f"127.0.0.1:{ports[current]}"),
                  put_op("mover", f"127.0.0.1:{ports[new]}")])
        t0 = time.monotonic()
        for d in asyncio.run(one(new, t0)):
            if d is None:
                missed += 1
            else:
                delays.append(d)
        current, done = new, done + 1
    procs.stop(proxies)
    return {"proxies": n, "changes": done, "asked": changes, "samples": delays, "missed": missed}


def pingpong(procs, etcd, url, binary, pp):
    rounds, count = setting("PP_ROUNDS", 8), setting("PP_COUNT", 50000)
    rate = setting("RATE", 10)
    echo = free_port()
    procs.start("echo", [pp, "server", f"127.0.0.1:{echo}", "--lifetime", "900"])
    wait_for("the echo backend", lambda: ask_open(echo), 10)
    # Weight 256 against the churned endpoints' 1: a new connection almost
    # always picks the echo endpoint (a refused pick fails over anyway).
    etcd.txn([put_op("pp", f"127.0.0.1:{echo}", 256)])
    p = start_l4mesh(procs, "pp", binary, l4mesh_config(url, ["pp"], 1), 1)
    port = wait_for("listener pp", lambda: listeners(p.logpath).get("pp"), 30, p)
    wait_for("pp serving", lambda: ask_open(port), 30, p)
    res = {"quiet": [], "control": [], "churn": [], "rate": rate, "count": count,
           "rounds": rounds, "changes": 0}
    for r in range(rounds):
        for phase in ("quiet", "control", "churn"):
            churn = None
            if phase != "quiet":
                # control: the same writes under a prefix l4mesh does not
                # watch (etcd and the writer cost the same CPU, l4mesh gets
                # no update); churn: under the service's own prefix.
                prefix = PREFIX if phase == "churn" else "/elsewhere/"
                churn = procs.start(f"{phase}{r}", [sys.executable, __file__, "churn", str(etcd.port),
                                                    prefix, "pp", str(rate), "120"])
                time.sleep(1)
            # One connection per phase; should it land on a churned address
            # that refuses it (rare: weight 1 against 256), run it again.
            out = ""
            for _ in range(100):
                c = subprocess.run([pp, "client", f"127.0.0.1:{port}", "--count", str(count),
                                    "--warmup", "1000"], capture_output=True, text=True, timeout=120)
                if c.returncode == 0:
                    out = c.stdout
                    break
            m = re.search(r"p99_us=([\d.]+)", out)
            if not m:
                raise SystemExit(f"pingpong through l4mesh failed: {out!r}")
            res[phase].append(float(m[1]))
            if churn is not None:
                procs.stop([churn])
                if phase == "churn":
                    with open(churn.logpath) as f:
                        res["changes"] += sum(int(x) for x in re.findall(r"changes=(\d+)", f.read()))
            log(f"c: round {r + 1} {phase}: p99 {m[1]} us")
    procs.stop([p])
    return res


def ask_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


# ----------------------------------------------------------------- report
def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def report(a, b, c, meta):
    lines = [f"# Fleet benchmark (etcd discovery)", "",
             f"- Date: {meta['date']}", f"- Kernel: {meta['kernel']}", f"- CPUs (`nproc`): {meta['nproc']}",
             f"- Load average at start: {meta['load']}", f"- l4mesh: {meta['rev']}, etcd {meta['etcd']}"
             f"{' (--unsafe-no-fsync)' if meta['nofsync'] else ''}",
             f"- Command: `{meta['command']}`", "",
             "| Measure | Figure | Target |", "|---|---|---|"]
    if a:
        lines.append(f"| a. cold start, {a['endpoints']} endpoints / {a['services']} services in etcd, "
                     f"{a['listeners']} listeners: spawn → first served connection | {a['cold_s']:.2f} s | |")
        lines.append(f"| a. RSS after the load (VmRSS) | {a['rss_mb']:.1f} MiB | |")
    if b:
        s = b["samples"]
        scaled = "" if b["changes"] == b["asked"] else f" (of {b['asked']} asked: time budget)"
        lines.append(f"| b. etcd txn reply → first connection routed by it, {b['proxies']} proxies × "
                     f"{b['changes']} changes{scaled}: p50 | {pct(s, 0.5) * 1000:.1f} ms | < 100 ms |")
        lines.append(f"| b. same, p99 | {pct(s, 0.99) * 1000:.1f} ms | < 1 s |")
        lines.append(f"| b. same, max; not routed within 5 s | {max(s, default=float('nan')) * 1000:.1f} ms; "
                     f"{b['missed']} of {b['missed'] + len(s)} | 0 |")
    if c:
        q, co, ch = (statistics.median(c[k]) for k in ("quiet", "control", "churn"))
        lines.append(f"| c. ping-pong p99, no etcd writes (median of {c['rounds']} phases × {c['count']} "
                     f"round trips) | {q:.1f} µs | |")
        lines.append(f"| c. ping-pong p99, {c['rate']} writes/s to etcd outside l4mesh's prefix (control: "
                     f"etcd and the writer load the CPUs, l4mesh gets nothing) | {co:.1f} µs | |")
        lines.append(f"| c. ping-pong p99, {c['rate']} changes/s to other endpoints of the same service "
                     f"({c['changes']} changes) | {ch:.1f} µs | |")
        lines.append(f"| c. ratio changes / control | {ch / co:.3f} | ≤ 1.10 |")
        lines.append(f"| c. ratio changes / no etcd writes | {ch / q:.3f} | ≤ 1.10 |")
        lines.append("")
        lines.append(f"c. each phase's p99 (µs), in run order: quiet {c['quiet']}, control {c['control']}, "
                     f"changes {c['churn']}")
    lines += ["", "Method: bench/fleet.py's docstring. (b) resolution: one connection set-up through "
              "l4mesh to a Python backend, from a Python asyncio poller sharing the 2 CPUs with "
              "etcd and the proxies."]
    return "\n".join(lines) + "\n"


def run(args):
    binary, pp, out = args
    work = tempfile.mkdtemp(prefix="l4mesh-fleet-")
    procs = Procs(work)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parts = ENV.get("FLEET_PARTS", "abc")
    try:
        etcd, url, nofsync = start_etcd(procs)
        a = cold_start(procs, etcd, url, binary) if "a" in parts else None
        b = propagation(procs, etcd, url, binary) if "b" in parts else None
        c = pingpong(procs, etcd, url, binary, pp) if "c" in parts else None
        meta = {"date": ENV.get("FLEET_META_DATE"), "kernel": os.uname().release,
                "nproc": os.cpu_count(), "load": ENV.get("FLEET_META_LOADAVG"),
                "rev": ENV.get("FLEET_META_REV"), "command": ENV.get("FLEET_META_COMMAND"),
                "etcd": subprocess.run(["etcd", "--version"], capture_output=True,
                                       text=True).stdout.split()[2], "nofsync": nofsync}
        text = report(a, b, c, meta)
        with open(out, "w") as f:
            f.write(text)
        print(text)
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        procs.stop()
        log(f"logs and configs kept in {work}" if ENV.get("FLEET_KEEP") else f"removed {work}")
        if not ENV.get("FLEET_KEEP"):
            shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------- helpers
def names(args):
    """Serve NAME\\n to every connection, one port per name (printed)."""
    async def main():
        servers = []
        for name in args:
            async def answer(r, w, name=name):
                w.write(name.encode() + b"\n")
                try:
                    await w.drain()
                finally:
                    w.close()
            s = await asyncio.start_server(answer, "127.0.0.1", 0, backlog=4096)
            servers.append(s)
            print(name, s.sockets[0].getsockname()[1], flush=True)
        await asyncio.sleep(900)  # a safety net: the parent stops it sooner
    asyncio.run(main())


def churn(args):
    """RATE etcd changes a second for SECONDS to SERVICE's endpoints other than
    the tested one: put then delete addresses in 127.0.3.0/24."""
    port, prefix, service, rate, secs = int(args[0]), args[1], args[2], float(args[3]), float(args[4])
    global PREFIX
    PREFIX = prefix
    etcd = Etcd(port)
    start, done = time.monotonic(), 0
    signal.signal(signal.SIGTERM, lambda *_: (print(f"changes={done}", flush=True), sys.exit(0)))
    live = []
    while time.monotonic() - start < secs:
        if len(live) < 10:
            addr = f"127.0.3.{random.randint(1, 250)}:{random.randint(20000, 60000)}"
            etcd.txn([put_op(service, addr)])
            live.append(addr)
        else:
            etcd.txn([delete_op(service, live.pop(0))])
        done += 1
        time.sleep(max(0.0, start + done / rate - time.monotonic()))
    print(f"changes={done}", flush=True)


if __name__ == "__main__":
    cmds = {"run": run, "names": names, "churn": churn}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        sys.exit(__doc__)
    cmds[sys.argv[1]](sys.argv[2:])
