#!/usr/bin/env bash
# Config reload benchmark, on loopback:
#
#   bash bench/reload.sh
#
# 1. Reload latency: how long from a write of the config file (a temp file
#    renamed over it, as an editor saves; and, separately, an in-place write)
#    until the first new connection reaches the new endpoint, for a small
#    config (1 service) and a big one (RELOAD_SERVICES services of
#    RELOAD_ENDPOINTS endpoints each). The listener's service is switched
#    between two tagged backends, A and B; examples/reload_probe opens
#    connections in a tight loop until one reads the new tag. Also: the
#    in-process cost of each reload step (parse, validation, snapshot build)
#    and l4mesh's memory with each config.
# 2. Reload jitter: 64-byte ping-pong round trips through l4mesh (big config)
#    while the file is rewritten every RELOAD_INTERVAL_MS ("files": what the
#    file watch makes of it), and while it is rewritten at that pace with a
#    SIGHUP after each write ("hup": every write is reloaded), against the
#    same without rewrites ("none"), interleaved: none, files, hup, none, ...
#
# Environment (all optional):
#   RELOAD_REPEATS       rounds per config size; each switches once by rename
#                        and once in place (default 12)
#   RELOAD_SERVICES      bulk services in the big config (default 1000)
#   RELOAD_ENDPOINTS     endpoints per bulk service (default 10)
#   RELOAD_BALANCE       the bulk services' balance policy (default round_robin)
#   RELOAD_PAIRS         jitter rounds, each one run of none, files, hup (default 4)
#   RELOAD_SECONDS       duration of each jitter run (default 8)
#   RELOAD_INTERVAL_MS   churn: ms between file rewrites (default 100)
#   RELOAD_SETTLE_MS     pause after each switch (default 300)
#   RELOAD_PACED_ROUNDS  extra big-config rounds with the probes paced at one
#                        per ms, to see what the tight loop costs the reload
#                        (default 6; 0 for none)
#   RELOAD_COST_RUNS     in-process cost runs per size (default 10)
#   RELOAD_PORT_BASE     first loopback port used; 8 ports from there (default 24300)
#   RELOAD_LOCK          lock file shared with other benchmarks, waited for,
#                        created and removed around the measurements; "" for
#                        none (default /tmp/l4mesh-bench.lock)
#   RELOAD_LOCK_WAIT     seconds to wait for the lock before giving up (default 1500)
#   RELOAD_QUIET_WAIT    before each measurement, wait up to this many seconds
#                        for the machine to be quiet (under 10 % CPU busy over
#                        a second); 0 to skip (default 10)
#
# Needs python3, ss, timeout and cargo; installs nothing. Builds l4mesh and
# examples pingpong and reload_probe (cargo build --release), runs every
# server under `timeout` with its own config in a temp dir, stops them by PID
# (bench/lib.sh, bench/helper.py), and writes bench/results/reload.md and
# reload.json.
# Logs and configs stay in the temp dir.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HELPER="$ROOT/bench/helper.py"          # ident, alive, stop, cpu
RHELPER="$ROOT/bench/reload_helper.py"  # configs, rss, report
ERR_PREFIX="reload bench"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

# The command line as typed, for the report (RELOAD_* variables that were set).
COMMAND=$(typed_command RELOAD bench/reload.sh)

REPEATS=${RELOAD_REPEATS:-12}
SERVICES=${RELOAD_SERVICES:-1000}
PER_SERVICE=${RELOAD_ENDPOINTS:-10}
BALANCE=${RELOAD_BALANCE:-round_robin}
PAIRS=${RELOAD_PAIRS:-4}
SECS=${RELOAD_SECONDS:-8}
INTERVAL=${RELOAD_INTERVAL_MS:-100}
SETTLE=${RELOAD_SETTLE_MS:-300}
COST_RUNS=${RELOAD_COST_RUNS:-10}
PACED=${RELOAD_PACED_ROUNDS:-6}
PORT_BASE=${RELOAD_PORT_BASE:-24300}
PORT_ENV=RELOAD_PORT_BASE
LOCK=${RELOAD_LOCK-$DEFAULT_LOCK}
LOCK_WAIT=${RELOAD_LOCK_WAIT:-1500}
QUIET_WAIT=${RELOAD_QUIET_WAIT:-10}
# Servers run under `timeout` with this lifetime, a safety net should this
# script be killed before it can stop them.
LIFETIME=1800
WAIT_LISTEN_SECS=30

BUSY_GIVEUPS=0     # quiet waits that ran out

check_settings() {
  require_positive REPEATS:RELOAD_REPEATS SERVICES:RELOAD_SERVICES PER_SERVICE:RELOAD_ENDPOINTS \
    PAIRS:RELOAD_PAIRS SECS:RELOAD_SECONDS INTERVAL:RELOAD_INTERVAL_MS \
    SETTLE:RELOAD_SETTLE_MS COST_RUNS:RELOAD_COST_RUNS PORT_BASE:RELOAD_PORT_BASE \
    LOCK_WAIT:RELOAD_LOCK_WAIT
  [[ $PACED =~ ^[0-9]+$ ]] || die "RELOAD_PACED_ROUNDS must be a number, got '$PACED'"
  [[ $QUIET_WAIT =~ ^[0-9]+$ ]] || die "RELOAD_QUIET_WAIT must be a number, got '$QUIET_WAIT'"
  require_port_range 8
  [[ $BALANCE =~ ^(round_robin|random|least_conn|p2c|source_hash)$ ]] ||
    die "RELOAD_BALANCE must be round_robin, random, least_conn, p2c or source_hash"
}

# Wait (up to RELOAD_QUIET_WAIT seconds) until the machine's CPUs were less
# than 10 % busy over one second: other users of this shared machine (builds
# do not take the benchmark lock) would otherwise be measured too. $1 names
# the measurement, to flag it in the report if the wait runs out.
wait_quiet() {
  ((QUIET_WAIT > 0)) || return 0
  local what=$1
  local t b0 b1 pct=0 tck ncpu
  tck=$(getconf CLK_TCK) ncpu=$(nproc)
  for ((t = 0; t < QUIET_WAIT; t++)); do
    b0=$(busy_ticks)
    sleep 1
    b1=$(busy_ticks)
    pct=$(((b1 - b0) * 100 / (tck * ncpu)))
    ((pct < 10)) && return 0
  done
  log "  the machine is still busy (${pct} % CPU over the last second) after ${QUIET_WAIT}s; measuring anyway"
  BUSY_GIVEUPS=$((BUSY_GIVEUPS + 1))
  record busy_waits_given_up "$BUSY_GIVEUPS"
  record "busy_at_start/$what" "$pct"
}

# On exit (bench/lib.sh's cleanup, before the lock is released).
on_exit() { stop_all; }

# One raw value for the report.
record() { printf '%s\t%s\n' "$1" "$2" >>"$WORK/extra.tsv"; }

record_rss() {
  local size=$1 when=$2 r
  r=$(python3 "$RHELPER" rss "${ENTRY[l4mesh-$size]}") || { log "warning: no RSS for $size"; return 0; }
  record "rss/$size/$when" "${r% *}"
  record "hwm/$size/$when" "${r#* }"
  log "  l4mesh RSS ($size config, $when): $((${r% *} / 1024)) MiB (peak $((${r#* } / 1024)) MiB)"
}

reloads_so_far() { grep -c 'configuration reloaded' "$WORK/logs/l4mesh-$1.log" || true; }
rejects_so_far() { grep -c 'reload rejected' "$WORK/logs/l4mesh-$1.log" || true; }

build() {
  local blog="$WORK/logs/build.log" target=${CARGO_TARGET_DIR:-$ROOT/target}
  command -v cargo >/dev/null || die "cargo not found (install Rust: https://rustup.rs)"
  log "building l4mesh, pingpong and reload_probe (cargo build --release; log: $blog)"
  (cd "$ROOT" && cargo build --release --bin l4mesh --example pingpong --example reload_probe) \
    >"$blog" 2>&1 || { tail -n 30 "$blog" >&2; die "cargo build failed, see $blog"; }
  L4MESH="$target/release/l4mesh"
  PINGPONG="$target/release/examples/pingpong"
  PROBE="$target/release/examples/reload_probe"
  local b
  for b in "$L4MESH" "$PINGPONG" "$PROBE"; do [[ -x $b ]] || die "no binary at $b after build"; done
}

# Ports: backends A, B, the echo server; then web (+ ping) per config size.
P_A=0 P_B=0 P_ECHO=0
declare -A P_WEB P_PING

gen_configs() {
  P_A=$PORT_BASE P_B=$((PORT_BASE + 1)) P_ECHO=$((PORT_BASE + 2))
  P_WEB[small]=$((PORT_BASE + 3)) P_WEB[big]=$((PORT_BASE + 5)) P_PING[big]=$((PORT_BASE + 6))
  require_free_ports "$P_A" "$P_B" "$P_ECHO" "${P_WEB[small]}" "${P_WEB[big]}" "${P_PING[big]}"
  mkdir -p "$WORK/small" "$WORK/big"
  python3 "$RHELPER" gen "$WORK/small" 0 0 "$BALANCE" "127.0.0.1:${P_WEB[small]}" \
    "127.0.0.1:$P_A" "127.0.0.1:$P_B"
  python3 "$RHELPER" gen "$WORK/big" "$SERVICES" "$PER_SERVICE" "$BALANCE" \
    "127.0.0.1:${P_WEB[big]}" "127.0.0.1:$P_A" "127.0.0.1:$P_B" \
    "127.0.0.1:${P_PING[big]}" "127.0.0.1:$P_ECHO"
  local size
  for size in small big; do
    "$L4MESH" --check -c "$WORK/$size/a.toml" >/dev/null 2>"$WORK/logs/check-$size.log" ||
      { cat "$WORK/logs/check-$size.log" >&2; die "l4mesh rejects the generated $size config"; }
    record "bytes/$size" "$(wc -c <"$WORK/$size/a.toml")"
  done
  log "configs: big $(($(wc -c <"$WORK/big/a.toml") / 1024)) KiB ($SERVICES services x $PER_SERVICE endpoints)"
}

start_backends() {
  start_server backend-a "$PROBE" tag "127.0.0.1:$P_A" A --lifetime "$LIFETIME"
  start_server backend-b "$PROBE" tag "127.0.0.1:$P_B" B --lifetime "$LIFETIME"
  start_server echo "$PINGPONG" server "127.0.0.1:$P_ECHO" --lifetime "$LIFETIME"
  wait_listening backend-a "$P_A"
  wait_listening backend-b "$P_B"
  wait_listening echo "$P_ECHO"
}

# Start l4mesh on config size $1 (a.toml: web -> A).
start_l4mesh() {
  local size=$1 d="$WORK/$1" t0 ports=("${P_WEB[$1]}")
  [[ -n ${P_PING[$size]:-} ]] && ports+=("${P_PING[$size]}")
  cp "$d/a.toml" "$d/l4mesh.toml"
  t0=$(date +%s%N)
  start_server "l4mesh-$size" env RUST_LOG=info "$L4MESH" -c "$d/l4mesh.toml"
  wait_listening "l4mesh-$size" "${ports[@]}"
  record "startup/$size" "$((($(date +%s%N) - t0) / 1000000))"
}

# The in-process cost of a reload's steps with config size $1.
run_cost() {
  local size=$1 d="$WORK/$1"
  log "$size config: in-process reload cost ($COST_RUNS runs)"
  timeout 300 "$PROBE" cost "$d/a.toml" "$d/b.toml" --runs "$COST_RUNS" \
    >"$WORK/cost-$size.json" 2>"$WORK/logs/cost-$size.log" ||
    log "warning: cost measurement failed (see $WORK/logs/cost-$size.log)"
}

# Reload latency with config size $1: $2 rounds of switches, results in
# switch-$3.jsonl, $4 microseconds between probes (0: tight loop).
run_switches() {
  local size=$1 rounds=$2 name=$3 gap=$4 d="$WORK/$1" out="$WORK/switch-$3.jsonl"
  check_lock || record lock_lost 1
  wait_quiet "switch-$name"
  log "$size config: $rounds rounds of A/B switches (rename and in place), probe gap ${gap} us"
  if ! timeout $((rounds * 2 * (12 + SETTLE / 1000) + 30)) "$PROBE" switch "127.0.0.1:${P_WEB[$size]}" \
      "$d/l4mesh.toml" "$d/a.toml" "$d/b.toml" --repeats "$rounds" --settle-ms "$SETTLE" \
      --gap-us "$gap" --log "$WORK/logs/l4mesh-$size.log" >"$out" 2>"$WORK/logs/switch-$name.log"; then
    tail -n 5 "$WORK/logs/switch-$name.log" >&2 || true
    log "warning: some $name switches failed (see $WORK/logs/switch-$name.log)"
  fi
  python3 - "$out" <<'EOF' >&2 || true
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
for mode in ("rename", "inplace"):
    ok = sorted(r["switch_ms"] for r in rows if r["mode"] == mode and r["switch_ms"] is not None)
    if ok:
        print(f"    {mode}: {len(ok)} ok, median {statistics.median(ok):.1f} ms, max {ok[-1]:.1f} ms")
EOF
}

# Busy CPU clock ticks of the whole machine so far (all CPUs; /proc/stat),
# read without starting a process.
busy_ticks() {
  local _cpu user nice system _idle _iowait irq softirq steal _rest
  read -r _cpu user nice system _idle _iowait irq softirq steal _rest </proc/stat
  echo $((user + nice + system + irq + softirq + steal))
}

# One jitter run: round $1, kind $2 (none | files | hup). Besides the
# latencies, records the CPU the rest of the machine used meanwhile (busy
# CPU of the machine minus l4mesh, the echo server and the client).
run_jitter() {
  local i=$1 kind=$2 d="$WORK/big" out="$WORK/jitter-$1-$2.json" args=()
  local n0 r0 c0 c1 t0 t1 e0 e1 b0 b1 w0 w1
  case $kind in
    files) args=(--churn "$d/l4mesh.toml" "$d/c.toml" "$d/a.toml" --interval-ms "$INTERVAL") ;;
    hup) args=(--churn "$d/l4mesh.toml" "$d/c.toml" "$d/a.toml" --interval-ms "$INTERVAL"
      --hup "$(python3 "$RHELPER" pid "${ENTRY[l4mesh-big]}")") ;;
  esac
  check_lock || record lock_lost 1
  wait_quiet "jitter-$i-$kind"
  n0=$(reloads_so_far big) r0=$(rejects_so_far big)
  c0=$(python3 "$HELPER" cpu "${ENTRY[l4mesh-big]}")
  t0=$(python3 "$RHELPER" ctlcpu "${ENTRY[l4mesh-big]}")
  e0=$(python3 "$HELPER" cpu "${ENTRY[echo]}")
  b0=$(busy_ticks) w0=$EPOCHREALTIME
  if timeout $((SECS + 60)) "$PROBE" jitter "127.0.0.1:${P_PING[big]}" --seconds "$SECS" \
      "${args[@]}" >"$out" 2>"$WORK/logs/jitter-$i-$kind.log"; then
    :
  else
    log "  warning: jitter run $i $kind failed (see $WORK/logs/jitter-$i-$kind.log)"
    rm -f "$out"
  fi
  b1=$(busy_ticks) w1=$EPOCHREALTIME
  # Let the last write's reload finish before counting.
  sleep 0.5
  c1=$(python3 "$HELPER" cpu "${ENTRY[l4mesh-big]}")
  t1=$(python3 "$RHELPER" ctlcpu "${ENTRY[l4mesh-big]}")
  record "jitter/$i/$kind/reloads" "$(($(reloads_so_far big) - n0))"
  record "jitter/$i/$kind/rejected" "$(($(rejects_so_far big) - r0))"
  record "jitter/$i/$kind/cpu_s" "$(python3 -c "print(f'{$c1 - $c0:.2f}')")"
  record "jitter/$i/$kind/ctl_cpu_s" "$(python3 -c "print(f'{$t1 - $t0:.4f}')")"
  e1=$(python3 "$HELPER" cpu "${ENTRY[echo]}")
  if [[ -s $out ]]; then
    record "jitter/$i/$kind/other_cpu_pct" "$(python3 "$RHELPER" othercpu "$out" "$b0" "$b1" \
      "$w0" "$w1" "$c0" "$c1" "$e0" "$e1" "$(getconf CLK_TCK)" "$(nproc)")"
    log "  round $i $kind: $(cat "$out") reloads=$(($(reloads_so_far big) - n0))"
  fi
}

run_all() {
  local size i
  for size in small big; do
    log "starting l4mesh with the $size config"
    start_l4mesh "$size"
    record_rss "$size" start
    run_cost "$size"
    run_switches "$size" "$REPEATS" "$size" 0
    if [[ $size == big ]]; then
      ((PACED > 0)) && run_switches big "$PACED" big-paced 1000
      record_rss big after-switch
      # Back to a.toml, the base of the churn, before the jitter runs.
      cp "$WORK/big/a.toml" "$WORK/big/.a.tmp" && mv "$WORK/big/.a.tmp" "$WORK/big/l4mesh.toml"
      sleep 1
      log "big config: jitter, $PAIRS rounds of ${SECS}s runs (none, files, hup; writes every ${INTERVAL} ms)"
      for ((i = 1; i <= PAIRS; i++)); do
        run_jitter "$i" none
        run_jitter "$i" files
        run_jitter "$i" hup
      done
      record_rss big end
    else
      record_rss small end
    fi
    stop_server "l4mesh-$size"
  done
}

report() {
  local rev
  rev=$(l4mesh_rev)
  mkdir -p "$ROOT/bench/results"
  RELOAD_META_DATE=$DATE RELOAD_META_KERNEL=$(uname -r) RELOAD_META_NPROC=$(nproc) \
  RELOAD_META_LOADAVG=$LOADAVG RELOAD_META_COMMAND=$COMMAND RELOAD_META_REV=$rev \
  RELOAD_META_DEBOUNCE=$(python3 "$RHELPER" debounce "$ROOT/src/discovery/file_watch.rs") \
  RELOAD_META_SERVICES=$SERVICES RELOAD_META_PER_SERVICE=$PER_SERVICE \
  RELOAD_META_BALANCE=$BALANCE RELOAD_META_REPEATS=$REPEATS RELOAD_META_PAIRS=$PAIRS \
  RELOAD_META_SECONDS=$SECS RELOAD_META_INTERVAL=$INTERVAL RELOAD_META_SETTLE=$SETTLE \
  RELOAD_META_PACED=$PACED \
    python3 "$RHELPER" report "$WORK" "$ROOT/bench/results/reload.md" "$ROOT/bench/results/reload.json"
  log "wrote bench/results/reload.md and bench/results/reload.json"
}

main() {
  check_settings
  local tool
  for tool in python3 ss timeout; do command -v "$tool" >/dev/null || die "$tool not found"; done
  begin_run l4mesh-reload
  : >"$WORK/extra.tsv"
  build
  gen_configs
  acquire_lock
  DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
  local start=$SECONDS
  start_backends
  run_all
  stop_all
  release_lock
  log "measurements took $((SECONDS - start)) s"
  report
}

main "$@"
