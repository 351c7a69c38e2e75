#!/usr/bin/env python3
"""Helper for bench/reload.sh (python3 stdlib only).

Subcommands:
  gen DIR SERVICES PER_SERVICE BALANCE WEB_LISTEN A_ADDR B_ADDR [PING_LISTEN ECHO_ADDR]
                      write DIR/a.toml (listener web -> backend A), DIR/b.toml
                      (web -> B) and DIR/c.toml (a.toml with one endpoint's
                      weight changed in an unrelated service, for the churn);
                      SERVICES bulk services svc0000.. with PER_SERVICE
                      endpoints each (nothing listens there); with PING_LISTEN,
                      also a listener ping -> the echo server ECHO_ADDR
  rss ENTRY           "VmRSS_KB VmHWM_KB" of the l4mesh process in the tree
                      rooted at ENTRY ("PID:STARTTIME", see bench/helper.py)
  pid ENTRY           the PID of that l4mesh process
  ctlcpu ENTRY        CPU seconds (user+system) of that l4mesh's control
                      threads (l4mesh-control, l4mesh-watch): the reload work
  debounce FILE       the watcher's debounce in ms, read from the source
                      (src/control/watch.rs), or "?"
  report WORK MD JSON tables from the raw results in WORK; meta from env

Process handling (ident, alive, stop, cpu) is bench/helper.py's.
"""

import json
import math
import os
import re
import statistics
import sys


# ------------------------------------------------------------------ configs
def service_block(name, endpoints, balance=None, attempts=None):
    lines = [f"[services.{name}]"]
    if balance:
        lines.append(f'balance = "{balance}"')
    if attempts:
        lines.append(f"connect_attempts = {attempts}")
    eps = ", ".join(
        f'{{ addr = "{a}", weight = {w} }}' if w != 1 else f'{{ addr = "{a}" }}'
        for a, w in endpoints)
    lines.append(f"endpoints = [ {eps} ]")
    return "\n".join(lines) + "\n"


def config_text(n_services, per_service, balance, web_listen, web_backend,
                ping_listen, echo_addr, churn_weight):
    parts = ["[runtime]\nworkers = 2\ndrain_timeout = \"1s\"\n"]
    parts.append(f'[listeners.web]\nlisten = "{web_listen}"\nservice = "web"\n')
    if ping_listen:
        parts.append(f'[listeners.ping]\nlisten = "{ping_listen}"\nservice = "ping"\n')
    parts.append(service_block("web", [(web_backend, 1)], "round_robin", 1))
    if ping_listen:
        parts.append(service_block("ping", [(echo_addr, 1)], "round_robin", 1))
    churned = n_services // 2  # the service whose weight the churn flips
    for i in range(n_services):
        eps = []
        for j in range(per_service):
            addr = f"127.1.{i >> 8}.{i & 255}:{30000 + j}"
            w = churn_weight if (i == churned and j == 0) else 1
            eps.append((addr, w))
        parts.append(service_block(f"svc{i:04d}", eps, balance))
    return "\n".join(parts)


def gen(args):
    if len(args) not in (7, 9):
        sys.exit("gen needs DIR SERVICES PER_SERVICE BALANCE WEB_LISTEN A_ADDR B_ADDR "
                 "[PING_LISTEN ECHO_ADDR]")
    d, n, per, balance, web, a, b = args[:7]
    ping, echo = (args[7], args[8]) if len(args) == 9 else (None, None)
    n, per = int(n), int(per)
    variants = {"a": (a, 1), "b": (b, 1), "c": (a, 2)}
    for name, (backend, weight) in variants.items():
        text = config_text(n, per, balance, web, backend, ping, echo, weight)
        with open(os.path.join(d, f"{name}.toml"), "w") as f:
            f.write(text)
    if n == 0:  # no bulk service to churn: c.toml must still differ from a.toml
        with open(os.path.join(d, "c.toml"), "a") as f:
            f.write("# churn\n")


# ---------------------------------------------------------------- processes
def stat_fields(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    return data[:data.rindex(")")].split("(", 1)[1], data[data.rindex(")") + 2:].split()


def l4mesh_pid(entry):
    """The l4mesh process in the tree rooted at ENTRY (it runs under timeout/env)."""
    root, start = entry.split(":")
    f = stat_fields(root)
    if not f or f[1][19] != start:
        sys.exit(f"process {entry} is gone")
    children = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            g = stat_fields(name)
            if g:
                children.setdefault(int(g[1][1]), []).append(int(name))
    todo, seen = [int(root)], 0
    while todo and seen < 1000:
        pid = todo.pop()
        seen += 1
        g = stat_fields(pid)
        if g and g[0] == "l4mesh":
            return pid
        todo.extend(children.get(pid, []))
    sys.exit(f"no l4mesh process under {entry}")


def rss(entry):
    vals = {}
    with open(f"/proc/{l4mesh_pid(entry)}/status") as st:
        for line in st:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                vals[k] = int(v.split()[0])
    print(vals.get("VmRSS", 0), vals.get("VmHWM", 0))


def ctlcpu(entry):
    pid = l4mesh_pid(entry)
    total = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        g = stat_fields(f"{pid}/task/{tid}")
        if not g or g[0] not in ("l4mesh-control", "l4mesh-watch"):
            continue
        try:  # nanoseconds on the CPU, where the kernel keeps schedstats
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):  # clock ticks otherwise
            total += (int(g[1][11]) + int(g[1][12])) / os.sysconf("SC_CLK_TCK")
    print(f"{total:.4f}")


def debounce(path):
    try:
        with open(path) as f:
            m = re.search(r"DEBOUNCE:\s*Duration\s*=\s*Duration::from_millis\((\d+)\)", f.read())
    except OSError:
        m = None
    print(m.group(1) if m else "?")


# ------------------------------------------------------------------- report
def pct(values, p):
    """Nearest-rank percentile p (0..1), as the Rust tools compute it."""
    s = sorted(values)
    if not s:
        return None
    rank = math.ceil(p * len(s))
    return s[min(max(rank, 1), len(s)) - 1]


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, spec="{:.1f}"):
    return "n/a" if v is None else spec.format(v)


def read_jsonl(path):
    out = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    out.append(json.loads(line))
    return out


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_extra(path):
    extra = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                k, _, v = line.rstrip("\n").partition("\t")
                try:
                    extra[k] = float(v)
                except ValueError:
                    extra[k] = v
    return extra


def report(work, md_path, json_path):
    env = os.environ
    extra = read_extra(os.path.join(work, "extra.tsv"))
    pairs = int(env["RELOAD_META_PAIRS"])
    debounce_ms = env.get("RELOAD_META_DEBOUNCE", "?")
    sizes = [("small", "small: 1 service, 1 endpoint"),
             ("big", f"big: {env['RELOAD_META_SERVICES']} services × "
                     f"{env['RELOAD_META_PER_SERVICE']} endpoints (+ web, ping)")]

    # --- reload latency
    switch_rows, switch_summary, switch_raw = [], {}, {}
    for size, label in sizes:
        runs = read_jsonl(os.path.join(work, f"switch-{size}.jsonl"))
        switch_raw[size] = runs
        for mode in ("rename", "inplace"):
            rs = [r for r in runs if r["mode"] == mode]
            ok = [r["switch_ms"] for r in rs if r["switch_ms"] is not None]
            logged = [r["logged_ms"] for r in rs if r.get("logged_ms") is not None]
            after_log = [r["switch_ms"] - r["logged_ms"] for r in rs
                         if r["switch_ms"] is not None and r.get("logged_ms") is not None]
            rate = [r["probes"] / (r["switch_ms"] / 1e3) for r in rs
                    if r["switch_ms"]]
            s = {
                "runs": len(rs), "ok": len(ok),
                "median_ms": med(ok), "p90_ms": pct(ok, 0.9),
                "min_ms": min(ok) if ok else None, "max_ms": max(ok) if ok else None,
                "median_logged_ms": med(logged),
                "median_log_to_connection_ms": med(after_log),
                "median_write_ms": med([r["write_ms"] for r in rs]),
                "median_probes_per_s": med(rate),
                "errors": sum(r["errors"] for r in rs),
                "flaps": sum(r["flaps"] for r in rs),
                "rejected": sum(1 for r in rs if r.get("rejected")),
            }
            switch_summary[f"{size}/{mode}"] = s
            okc = f"{s['ok']}/{s['runs']}"
            switch_rows.append(
                f"| {label} | {'temp file + rename' if mode == 'rename' else 'in place'} "
                f"| {okc} | {fmt(s['median_ms'])} | {fmt(s['p90_ms'])} "
                f"| {fmt(s['min_ms'])} – {fmt(s['max_ms'])} "
                f"| {fmt(s['median_logged_ms'])} | {fmt(s['median_write_ms'], '{:.2f}')} "
                f"| {fmt(s['median_probes_per_s'], '{:,.0f}')} |")

    cost = {size: read_json(os.path.join(work, f"cost-{size}.json")) for size, _ in sizes}
    rss = {k: v for k, v in extra.items() if k.startswith("rss/") or k.startswith("hwm/")}

    # --- jitter
    jitter = []
    for i in range(1, pairs + 1):
        for kind in ("none", "reload"):
            j = read_json(os.path.join(work, f"jitter-{i}-{kind}.json"))
            if j is None:
                j = {"failed": True}
            j.update({"pair": i, "kind": kind,
                      "reloads": extra.get(f"jitter/{i}/{kind}/reloads"),
                      "rejected": extra.get(f"jitter/{i}/{kind}/rejected"),
                      "proxy_cpu_s": extra.get(f"jitter/{i}/{kind}/cpu_s")})
            jitter.append(j)

    def jmed(kind, key):
        return med([j.get(key) for j in jitter if j["kind"] == kind and not j.get("failed")])

    jsum = {kind: {k: jmed(kind, k) for k in
                   ("p50_us", "p99_us", "p999_us", "max_us", "count", "reloads", "writes",
                    "proxy_cpu_s", "over_1ms", "seconds")}
            for kind in ("none", "reload")}
    ratio = None
    if jsum["none"]["p99_us"] and jsum["reload"]["p99_us"]:
        ratio = jsum["reload"]["p99_us"] / jsum["none"]["p99_us"]
    cpu_per_reload = None
    cpu_deltas = []
    for i in range(1, pairs + 1):
        a = extra.get(f"jitter/{i}/none/cpu_s")
        b = extra.get(f"jitter/{i}/reload/cpu_s")
        n = extra.get(f"jitter/{i}/reload/reloads")
        if a is not None and b is not None and n:
            cpu_deltas.append((b - a) / n * 1e3)
    cpu_per_reload = med(cpu_deltas)

    jrows = []
    for j in jitter:
        if j.get("failed"):
            jrows.append(f"| {j['pair']} | {j['kind']} | failed | | | | | | |")
            continue
        jrows.append(
            f"| {j['pair']} | {'no reloads' if j['kind'] == 'none' else 'reloads'} "
            f"| {j['count']:,} | {j['p50_us']:.1f} | {j['p99_us']:.1f} | {j['p999_us']:.1f} "
            f"| {j['max_us']:,.0f} | {fmt(j['reloads'], '{:.0f}')}"
            f"{'' if j['kind'] == 'none' else ' / ' + str(j.get('writes', '?'))} "
            f"| {fmt(j['proxy_cpu_s'], '{:.2f}')} |")
    for kind in ("none", "reload"):
        s = jsum[kind]
        w = "" if kind == "none" else f" / {fmt(s['writes'], '{:.0f}')}"
        jrows.append(
            f"| **median** | {'no reloads' if kind == 'none' else 'reloads'} "
            f"| {fmt(s['count'], '{:,.0f}')} | **{fmt(s['p50_us'])}** | **{fmt(s['p99_us'])}** "
            f"| {fmt(s['p999_us'])} | {fmt(s['max_us'], '{:,.0f}')} "
            f"| {fmt(s['reloads'], '{:.0f}')}{w} | {fmt(s['proxy_cpu_s'], '{:.2f}')} |")

    meta = {
        "date": env.get("RELOAD_META_DATE"),
        "kernel": env.get("RELOAD_META_KERNEL"),
        "nproc": int(env.get("RELOAD_META_NPROC", "0")),
        "loadavg_at_start": env.get("RELOAD_META_LOADAVG"),
        "command": env.get("RELOAD_META_COMMAND"),
        "l4mesh": env.get("RELOAD_META_REV"),
        "debounce_ms": debounce_ms,
        "settings": {
            "services": int(env["RELOAD_META_SERVICES"]),
            "endpoints_per_service": int(env["RELOAD_META_PER_SERVICE"]),
            "balance": env.get("RELOAD_META_BALANCE"),
            "switch_rounds": int(env["RELOAD_META_REPEATS"]),
            "jitter_pairs": pairs,
            "jitter_seconds": int(env["RELOAD_META_SECONDS"]),
            "churn_interval_ms": int(env["RELOAD_META_INTERVAL"]),
            "settle_ms": int(env["RELOAD_META_SETTLE"]),
        },
        "config_bytes": {k[6:]: v for k, v in extra.items() if k.startswith("bytes/")},
        "startup_ms": {k[8:]: v for k, v in extra.items() if k.startswith("startup/")},
    }

    st = meta["settings"]
    md = [
        "# l4mesh config reload benchmark: latest run",
        "",
        f"- Date: {meta['date']}",
        f"- Kernel (`uname -r`): {meta['kernel']}",
        f"- CPUs (`nproc`): {meta['nproc']}",
        f"- Load average at start: {meta['loadavg_at_start']}",
        f"- Command: `{meta['command']}`",
        f"- l4mesh: {meta['l4mesh']}; file watch debounce in the source: {debounce_ms} ms",
        f"- Settings: {st['switch_rounds']} round(s) per config size (each round switches "
        f"once by rename and once in place), {pairs} jitter pair(s) of {st['jitter_seconds']} s, "
        f"churn every {st['churn_interval_ms']} ms, bulk services' balance "
        f"`{st['balance']}`, config sizes "
        + ", ".join(f"{k} {int(v):,} bytes" for k, v in meta["config_bytes"].items()),
        "",
        "## 1. Reload latency: file write → first new connection on the new backend",
        "",
        "| config | write | switches ok | median ms | p90 ms | min – max ms "
        "| median write → log line ms | median write ms | probes/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ] + switch_rows + [""]

    notes1 = [
        "The clock starts just before the `rename` of a fully written temp file "
        "(editor-style), or just before the truncating `open` of the in-place write "
        "(so the in-place figure includes writing the file; its duration is the "
        "\"write ms\" column). It stops when a new connection, opened in a tight loop "
        "(connect, read 1 byte, close), reads the new backend's tag.",
        "\"write → log line\" is when the `configuration reloaded` line appeared in "
        "l4mesh's log, polled in the same loop: it is written after the snapshot is "
        "published, so it can trail the first connection.",
        f"Every reload waits for the watcher's debounce ({debounce_ms} ms of quiet after "
        "the last inotify event in the directory) before the file is even read, so "
        f"~{debounce_ms} ms is the floor of every row.",
    ]
    tot_err = sum(s["errors"] for s in switch_summary.values())
    tot_flap = sum(s["flaps"] for s in switch_summary.values())
    tot_rej = sum(s["rejected"] for s in switch_summary.values())
    notes1.append(
        f"Probe errors: {tot_err}; connections that reached the old backend after one "
        f"had reached the new one (of {sum(s['ok'] for s in switch_summary.values()) * 20} "
        f"checked): {tot_flap}; reloads rejected: {tot_rej}.")
    md += [f"- {n}" for n in notes1] + [""]

    md += ["### Where a big reload's time goes (in-process, no proxy, medians)", "",
           "| step | small ms | big ms |", "|---|---|---|"]
    steps = [("read_ms", "read the file"), ("toml_ms", "TOML parse (serde, `FileConfig`)"),
             ("validate_ms", "validation (`Config::parse` − TOML parse)"),
             ("parse_validate_ms", "= `Config::parse` total"),
             ("build_from_previous_ms", "snapshot built from the previous one (as a reload)"),
             ("build_fresh_ms", "snapshot built from scratch (as at startup)"),
             ("drop_config_ms", "dropping the old `Config`"),
             ("drop_snapshot_ms", "dropping an old snapshot")]
    for c in cost.values():
        if c and "toml_ms" in c and "parse_validate_ms" in c:
            c["validate_ms"] = max(c["parse_validate_ms"] - c["toml_ms"], 0.0)
    for key, label in steps:
        cells = [fmt((cost[s] or {}).get(key), "{:.2f}") for s in ("small", "big")]
        md.append(f"| {label} | {cells[0]} | {cells[1]} |")
    md.append("")

    md += ["### Memory", "", "| l4mesh process | VmRSS MiB | VmHWM (peak) MiB |", "|---|---|---|"]
    for key, label in (("small/start", "small config, after start"),
                       ("small/end", "small config, after its reloads"),
                       ("big/start", "big config, after start"),
                       ("big/after-switch", "big config, after the latency switches"),
                       ("big/end", "big config, after the jitter runs")):
        r, h = rss.get(f"rss/{key}"), rss.get(f"hwm/{key}")
        if r is not None:
            md.append(f"| {label} | {r / 1024:.1f} | {fmt(h / 1024 if h else None)} |")
    if meta["startup_ms"]:
        md += ["", "Time from starting l4mesh to its listeners accepting (includes process "
               "start and polling at 50 ms): "
               + ", ".join(f"{k} {v:.0f} ms" for k, v in meta["startup_ms"].items()) + "."]
    md.append("")

    md += [
        "## 2. Reload jitter: 64 B ping-pong through l4mesh while the big config "
        f"is rewritten every {st['churn_interval_ms']} ms",
        "",
        "| pair | run | round trips | p50 µs | p99 µs | p99.9 µs | max µs "
        "| reloads applied / file writes | l4mesh CPU s |",
        "|---|---|---|---|---|---|---|---|---|",
    ] + jrows + [""]
    goal = "n/a"
    if ratio is not None:
        goal = (f"{ratio:.2f}× → {'within' if ratio <= 1.10 else 'NOT within'} the 10 % goal")
    notes2 = [
        f"p99 with reloads ÷ p99 without (medians of {pairs} pairs): **{goal}**.",
        "Runs are interleaved: no reloads, reloads, no reloads, …; each runs "
        f"{st['jitter_seconds']} s of sequential 64-byte round trips on one connection "
        "(as `pingpong client`, after 1,000 warm-up round trips) to the pingpong echo "
        "server behind listener `ping` of the big config.",
        "The churn replaces the file (temp file + rename) alternating two versions that "
        "differ in one endpoint's weight of a service no listener uses. \"Reloads "
        "applied\" counts the `configuration reloaded` log lines during the run.",
    ]
    if cpu_per_reload is not None:
        notes2.append(
            f"l4mesh CPU per applied reload (CPU of a reload run − CPU of the no-reload run "
            f"before it, ÷ reloads; median of pairs): {cpu_per_reload:.1f} ms.")
    notes2.append(
        "Client, backends and proxy share the machine "
        f"({meta['nproc']} CPUs, loopback only, no pinning): compare rows, not machines.")
    md += [f"- {n}" for n in notes2]

    with open(md_path, "w") as f:
        f.write("\n".join(md) + "\n")
    with open(json_path, "w") as f:
        json.dump({
            "meta": meta,
            "reload_latency": {"summary": switch_summary, "runs": switch_raw},
            "reload_cost_in_process": cost,
            "memory_kb": rss,
            "jitter": {"summary": jsum, "p99_ratio_reload_over_none": ratio,
                       "cpu_ms_per_reload": cpu_per_reload, "runs": jitter},
        }, f, indent=2, sort_keys=True)
        f.write("\n")
    print("\n".join(md))


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "gen":
        gen(args)
    elif cmd == "rss":
        rss(args[0])
    elif cmd == "pid":
        print(l4mesh_pid(args[0]))
    elif cmd == "ctlcpu":
        ctlcpu(args[0])
    elif cmd == "debounce":
        debounce(args[0])
    elif cmd == "report":
        report(*args)
    else:
        sys.exit(f"unknown subcommand {cmd!r}\n{__doc__}")


if __name__ == "__main__":
    main()
