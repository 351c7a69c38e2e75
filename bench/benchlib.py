"""Shared by bench/helper.py and bench/reload_helper.py (python3 stdlib
only): what the benchmark scripts read from /proc about the servers they
start and how they stop them, the subcommand dispatch, and the head of the
reports.

An ENTRY is "PID:STARTTIME" as printed by `ident`, so that a PID that was
reused by an unrelated process is never signalled.
"""

import os
import signal
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- processes
def stat(pid):
    """(command name, fields after it) of /proc/PID/stat, fields[0] being the
    state; None if there is no such process. PID may be "PID/task/TID"."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    end = data.rindex(")")
    return data[:end].split("(", 1)[1], data[end + 2:].split()


def stat_fields(pid):
    """Fields of /proc/PID/stat after the command name (index 0 = state)."""
    s = stat(pid)
    return s[1] if s else None


def starttime(pid):
    f = stat_fields(pid)
    return f[19] if f else None


def is_running(entry):
    """True if ENTRY's process exists, is the same process, and is no zombie."""
    pid, start = entry.split(":")
    f = stat_fields(pid)
    return bool(f) and f[19] == start and f[0] not in ("Z", "X")


def children_map():
    """Map ppid -> [pid] for every process in /proc."""
    children = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            f = stat_fields(name)
            if f:
                children.setdefault(int(f[1]), []).append(int(name))
    return children


def tree(entries):
    """Entries of the given live roots plus all their descendants."""
    roots = [int(e.split(":")[0]) for e in entries if is_running(e)]
    children = children_map()
    found, todo = [], list(roots)
    while todo and len(found) < 10000:
        pid = todo.pop()
        start = starttime(pid)
        if start is not None:
            found.append(f"{pid}:{start}")
            todo.extend(children.get(pid, []))
    return found


def find_in_tree(entry, comm):
    """The PID of the process named COMM in the tree rooted at ENTRY (a server
    runs under timeout and env); exits if there is none."""
    root, start = entry.split(":")
    if starttime(root) != start:
        sys.exit(f"process {entry} is gone")
    children = children_map()
    todo, seen = [int(root)], 0
    while todo and seen < 1000:
        pid = todo.pop()
        seen += 1
        s = stat(pid)
        if s and s[0] == comm:
            return pid
        todo.extend(children.get(pid, []))
    sys.exit(f"no {comm} process under {entry}")


def cpu_seconds(entry):
    """CPU seconds (user+system, incl. reaped children) of ENTRY's tree."""
    total = 0
    for e in tree([entry]):
        f = stat_fields(e.split(":")[0])
        if f:
            # utime, stime, cutime, cstime (fields 14-17 of stat)
            total += sum(int(x) for x in f[11:15])
    return total / CLK_TCK


def thread_cpu_seconds(pid, names):
    """CPU seconds of PID's threads whose name is in NAMES: nanoseconds on the
    CPU where the kernel keeps schedstats, clock ticks otherwise."""
    total = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        s = stat(f"{pid}/task/{tid}")
        if not s or s[0] not in names:
            continue
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            total += (int(s[1][11]) + int(s[1][12])) / CLK_TCK
    return total


def status_kb(pid, keys):
    """The given /proc/PID/status fields (e.g. VmRSS), in kB."""
    vals = {}
    with open(f"/proc/{pid}/status") as st:
        for line in st:
            k, _, v = line.partition(":")
            if k in keys:
                vals[k] = int(v.split()[0])
    return vals


def stop(entries):
    """SIGTERM the roots, wait up to 5 s for their whole trees to exit, then
    SIGKILL what is left."""
    procs = tree(entries)
    roots = [e for e in entries if is_running(e)]
    for e in roots:
        try:
            os.kill(int(e.split(":")[0]), signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(is_running(e) for e in procs):
        time.sleep(0.05)
    for e in procs:
        if is_running(e):
            try:
                os.kill(int(e.split(":")[0]), signal.SIGKILL)
            except OSError:
                pass


def _ident(args):
    start = starttime(args[0])
    if start is None:
        sys.exit(1)
    print(f"{args[0]}:{start}")


# The process subcommands: ident PID, cpu ENTRY, alive ENTRY..., stop ENTRY...
COMMANDS = {
    "ident": _ident,
    "cpu": lambda args: print(f"{cpu_seconds(args[0]):.2f}"),
    "alive": lambda args: print(" ".join(e for e in args if is_running(e))),
    "stop": stop,
}


# ------------------------------------------------------------------- report
def run_meta(prefix):
    """The report meta every benchmark has, from the PREFIX_META_* variables
    its script sets."""
    env = os.environ
    return {
        "date": env.get(f"{prefix}_META_DATE"),
        "kernel": env.get(f"{prefix}_META_KERNEL"),
        "nproc": int(env.get(f"{prefix}_META_NPROC", "0")),
        "loadavg_at_start": env.get(f"{prefix}_META_LOADAVG"),
        "command": env.get(f"{prefix}_META_COMMAND"),
    }


def md_head(title, meta):
    """The first lines of a Markdown report: title, then run_meta's items."""
    return [
        f"# {title}",
        "",
        f"- Date: {meta['date']}",
        f"- Kernel (`uname -r`): {meta['kernel']}",
        f"- CPUs (`nproc`): {meta['nproc']}",
        f"- Load average at start: {meta['loadavg_at_start']}",
        f"- Command: `{meta['command']}`",
    ]


# --------------------------------------------------------------- dispatch
def run(doc, commands):
    """Run the subcommand argv[1] with the arguments after it: COMMANDS maps
    each name to a function of that argument list. DOC is the usage."""
    if len(sys.argv) < 2:
        sys.exit(doc)
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd not in commands:
        sys.exit(f"unknown subcommand {cmd!r}\n{doc}")
    commands[cmd](args)
