#!/usr/bin/env bash
# Where the single-stream iperf3 time goes through l4mesh: how long the busy
# worker, the iperf3 server and the iperf3 client each ran and each waited
# for a CPU (the run queue), read from /proc/*/task/*/schedstat during the
# steady part of each run. On a 2-core machine three busy threads share two
# cores, so this is a placement question more than a CPU one: it shows which
# threads time-share a core while the other core idles.
#
#   bash bench/sched_split.sh
#
# Environment (all optional):
#   SCHED_RUNS        iperf3 runs, one after the other (default 5)
#   SCHED_SECONDS     length of each run; the middle SCHED_SECONDS - 1 s are
#                     measured (default 5)
#   SCHED_AFFINITY    l4mesh's runtime.cpu_affinity (default "auto")
#   SCHED_PORT_BASE   first of 2 loopback ports used (default 24300)
#   SCHED_LOCK, SCHED_LOCK_WAIT  the benchmark lock, as in bench/run.sh
#
# Writes bench/results/sched-split.md. Needs iperf3 (installed by
# bench/run.sh) and the kernel's schedstats (/proc/PID/schedstat).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HELPER="$ROOT/bench/helper.py"
ERR_PREFIX=sched_split
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

RUNS=${SCHED_RUNS:-5}
SECS=${SCHED_SECONDS:-5}
AFFINITY=${SCHED_AFFINITY:-auto}
PORT_BASE=${SCHED_PORT_BASE:-24300}
PORT_ENV=SCHED_PORT_BASE
LOCK=${SCHED_LOCK-$DEFAULT_LOCK}
LOCK_WAIT=${SCHED_LOCK_WAIT:-1500}
LIFETIME=$((RUNS * (SECS + 30) + 120))
WAIT_LISTEN_SECS=15

on_exit() { stop_all l4mesh; }

# Every thread of process $1 as "NAME RUN_NS WAIT_NS SLICES", names made
# one word.
threads() {
  local t
  for t in /proc/"$1"/task/*; do
    printf '%s %s\n' "$(tr ' ' _ <"$t/comm")" "$(cat "$t/schedstat")"
  done 2>/dev/null
}

main() {
  require_positive RUNS:SCHED_RUNS SECS:SCHED_SECONDS LOCK_WAIT:SCHED_LOCK_WAIT
  ((SECS >= 2)) || die "SCHED_SECONDS must be at least 2"
  require_port_range 2
  [[ -r /proc/self/schedstat ]] || die "this kernel has no schedstats (/proc/PID/schedstat)"
  command -v iperf3 >/dev/null || die "iperf3 not found (bash bench/run.sh installs it)"
  begin_run l4mesh-sched
  (cd "$ROOT" && cargo build --release --quiet --bin l4mesh)
  acquire_lock
  local backend=$PORT_BASE front=$((PORT_BASE + 1)) r out
  require_free_ports "$backend" "$front"
  start_server iperf3-backend iperf3 -s -B 127.0.0.1 -p "$backend"
  wait_listening iperf3-backend "$backend"
  printf '[runtime]\nworkers = 2\ncpu_affinity = "%s"\n[listeners.a]\nlisten = "127.0.0.1:%s"\nservice = "a"\n[services.a]\nendpoints = [ { addr = "127.0.0.1:%s" } ]\n' \
    "$AFFINITY" "$front" "$backend" >"$WORK/l4mesh.toml"
  start_server l4mesh env RUST_LOG=warn "$ROOT/target/release/l4mesh" -c "$WORK/l4mesh.toml"
  wait_listening l4mesh "$front"
  local proxy server
  proxy=$(pgrep -P "${ENTRY[l4mesh]%%:*}" | head -1)   # under timeout(1)
  server=$(pgrep -P "${ENTRY[iperf3-backend]%%:*}" | head -1)
  : >"$WORK/samples"
  for ((r = 1; r <= RUNS; r++)); do
    out="$WORK/logs/iperf-$r.json"
    iperf3 -c 127.0.0.1 -p "$front" -t "$SECS" -J >"$out" &
    local client=$!
    sleep 0.5
    { threads "$proxy"; threads "$server"; threads "$client" | sed 's/^[^ ]*/client/'; } >"$WORK/before"
    sleep $((SECS - 1))
    { threads "$proxy"; threads "$server"; threads "$client" | sed 's/^[^ ]*/client/'; } >"$WORK/after"
    wait "$client" || die "iperf3 failed (see $out)"
    python3 - "$WORK/before" "$WORK/after" "$out" "$((SECS - 1))" "$r" >>"$WORK/samples" <<'EOF'
import json, sys
before, after, out, secs, run = sys.argv[1:]
def read(path):
    rows = {}
    for line in open(path):
        name, *vals = line.split()
        old = rows.get(name, [0, 0, 0])
        rows[name] = [a + int(b) for a, b in zip(old, vals)]
    return rows
a, b = read(before), read(after)
gbps = json.load(open(out))["end"]["sum_received"]["bits_per_second"] / 1e9
for name in b:
    d = [y - x for x, y in zip(a.get(name, [0, 0, 0]), b[name])]
    if d[0] > 0.05e9 * float(secs):  # threads that ran at least 5%
        print(run, f"{gbps:.2f}", name, f"{100 * d[0] / (1e9 * float(secs)):.0f}",
              f"{100 * d[1] / (1e9 * float(secs)):.0f}")
EOF
    log "run $r/$RUNS done"
  done
  mkdir -p "$ROOT/bench/results"
  python3 - "$WORK/samples" "$AFFINITY" "$RUNS" "$SECS" >"$ROOT/bench/results/sched-split.md" <<'EOF'
import statistics, subprocess, sys, time
samples, affinity, runs, secs = sys.argv[1:]
rows = [l.split() for l in open(samples)]
rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print("# Single-stream iperf3 through l4mesh: who runs, who waits for a CPU\n")
print(f"- Date: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, l4mesh {rev}, "
      f"`cpu_affinity = \"{affinity}\"`, {runs} runs of {secs} s, "
      f"the middle {int(secs) - 1} s of each measured")
print("- Command: `bash bench/sched_split.sh`")
print("- run = share of the time on a CPU, wait = share of the time runnable but "
      "waiting for one (/proc/PID/task/TID/schedstat); a thread at run + wait near "
      "100% is CPU-starved, and two such threads time-share one core.\n")
print("| run | Gbit/s | thread | run % | wait % |\n|---|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(r) + " |")
print("\nMedians:\n\n| thread | run % | wait % |\n|---|---|---|")
# The busy worker is whichever one the kernel gave the connection.
group = lambda name: "l4mesh worker" if name.startswith("l4mesh-w") else name
names = sorted({group(r[2]) for r in rows}, key=lambda n: (n != "client", n))
for n in names:
    run = [float(r[3]) for r in rows if group(r[2]) == n]
    wait = [float(r[4]) for r in rows if group(r[2]) == n]
    print(f"| {n} | {statistics.median(run):.0f} | {statistics.median(wait):.0f} |")
per_run = {r[0]: float(r[1]) for r in rows}
print(f"\nThroughput median: {statistics.median(per_run.values()):.2f} Gbit/s")
EOF
  log "wrote bench/results/sched-split.md"
  cat "$ROOT/bench/results/sched-split.md"
}

main "$@"
