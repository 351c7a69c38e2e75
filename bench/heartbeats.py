#!/usr/bin/env python3
"""What registry heartbeats cost the controller thread (python3 stdlib only).

Starts BINARY on a config with a registry socket and one service, registers
ENDPOINTS endpoints with a TTL (the addresses need not answer: there are no
health checks), then for SECONDS seconds re-registers every one of them once
a second over one registry connection, as that many instances heartbeating
every second would. It prints the CPU time of the `l4mesh-control` thread
(utime + stime from /proc/PID/task/TID/stat) over the heartbeat phase, and
of the whole process for scale.

    bench/heartbeats.py target/release/l4mesh [ENDPOINTS [SECONDS]]

Defaults: 1000 endpoints, 20 seconds. Bounded: it stops the server it
started (by its PID) and removes its temporary directory.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(path):
    """utime + stime of /proc/PATH/stat, in clock ticks."""
    with open(f"/proc/{path}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def thread_named(pid, name):
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            if f.read().strip() == name:
                return tid
    raise SystemExit(f"no thread named {name} in process {pid}")


def request(conn, reader, line):
    conn.sendall(line.encode() + b"\n")
    reply = reader.readline()
    if b'"ok":true' not in reply:
        raise SystemExit(f"{line}: {reply!r}")
    return reply


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    binary = sys.argv[1]
    endpoints = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    seconds = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    tmp = tempfile.mkdtemp(prefix="l4mesh-heartbeats-")
    sock = os.path.join(tmp, "registry.sock")
    conf = os.path.join(tmp, "l4mesh.toml")
    with open(conf, "w") as f:
        f.write(
            f'[runtime]\nworkers = 1\n[registry]\nsocket = "{sock}"\n'
            '[listeners.web]\nlisten = "127.0.0.1:0"\nservice = "web"\n'
            "[services.web]\n"
        )
    server = subprocess.Popen([binary, "-c", conf], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the server did not open its registry socket")
            time.sleep(0.05)
        conn = socket.socket(socket.AF_UNIX)
        conn.settimeout(30)
        conn.connect(sock)
        reader = conn.makefile("rb")
        addrs = [f"127.0.0.{1 + i // 50000}:{10000 + i % 50000}" for i in range(endpoints)]
        for addr in addrs:
            request(conn, reader, f"register web {addr} ttl=10s")
        control = thread_named(server.pid, "l4mesh-control")
        thread0 = cpu_ticks(f"{server.pid}/task/{control}")
        process0 = cpu_ticks(str(server.pid))
        started = time.monotonic()
        for second in range(seconds):
            for addr in addrs:
                request(conn, reader, f"register web {addr} ttl=10s")
            # One round per second, as instances heartbeating every second.
            pause = started + second + 1 - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        elapsed = time.monotonic() - started
        thread = (cpu_ticks(f"{server.pid}/task/{control}") - thread0) / CLK_TCK
        process = (cpu_ticks(str(server.pid)) - process0) / CLK_TCK
        beats = endpoints * seconds
        print(f"{endpoints} endpoints heartbeating every second for {elapsed:.1f} s ({beats} heartbeats)")
        print(f"controller thread CPU: {thread:.2f} s ({100 * thread / elapsed:.1f}% of one core, "
              f"{1e6 * thread / beats:.0f} us per heartbeat)")
        print(f"whole process CPU: {process:.2f} s ({100 * process / elapsed:.1f}% of one core)")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
