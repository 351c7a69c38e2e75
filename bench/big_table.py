#!/usr/bin/env python3
"""How long a big routing table takes to check, start and reload
(python3 stdlib only).

Starts ENDPOINTS real backends (loopback listeners on ports the kernel
picks, spread over helper processes so none needs more than 10,000
descriptors; each answers "ok\\n" and closes), writes a config with all of
them, weights 1 to 256, in one service of policy BALANCE, and times:

  check   `BINARY --check -c FILE` from spawn to exit;
  start   spawning `BINARY -c FILE` until a client through it is answered;
  reload  the registry's `reload` after a weight changed (its reply comes
          once the new table is published);
  register  one `register` of a new endpoint (a rebuild of the service).

    bench/big_table.py target/release/l4mesh [ENDPOINTS [BALANCE]]

Defaults: 20,000 endpoints, round_robin. Bounded: every process it starts
is stopped by its PID, and its temporary directory is removed.
"""

import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

PER_HELPER = 9000


def backends(count):
    """Serve COUNT listeners (child mode): print their ports, then answer."""
    sel = selectors.DefaultSelector()
    ports = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        ports.append(s.getsockname()[1])
    print(" ".join(map(str, ports)), flush=True)
    while True:
        for key, _ in sel.select():
            try:
                conn, _ = key.fileobj.accept()
                conn.sendall(b"ok\n")
                conn.close()
            except OSError:
                pass


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def registry(sock, line):
    with socket.socket(socket.AF_UNIX) as c:
        c.settimeout(120)
        c.connect(sock)
        c.sendall(line.encode() + b"\n")
        reply = c.makefile("rb").readline()
    if b'"ok":true' not in reply:
        raise SystemExit(f"{line}: {reply!r}")


def served(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            return c.makefile("rb").readline() == b"ok\n"
    except OSError:
        return False


def write_config(path, sock, port, balance, addrs, first_weight):
    lines = [
        f'[registry]\nsocket = "{sock}"\n',
        f'[listeners.web]\nlisten = "127.0.0.1:{port}"\nservice = "web"\n',
        f'[services.web]\nbalance = "{balance}"\nendpoints = [',
    ]
    for i, addr in enumerate(addrs):
        weight = first_weight if i == 0 else 1 + i % 256
        lines.append(f'  {{ addr = "{addr}", weight = {weight} }},')
    lines.append("]\n")
    with open(path, "w") as f:
        f.write("\n".join(lines))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--backends":
        backends(int(sys.argv[2]))
        return
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    binary = sys.argv[1]
    endpoints = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
    balance = sys.argv[3] if len(sys.argv) > 3 else "round_robin"
    tmp = tempfile.mkdtemp(prefix="l4mesh-big-table-")
    helpers = []
    server = None
    try:
        addrs = []
        left = endpoints
        while left > 0:
            n = min(left, PER_HELPER)
            helper = subprocess.Popen(
                [sys.executable, __file__, "--backends", str(n)],
                stdout=subprocess.PIPE,
            )
            helpers.append(helper)
            ports = helper.stdout.readline().split()
            if len(ports) != n:
                raise SystemExit("a backend helper could not open its listeners")
            addrs += [f"127.0.0.1:{int(p)}" for p in ports]
            left -= n
        sock = os.path.join(tmp, "registry.sock")
        conf = os.path.join(tmp, "l4mesh.toml")
        port = free_port()
        write_config(conf, sock, port, balance, addrs, 1)

        t0 = time.monotonic()
        check = subprocess.run([binary, "--check", "-c", conf], capture_output=True)
        t_check = time.monotonic() - t0
        if check.returncode != 0:
            raise SystemExit(f"--check failed: {check.stderr.decode()[-500:]}")

        t0 = time.monotonic()
        server = subprocess.Popen([binary, "-c", conf], stderr=subprocess.DEVNULL)
        deadline = t0 + 600
        while not served(port):
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the server never served a client")
            time.sleep(0.01)
        t_start = time.monotonic() - t0

        write_config(conf, sock, port, balance, addrs, 7)
        t0 = time.monotonic()
        registry(sock, "reload")
        t_reload = time.monotonic() - t0
        if not served(port):
            raise SystemExit("no client served after the reload")

        t0 = time.monotonic()
        registry(sock, "register web 127.0.0.2:9 weight=3")
        t_register = time.monotonic() - t0

        print(f"{endpoints} endpoints, weights 1-256, balance = \"{balance}\":")
        print(f"  --check                  {t_check:.3f} s")
        print(f"  start to first client    {t_start:.3f} s")
        print(f"  reload (registry reply)  {t_reload:.3f} s")
        print(f"  register one endpoint    {t_register:.3f} s")
    finally:
        for p in ([server] if server else []) + helpers:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
