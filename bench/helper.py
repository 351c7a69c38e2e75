#!/usr/bin/env python3
"""Helper for bench/run.sh (python3 stdlib only).

Subcommands:
  ident PID                 print "PID:STARTTIME" (identifies a process safely)
  cpu ENTRY                 CPU seconds (user+system, incl. reaped children)
                            of the process tree rooted at ENTRY
  alive ENTRY...            print the entries that still run (not zombies)
  stop ENTRY...             SIGTERM the roots, wait up to 5 s for their whole
                            trees to exit, then SIGKILL what is left
  iperf FILE                parse iperf3 -J output: "GBIT_PER_S BYTES"
  wrk FILE                  parse wrk --latency output: "REQ_PER_S P99_US ERRORS REQUESTS"
  busy                      CPU seconds all CPUs have been busy since boot
                            (/proc/stat: everything but idle and iowait)
  ping FILE                 parse pingpong client output: "P50_US P99_US"
  report TSV MD JSON        median table from the raw results; meta from env

An ENTRY is "PID:STARTTIME" as printed by `ident`, so that a PID that was
reused by an unrelated process is never signalled. The process subcommands
(ident, cpu, alive, stop) are bench/benchlib.py's, shared with reload_helper.py.
"""

import json
import os
import re
import statistics
import sys

import benchlib  # bench/benchlib.py: ident, cpu, alive, stop; the report head


# ------------------------------------------------------------------ parsers
def parse_iperf(path):
    with open(path) as f:
        text = f.read()
    try:
        data = json.loads(text)
    except ValueError:
        sys.exit(f"iperf3 output is not JSON: {text[:200]!r}")
    if data.get("error"):
        sys.exit(f"iperf3 error: {data['error']}")
    recv = data["end"]["sum_received"]
    print(f"{recv['bits_per_second'] / 1e9:.4f} {int(recv['bytes'])}")


UNITS_US = {"us": 1, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


def parse_wrk(path):
    with open(path) as f:
        text = f.read()
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    p99 = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M)
    total = re.search(r"^\s*(\d+) requests in ", text, re.M)
    if not rps or not p99 or not total:
        sys.exit(f"cannot parse wrk output: {text[-300:]!r}")
    errors = 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if sock:
        errors += sum(int(x) for x in sock.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if non2xx:
        errors += int(non2xx.group(1))
    p99_us = float(p99.group(1)) * UNITS_US[p99.group(2)]
    print(f"{float(rps.group(1)):.1f} {p99_us:.1f} {errors} {total.group(1)}")


def busy_seconds():
    """CPU seconds all CPUs have spent busy since boot: every /proc/stat
    column of the "cpu" line but idle and iowait (guest time is already in
    user and nice)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def parse_ping(path):
    with open(path) as f:
        text = f.read()
    m = re.search(r"p50_us=([\d.]+) p99_us=([\d.]+)", text)
    if not m:
        sys.exit(f"cannot parse pingpong output: {text[-300:]!r}")
    print(m.group(1), m.group(2))


# ------------------------------------------------------------------- report
# (key, label, unit, direction: +1 higher is better, -1 lower is better, format)
METRICS = [
    ("iperf1_gbps", "iperf3 1 stream", "Gbit/s", +1, "{:.2f}"),
    ("iperf4_gbps", "iperf3 4 streams", "Gbit/s", +1, "{:.2f}"),
    ("wrk_ka_rps", "HTTP keep-alive", "req/s", +1, "{:,.0f}"),
    ("wrk_ka_p99_us", "HTTP keep-alive p99", "µs", -1, "{:,.0f}"),
    ("wrk_close_rps", "HTTP Connection: close", "req/s", +1, "{:,.0f}"),
    ("wrk_close_p99_us", "HTTP Connection: close p99", "µs", -1, "{:,.0f}"),
    ("ping_p50_us", "64 B ping-pong p50", "µs", -1, "{:.1f}"),
    ("ping_p99_us", "64 B ping-pong p99", "µs", -1, "{:.1f}"),
    ("cpu_s_per_gb", "proxy CPU per GB (iperf3)", "CPU s/GB", -1, "{:.3f}"),
    ("ka_proxy_cpu_us", "proxy CPU per keep-alive request", "CPU µs", -1, "{:.1f}"),
    ("ka_machine_cpu_us", "machine CPU per keep-alive request", "CPU µs", -1, "{:.1f}"),
]
# Metrics of the proxy alone: nothing to show for direct.
PROXY_ONLY = ("cpu_s_per_gb", "ka_proxy_cpu_us")
HAPROXIES = ("haproxy", "haproxy-splice")
# The same binary on the epoll event loop: the subject's other loop.
EPOLL = "l4mesh-epoll"


def load_runs(path):
    runs = []
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 4:
                continue
            rep, proxy, metric, value = parts
            try:
                v = float(value)
            except ValueError:
                v = None
            if v is not None and v != v:  # NaN = failed run
                v = None
            runs.append({"repeat": int(rep), "proxy": proxy, "metric": metric, "value": v})
    return runs


def report(tsv, md_path, json_path):
    env = os.environ
    proxies = env["BENCH_META_PROXIES"].split()
    repeats = int(env["BENCH_META_REPEATS"])
    subject = env.get("BENCH_META_SUBJECT", "l4mesh")
    runs = load_runs(tsv)

    values = {}  # proxy -> metric -> [values]
    for r in runs:
        if r["value"] is not None:
            values.setdefault(r["proxy"], {}).setdefault(r["metric"], []).append(r["value"])
    medians = {
        p: {m: statistics.median(v) for m, v in ms.items()} for p, ms in values.items()
    }

    def cell(proxy, key, fmt):
        vals = values.get(proxy, {}).get(key, [])
        if proxy == "direct" and key in PROXY_ONLY:
            return "n/a"
        if not vals:
            return "failed"
        text = fmt.format(statistics.median(vals))
        if len(vals) < repeats:
            text += f" ({len(vals)}/{repeats} ok)"
        return text

    has_subject = subject in proxies
    ratio_direct = has_subject and "direct" in proxies
    haproxies = [h for h in HAPROXIES if h in proxies]
    ratio_hap = has_subject and bool(haproxies)
    ratio_epoll = has_subject and subject != EPOLL and EPOLL in proxies

    header = ["metric", "unit"] + proxies
    if ratio_direct:
        header.append(f"{subject} ÷ direct")
    if ratio_hap:
        header.append(f"{subject} ÷ best HAProxy")
    if ratio_epoll:
        header.append(f"{subject} ÷ {EPOLL}")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    ratios = {}
    for key, label, unit, direction, fmt in METRICS:
        arrow = "↑" if direction > 0 else "↓"
        row = [f"{label} {arrow}", unit] + [cell(p, key, fmt) for p in proxies]
        mine = medians.get(subject, {}).get(key)
        if ratio_direct:
            base = medians.get("direct", {}).get(key)
            if key in PROXY_ONLY or mine is None or not base:
                row.append("n/a")
            else:
                ratios.setdefault(key, {})["direct"] = mine / base
                row.append(f"{mine / base:.2f}")
        if ratio_hap:
            cands = [(medians[h][key], h) for h in haproxies if key in medians.get(h, {})]
            if mine is None or not cands:
                row.append("n/a")
            else:
                best = max(cands) if direction > 0 else min(cands)
                if best[0]:
                    ratios.setdefault(key, {})["best_haproxy"] = {
                        "ratio": mine / best[0], "vs": best[1]}
                    row.append(f"{mine / best[0]:.2f} (vs {best[1]})")
                else:
                    row.append("n/a")
        if ratio_epoll:
            base = medians.get(EPOLL, {}).get(key)
            if mine is None or not base:
                row.append("n/a")
            else:
                ratios.setdefault(key, {})["epoll"] = mine / base
                row.append(f"{mine / base:.2f}")
        lines.append("| " + " | ".join(row) + " |")
    table = "\n".join(lines)

    notes = [
        f"Figures are medians of {repeats} interleaved repeat(s) "
        "(each repeat runs every test against every proxy in turn).",
        "↑ higher is better, ↓ lower is better.",
    ]
    if ratio_epoll:
        notes.append(
            f"{EPOLL} is the same binary and config as l4mesh with "
            "`event_loop = \"epoll\"`: the ÷ column compares the event loops.")
    if ratio_direct or ratio_hap or ratio_epoll:
        notes.append(
            f"Ratios are {subject} ÷ other, so for ↑ rows above 1 means {subject} is "
            "better, for ↓ rows below 1 means it is better.")
    if ratio_hap:
        notes.append(
            "\"best HAProxy\" is, per metric, the better of the HAProxy variants "
            f"run ({', '.join(haproxies)}); the one used is named in the cell.")
    notes.append(
        "Proxy CPU per GB: user+system CPU seconds of all the proxy's processes "
        "(every thread, nginx master and workers) during both iperf3 runs, divided "
        "by the GB (1e9 bytes) the iperf3 server received.")
    notes.append(
        "CPU per keep-alive request: CPU time during the keep-alive wrk run divided by "
        "the requests wrk completed; \"proxy\" counts the proxy's processes as above, "
        "\"machine\" every busy CPU (/proc/stat: all but idle and iowait), so it holds "
        "wrk, the backend, the proxy and the kernel's network work they cause. Direct's "
        "machine figure is what the client and backend cost alone; on a machine that "
        "direct already keeps busy, direct's ÷ a proxy's machine figure bounds that "
        "proxy's keep-alive req/s ratio to direct.")
    err_lines = []
    for r in runs:
        if r["metric"].endswith("_errors") and r["value"]:
            err_lines.append(f"{r['proxy']} repeat {r['repeat']} {r['metric']}={r['value']:.0f}")
    if err_lines:
        notes.append("wrk socket errors / non-2xx responses: " + "; ".join(err_lines) + ".")
    notes.append(
        "Client, backends and proxies all share the same machine "
        f"({env.get('BENCH_META_NPROC')} CPUs, loopback only; nothing is pinned but "
        "l4mesh's workers, by its default cpu_affinity), so "
        "absolute figures are low and noisy; compare the columns, not the numbers "
        "with other machines.")

    meta = benchlib.run_meta("BENCH")
    meta.update({
        "versions": json.loads(env.get("BENCH_META_VERSIONS", "{}")),
        "settings": {
            "proxies": proxies,
            "repeats": repeats,
            "seconds": int(env["BENCH_META_SECONDS"]),
            "pings": int(env["BENCH_META_PINGS"]),
            "wrk": "-t1 -c50 --latency",
            "iperf3_streams": [1, 4],
        },
    })
    md = benchlib.md_head("l4mesh peer benchmark: latest run", meta) + [
        f"- Settings: {meta['settings']['seconds']} s per iperf3/wrk test, "
        f"{meta['settings']['pings']} ping-pongs, wrk -t1 -c50, "
        f"{repeats} repeat(s), proxies: {' '.join(proxies)}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        "",
        table,
        "",
    ] + [f"- {n}" for n in notes]
    with open(md_path, "w") as f:
        f.write("\n".join(md) + "\n")
    with open(json_path, "w") as f:
        json.dump({"meta": meta, "medians": medians, "ratios": ratios, "runs": runs},
                  f, indent=2, sort_keys=True)
        f.write("\n")
    print(table)
    print()
    print("\n".join(f"- {n}" for n in notes))


def main():
    benchlib.run(__doc__, dict(
        benchlib.COMMANDS,
        iperf=lambda args: parse_iperf(args[0]),
        wrk=lambda args: parse_wrk(args[0]),
        ping=lambda args: parse_ping(args[0]),
        busy=lambda args: print(f"{busy_seconds():.2f}"),
        report=lambda args: report(*args),
    ))


if __name__ == "__main__":
    main()
