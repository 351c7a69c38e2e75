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
  othercpu OUT B0 B1 W0 W1 C0 C1 E0 E1 TCK NCPU
                      % of the machine's CPU used by others during a jitter
                      run: busy ticks B0..B1 over wall time W0..W1, minus the
                      client's own cpu_ticks (in OUT), l4mesh's CPU seconds
                      C0..C1 and the echo server's E0..E1
  debounce FILE       the watcher's debounce in ms, read from the source
                      (src/discovery/file_watch.rs), or "?"
  report WORK MD JSON tables from the raw results in WORK; meta from env

Process handling (ident, alive, stop, cpu) is bench/helper.py's; the /proc
reading under all of them is bench/benchlib.py's.
"""

import json
import math
import os
import re
import statistics
import sys

import benchlib  # bench/benchlib.py: the /proc helpers, the dispatch, the report head


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
def l4mesh_pid(entry):
    """The l4mesh process in the tree rooted at ENTRY (it runs under timeout/env)."""
    return benchlib.find_in_tree(entry, "l4mesh")


def rss(entry):
    vals = benchlib.status_kb(l4mesh_pid(entry), ("VmRSS", "VmHWM"))
    print(vals.get("VmRSS", 0), vals.get("VmHWM", 0))


def ctlcpu(entry):
    total = benchlib.thread_cpu_seconds(l4mesh_pid(entry), ("l4mesh-control", "l4mesh-watch"))
    print(f"{total:.4f}")


def othercpu(args):
    out, b0, b1, w0, w1, c0, c1, e0, e1, tck, ncpu = args
    tck = float(tck)
    with open(out) as f:
        own = (json.load(f).get("cpu_ticks") or 0) / tck
    ours = own + float(c1) - float(c0) + float(e1) - float(e0)
    busy = (int(b1) - int(b0)) / tck
    wall = float(w1) - float(w0)
    print(f"{max(busy - ours, 0.0) / (wall * int(ncpu)) * 100:.1f}")


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


# A jitter run during which the rest of the machine used more than this % of
# its CPU is flagged as disturbed.
QUIET_PCT = 10.0

KINDS = (("none", "no reloads"),
         ("files", "file rewrites"),
         ("hup", "rewrites + SIGHUP"))


def switch_summary_of(runs, mode):
    rs = [r for r in runs if r["mode"] == mode]
    ok = [r["switch_ms"] for r in rs if r["switch_ms"] is not None]
    logged = [r["logged_ms"] for r in rs if r.get("logged_ms") is not None]
    after_write = [r["switch_ms"] - r["write_ms"] for r in rs if r["switch_ms"] is not None]
    rate = [r["probes"] / (r["switch_ms"] / 1e3) for r in rs if r["switch_ms"]]
    return {
        "runs": len(rs), "ok": len(ok),
        "median_ms": med(ok), "p90_ms": pct(ok, 0.9),
        "min_ms": min(ok) if ok else None, "max_ms": max(ok) if ok else None,
        "median_after_write_ms": med(after_write),
        "p90_after_write_ms": pct(after_write, 0.9),
        "median_logged_ms": med(logged),
        "median_write_ms": med([r["write_ms"] for r in rs]),
        "max_write_ms": max([r["write_ms"] for r in rs], default=None),
        "median_probes_per_s": med(rate),
        "errors": sum(r["errors"] for r in rs),
        "flaps": sum(r["flaps"] for r in rs),
        "confirmed": 20 * len(ok),
        "rejected": sum(1 for r in rs if r.get("rejected")),
    }


def report(work, md_path, json_path):
    env = os.environ
    extra = read_extra(os.path.join(work, "extra.tsv"))
    pairs = int(env["RELOAD_META_PAIRS"])
    debounce_ms = env.get("RELOAD_META_DEBOUNCE", "?")
    big_label = (f"big: {int(env['RELOAD_META_SERVICES']):,} services × "
                 f"{env['RELOAD_META_PER_SERVICE']} endpoints")
    sets = [("small", "small: 1 service, 1 endpoint"),
            ("big", big_label),
            ("big-paced", big_label + ", probes paced 1/ms")]

    # --- reload latency
    switch_rows, switch_summary, switch_raw = [], {}, {}
    for name, label in sets:
        runs = read_jsonl(os.path.join(work, f"switch-{name}.jsonl"))
        if not runs:
            continue
        switch_raw[name] = runs
        for mode in ("rename", "inplace"):
            s = switch_summary_of(runs, mode)
            switch_summary[f"{name}/{mode}"] = s
            write = "temp file + rename" if mode == "rename" else "in place"
            busy = extra.get(f"busy_at_start/switch-{name}")
            s["busy_at_start_pct"] = busy
            flag = f" ⚠ busy {busy:.0f} %" if busy is not None else ""
            switch_rows.append(
                f"| {label}{flag} | {write} | {s['ok']}/{s['runs']} "
                f"| **{fmt(s['median_ms'])}** | **{fmt(s['p90_ms'])}** "
                f"| {fmt(s['min_ms'])} – {fmt(s['max_ms'])} "
                f"| {fmt(s['median_after_write_ms'])} / {fmt(s['p90_after_write_ms'])} "
                f"| {fmt(s['median_logged_ms'])} "
                f"| {fmt(s['median_write_ms'], '{:.2f}')} ({fmt(s['max_write_ms'], '{:.1f}')}) "
                f"| {fmt(s['median_probes_per_s'], '{:,.0f}')} |")

    cost = {size: read_json(os.path.join(work, f"cost-{size}.json")) for size in ("small", "big")}
    for c in cost.values():
        if c and "toml_ms" in c and "parse_validate_ms" in c:
            c["validate_ms"] = max(c["parse_validate_ms"] - c["toml_ms"], 0.0)
    rss = {k: v for k, v in extra.items() if k.startswith("rss/") or k.startswith("hwm/")}

    # --- jitter
    jitter = []
    for i in range(1, pairs + 1):
        for kind, _ in KINDS:
            j = read_json(os.path.join(work, f"jitter-{i}-{kind}.json"))
            if j is None:
                j = {"failed": True}
            for key in ("reloads", "rejected", "cpu_s", "ctl_cpu_s", "other_cpu_pct"):
                j[key if key != "cpu_s" else "proxy_cpu_s"] = extra.get(f"jitter/{i}/{kind}/{key}")
            j.update({"round": i, "kind": kind})
            jitter.append(j)

    def jmed(kind, key):
        return med([j.get(key) for j in jitter if j["kind"] == kind and not j.get("failed")])

    keys = ("count", "p50_us", "p99_us", "p999_us", "max_us", "over_1ms", "reloads", "writes",
            "proxy_cpu_s", "ctl_cpu_s", "other_cpu_pct")
    jsum = {kind: {k: jmed(kind, k) for k in keys} for kind, _ in KINDS}
    ratios = {}
    for kind in ("files", "hup"):
        if jsum["none"]["p99_us"] and jsum[kind]["p99_us"]:
            ratios[kind] = jsum[kind]["p99_us"] / jsum["none"]["p99_us"]
    # Per round: p99 of the run ÷ p99 of the no-reload run just before it
    # (paired, so slow drifts of the machine's load cancel), and the same
    # over the rounds where neither run shared the machine with much else.
    by = {(j["round"], j["kind"]): j for j in jitter if not j.get("failed")}
    paired, paired_quiet = {}, {}
    for kind in ("files", "hup"):
        rs, qs = [], []
        for i in range(1, pairs + 1):
            a, b = by.get((i, "none")), by.get((i, kind))
            if a and b and a.get("p99_us"):
                r = b["p99_us"] / a["p99_us"]
                rs.append(r)
                loads = [x.get("other_cpu_pct") for x in (a, b)]
                if all(v is not None and v <= QUIET_PCT for v in loads):
                    qs.append(r)
        paired[kind] = {"median": med(rs), "rounds": len(rs), "values": rs}
        paired_quiet[kind] = {"median": med(qs), "rounds": len(qs), "values": qs}
    ctl_ms_per_reload = med([
        (j["ctl_cpu_s"] - jn["ctl_cpu_s"]) / j["reloads"] * 1e3
        for j in jitter if j["kind"] == "hup" and j.get("reloads") and j.get("ctl_cpu_s") is not None
        for jn in jitter if jn["kind"] == "none" and jn["round"] == j["round"]
        and jn.get("ctl_cpu_s") is not None])

    label_of = dict(KINDS)

    def jrow(first, kind, j, bold=False):
        b = "**" if bold else ""
        if j.get("failed"):
            return f"| {first} | {label_of[kind]} | failed | | | | | | | | |"
        rel = fmt(j.get("reloads"), "{:,.0f}")
        if kind != "none":
            rel += f" / {fmt(j.get('writes'), '{:,.0f}')}"
        return (f"| {first} | {label_of[kind]} | {fmt(j.get('count'), '{:,.0f}')} "
                f"| {b}{fmt(j.get('p50_us'))}{b} | {b}{fmt(j.get('p99_us'))}{b} "
                f"| {fmt(j.get('p999_us'))} | {fmt(j.get('max_us'), '{:,.0f}')} "
                f"| {fmt(j.get('over_1ms'), '{:,.0f}')} | {rel} "
                f"| {fmt(j.get('ctl_cpu_s'), '{:.3f}')} "
                f"| {fmt(j.get('other_cpu_pct'), '{:.0f}')}"
                f"{' ⚠' if (j.get('other_cpu_pct') or 0) > QUIET_PCT else ''} |")

    jrows = [jrow(j["round"], j["kind"], j) for j in jitter]
    jrows += [jrow("**median**", kind, jsum[kind], bold=True) for kind, _ in KINDS]

    meta = benchlib.run_meta("RELOAD")
    meta.update({
        "l4mesh": env.get("RELOAD_META_REV"),
        "debounce_ms": debounce_ms,
        "settings": {
            "services": int(env["RELOAD_META_SERVICES"]),
            "endpoints_per_service": int(env["RELOAD_META_PER_SERVICE"]),
            "balance": env.get("RELOAD_META_BALANCE"),
            "switch_rounds": int(env["RELOAD_META_REPEATS"]),
            "paced_rounds": int(env.get("RELOAD_META_PACED", "0")),
            "jitter_rounds": pairs,
            "jitter_seconds": int(env["RELOAD_META_SECONDS"]),
            "churn_interval_ms": int(env["RELOAD_META_INTERVAL"]),
            "settle_ms": int(env["RELOAD_META_SETTLE"]),
        },
        "config_bytes": {k[6:]: v for k, v in extra.items() if k.startswith("bytes/")},
        "startup_ms": {k[8:]: v for k, v in extra.items() if k.startswith("startup/")},
    })
    st = meta["settings"]

    md = benchlib.md_head("l4mesh config reload benchmark: latest run", meta) + [
        f"- l4mesh: {meta['l4mesh']}; file-watch debounce in the source: {debounce_ms} ms",
        f"- Settings: {st['switch_rounds']} round(s) per config size, each switching once by "
        f"rename and once in place ({st['paced_rounds']} more paced rounds on the big config); "
        f"{pairs} jitter round(s) of 3 × {st['jitter_seconds']} s; writes every "
        f"{st['churn_interval_ms']} ms; bulk services' balance `{st['balance']}`; config files "
        + ", ".join(f"{k} {int(v):,} bytes" for k, v in meta["config_bytes"].items()),
        "",
        "## 1. Reload latency: file write → first new connection on the new backend",
        "",
        "| config | write | switches ok | median ms | p90 ms | min – max ms "
        "| after the write: median / p90 ms | write → log line, median ms "
        "| write ms: median (max) | probes/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ] + switch_rows + [""]
    tot = {k: sum(s[k] for s in switch_summary.values())
           for k in ("errors", "flaps", "confirmed", "rejected")}
    any_busy = any(s.get("busy_at_start_pct") is not None for s in switch_summary.values())
    notes1 = [
        "The clock starts just before the `rename` of a fully written temp file "
        "(editor-style), or just before the truncating `open` of the in-place write, whose "
        "write-and-close time (\"write ms\") is therefore included; \"after the write\" "
        "subtracts it. The clock stops when a new connection, opened in a tight loop "
        "(connect, read 1 byte, close with RST), reads the new backend's tag.",
        "\"write → log line\": when l4mesh's `configuration reloaded` line appeared in its "
        "log (polled in the same loop). It is logged right after the new snapshot is "
        "published, so it matches the connection figure to within a probe.",
        f"Every reload first waits for the watcher's debounce ({debounce_ms} ms without "
        "inotify events in the directory), so that is the floor of every row.",
        f"Checks: probe errors {tot['errors']}; connections that reached the old backend "
        f"after one had reached the new one: {tot['flaps']} of {tot['confirmed']} checked; "
        f"reloads rejected: {tot['rejected']}.",
    ]
    if any_busy:
        notes1.append(
            "⚠ busy N %: the machine was still N % busy (others' work; builds do not take "
            "the benchmark lock) when these switches started, after waiting for it to quiet "
            "down: such rows are slower than l4mesh alone would be.")
    md += [f"- {n}" for n in notes1] + [""]

    md += ["### Where a reload's time goes (in-process, no proxy, medians)", "",
           "| step | small ms | big ms |", "|---|---|---|"]
    steps = [("read_ms", "read the file"),
             ("toml_ms", "TOML parse into `FileConfig` (serde)"),
             ("validate_ms", "validation (`Config::parse` − TOML parse)"),
             ("parse_validate_ms", "`Config::parse` (both)"),
             ("build_from_previous_ms", "snapshot built from the previous one (a reload)"),
             ("build_fresh_ms", "snapshot built from scratch (startup)"),
             ("drop_config_ms", "dropping the old `Config`"),
             ("drop_snapshot_ms", "dropping an old snapshot")]
    for key, label in steps:
        cells = [fmt((cost[s] or {}).get(key), "{:.2f}") for s in ("small", "big")]
        md.append(f"| {label} | {cells[0]} | {cells[1]} |")
    md.append("")

    md += ["### Memory of the l4mesh process", "",
           "| when | VmRSS MiB | VmHWM (peak) MiB |", "|---|---|---|"]
    for key, label in (("small/start", "small config, after start"),
                       ("small/end", "small config, after its switches"),
                       ("big/start", "big config, after start"),
                       ("big/after-switch", "big config, after the latency switches"),
                       ("big/end", "big config, after the jitter runs")):
        r, h = rss.get(f"rss/{key}"), rss.get(f"hwm/{key}")
        if r is not None:
            md.append(f"| {label} | {r / 1024:.1f} | {fmt(h / 1024 if h else None)} |")
    if meta["startup_ms"]:
        md += ["", "Start of l4mesh to its listeners accepting (process start included, "
               "polled every 50 ms): "
               + ", ".join(f"{k} {v:.0f} ms" for k, v in meta["startup_ms"].items()) + "."]
    md.append("")

    md += [
        "## 2. Reload jitter: 64 B ping-pong through l4mesh, big config",
        "",
        "| round | file activity | round trips | p50 µs | p99 µs | p99.9 µs | max µs "
        "| > 1 ms | reloads applied / writes | control threads' CPU s | other load % |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ] + jrows + [""]

    def verdict(kind):
        r = ratios.get(kind)
        if r is None:
            return "n/a"
        return f"{r:.2f}× ({'within' if r <= 1.10 else 'NOT within'} the 10 % goal)"

    def pv(d):
        if d["median"] is None:
            return "n/a (no such round)"
        return (f"{d['median']:.2f}× over {d['rounds']} round(s) "
                f"({', '.join(f'{v:.2f}' for v in d['values'])})")

    notes2 = [
        f"p99 ÷ no-reload p99, medians of {pairs} rounds: file rewrites "
        f"**{verdict('files')}**, rewrites + SIGHUP **{verdict('hup')}**.",
        "Paired per round (p99 ÷ p99 of the no-reload run of the same round), median: "
        f"file rewrites {pv(paired['files'])}; rewrites + SIGHUP {pv(paired['hup'])}. "
        f"Only rounds where neither run had other load above {QUIET_PCT:.0f} %: "
        f"file rewrites {pv(paired_quiet['files'])}; rewrites + SIGHUP "
        f"{pv(paired_quiet['hup'])}.",
        "\"other load %\": CPU the rest of the machine used during the run (busy CPU from "
        "`/proc/stat` minus l4mesh, the echo server and the client), as a share of all "
        f"CPUs; ⚠ marks runs above {QUIET_PCT:.0f} %, whose latencies say more about the "
        "neighbours than about l4mesh.",
        f"Each run: {st['jitter_seconds']} s of sequential 64-byte round trips on one "
        "connection (as `pingpong client`, after 1,000 warm-up round trips) to the pingpong "
        "echo server behind listener `ping`. Runs are interleaved round by round: no "
        "reloads, file rewrites, rewrites + SIGHUP.",
        f"\"file rewrites\": the file is replaced (temp file + rename) every "
        f"{st['churn_interval_ms']} ms, alternating two versions that differ in one "
        "endpoint's weight in a service no listener uses; l4mesh reloads whenever its "
        "file watch decides to. \"rewrites + SIGHUP\": the same, plus a SIGHUP right after "
        "each write, which reloads at once (bypassing the debounce), so every write is "
        "applied. \"reloads applied\" counts `configuration reloaded` log lines (a SIGHUP "
        "reload is applied even when the watch already loaded the same content, so this "
        "can exceed the writes by one or two).",
    ]
    if ctl_ms_per_reload is not None:
        notes2.append(
            "CPU per applied reload on l4mesh's control threads (`l4mesh-control`, "
            "`l4mesh-watch`; hup run − no-reload run of the same round, ÷ reloads; median): "
            f"{ctl_ms_per_reload:.1f} ms.")
    notes2.append(
        "Client, backends and proxy share the machine "
        f"({meta['nproc']} CPUs, loopback only, no pinning): compare rows, not machines.")
    if extra.get("lock_lost"):
        notes2.append("⚠ The benchmark lock was lost during the run (someone removed or "
                      "took it): another benchmark may have run alongside.")
    if extra.get("busy_waits_given_up"):
        notes2.append(f"⚠ {int(extra['busy_waits_given_up'])} measurement(s) started while "
                      "the machine was still busy after the quiet wait.")
    md += [f"- {n}" for n in notes2]

    with open(md_path, "w") as f:
        f.write("\n".join(md) + "\n")
    with open(json_path, "w") as f:
        json.dump({
            "meta": meta,
            "reload_latency": {"summary": switch_summary, "runs": switch_raw},
            "reload_cost_in_process_ms": cost,
            "memory_kb": rss,
            "jitter": {"summary": jsum, "p99_ratio_over_none": ratios,
                       "p99_ratio_paired": paired, "p99_ratio_paired_quiet": paired_quiet,
                       "quiet_threshold_pct": QUIET_PCT,
                       "control_cpu_ms_per_reload": ctl_ms_per_reload, "runs": jitter},
        }, f, indent=2, sort_keys=True)
        f.write("\n")
    print("\n".join(md))


def main():
    benchlib.run(__doc__, {
        "gen": gen,
        "rss": lambda args: rss(args[0]),
        "pid": lambda args: print(l4mesh_pid(args[0])),
        "ctlcpu": lambda args: ctlcpu(args[0]),
        "othercpu": othercpu,
        "debounce": lambda args: debounce(args[0]),
        "report": lambda args: report(*args),
    })


if __name__ == "__main__":
    main()
