#!/usr/bin/env bash
# Peer benchmark: l4mesh against a direct connection, HAProxy (plain and
# splice) and nginx stream, all on loopback.
#
#   bash bench/run.sh
#
# Environment (all optional):
#   BENCH_PROXIES    proxies to run, in order (default: "direct l4mesh l4mesh-epoll l4mesh-copy
#                    haproxy haproxy-splice nginx")
#                    l4mesh runs with its defaults (forward = "auto", event_loop = "auto"),
#                    l4mesh-epoll the same binary with event_loop = "epoll" (so the two
#                    event loops meet in every row of one run), l4mesh-copy with
#                    forward = "copy", l4mesh-unpinned with cpu_affinity = "off" (workers
#                    left to the scheduler); l4mesh-base runs the binary BENCH_BASELINE_BIN (an older
#                    build, e.g. to show what a change costs) with the same config, without
#                    the keys older builds do not know
#   BENCH_REPEATS    interleaved repeats; the median is reported (default 3)
#   BENCH_SECONDS    duration of each iperf3 / wrk test (default 5)
#   BENCH_PINGS      timed 64-byte ping-pong round trips (default 20000)
#   BENCH_PORT_BASE  first loopback port used; 83 ports from there (default 24100)
#   BENCH_SUBJECT    proxy the ratio columns are computed for (default l4mesh)
#   BENCH_MAX_SECONDS  stop starting new repeats after this long (default 1500)
#   BENCH_LOCK       lock file shared with other benchmarks (bench/reload.sh),
#                    waited for before the backends start and removed on exit,
#                    so two benchmarks never run at once; "" for none
#                    (default /tmp/l4mesh-bench.lock)
#   BENCH_LOCK_WAIT  seconds to wait for the lock before giving up (default 1500)
#
# Installs iperf3, wrk, haproxy, nginx and its stream module with apt-get if
# missing (without letting Debian start their system services), builds
# l4mesh and examples/pingpong, takes the benchmark lock, starts every
# backend and proxy with its own config in a temp dir, runs the tests, stops
# everything it started (by PID; bench/lib.sh), and writes
# bench/results/latest.md, latest.json and the chart latest.png
# (bench/chart.sh). Logs stay in the temp dir.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HELPER="$ROOT/bench/helper.py"
ALL_PROXIES="direct l4mesh l4mesh-copy l4mesh-base haproxy haproxy-splice nginx l4mesh-unpinned l4mesh-epoll"
DEFAULT_PROXIES="direct l4mesh l4mesh-epoll l4mesh-copy haproxy haproxy-splice nginx"
ERR_PREFIX=bench
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

# The command line as typed, for the report (BENCH_* variables that were set).
COMMAND=$(typed_command BENCH bench/run.sh)

PROXIES=${BENCH_PROXIES:-$DEFAULT_PROXIES}
REPEATS=${BENCH_REPEATS:-3}
DUR=${BENCH_SECONDS:-5}
PINGS=${BENCH_PINGS:-20000}
PORT_BASE=${BENCH_PORT_BASE:-24100}
SUBJECT=${BENCH_SUBJECT:-l4mesh}
MAX_SECONDS=${BENCH_MAX_SECONDS:-1500}
PORT_ENV=BENCH_PORT_BASE
LOCK=${BENCH_LOCK-$DEFAULT_LOCK}
LOCK_WAIT=${BENCH_LOCK_WAIT:-1500}
# Servers are started under `timeout` with this lifetime, as a safety net
# should this script be killed before it can stop them.
LIFETIME=$((MAX_SECONDS + 600))
WAIT_LISTEN_SECS=15

declare -A PORT          # "proxy/test" -> port the client connects to
CREATED_POLICY_RC=0

# Check the settings, so a typo fails at once and not after a long build.
check_settings() {
  require_positive REPEATS:BENCH_REPEATS DUR:BENCH_SECONDS PINGS:BENCH_PINGS \
    PORT_BASE:BENCH_PORT_BASE MAX_SECONDS:BENCH_MAX_SECONDS LOCK_WAIT:BENCH_LOCK_WAIT
  require_port_range 83
  if want l4mesh-base; then
    [[ -x ${BENCH_BASELINE_BIN:-} ]] || die "l4mesh-base needs BENCH_BASELINE_BIN=/path/to/an/l4mesh binary"
  fi
  local p
  for p in $PROXIES; do
    [[ " $ALL_PROXIES " == *" $p "* ]] || die "unknown proxy '$p' in BENCH_PROXIES (known: $ALL_PROXIES)"
  done
  [[ -n ${PROXIES// /} ]] || die "BENCH_PROXIES is empty"
}

# True if proxy $1 is selected.
want() { [[ " $PROXIES " == *" $1 "* ]]; }

# On exit (bench/lib.sh's cleanup, before the lock is released): stop every
# server we started (l4mesh must exit 0 on SIGTERM), undo the policy-rc.d file.
on_exit() {
  stop_all l4mesh
  if (( CREATED_POLICY_RC )); then rm -f /usr/sbin/policy-rc.d; fi
}

# The load_module line nginx needs for the stream module ("" if built in);
# fails if nginx or the module is missing.
nginx_stream_line() {
  local v dir
  v=$(nginx -V 2>&1) || return 1
  if [[ $v == *"--with-stream=dynamic"* ]]; then
    dir=$(grep -o -- '--modules-path=[^ ]*' <<<"$v" | cut -d= -f2 || true)
    dir=${dir:-/usr/lib/nginx/modules}
    [[ -f $dir/ngx_stream_module.so ]] || return 1
    echo "load_module $dir/ngx_stream_module.so;"
  elif [[ $v =~ --with-stream( |$) ]]; then
    echo ""
  else
    return 1
  fi
}

# Install the missing tools with apt-get, keeping Debian from starting the
# packaged haproxy/nginx/iperf3 services (policy-rc.d answering 101).
install_deps() {
  local need=()
  command -v python3 >/dev/null || need+=(python3)
  command -v ss >/dev/null || need+=(iproute2)
  command -v iperf3 >/dev/null || need+=(iperf3)
  command -v wrk >/dev/null || need+=(wrk)
  command -v nginx >/dev/null || need+=(nginx)   # also the HTTP backend
  if want haproxy || want haproxy-splice; then
    command -v haproxy >/dev/null || need+=(haproxy)
  fi
  if want nginx; then
    nginx_stream_line >/dev/null 2>&1 || need+=(libnginx-mod-stream)
  fi
  (( ${#need[@]} )) || return 0

  log "installing missing packages: ${need[*]}"
  [[ $(id -u) == 0 ]] || die "missing ${need[*]}; run as root or: sudo apt-get install -y ${need[*]}"
  command -v apt-get >/dev/null || die "missing ${need[*]} and no apt-get to install them"
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\n# temporary, from l4mesh bench/run.sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    CREATED_POLICY_RC=1
  fi
  local apt_log="$WORK/logs/apt.log"
  export DEBIAN_FRONTEND=noninteractive
  if ! compgen -G '/var/lib/apt/lists/*_Packages' >/dev/null; then
    apt-get update -q >"$apt_log" 2>&1 || die "apt-get update failed, see $apt_log"
  fi
  if ! apt-get install -y -q "${need[@]}" >>"$apt_log" 2>&1; then
    # Stale package lists are the usual cause: refresh once and retry.
    apt-get update -q >>"$apt_log" 2>&1 || die "apt-get update failed, see $apt_log"
    apt-get install -y -q "${need[@]}" >>"$apt_log" 2>&1 ||
      die "apt-get install ${need[*]} failed, see $apt_log"
  fi
  if (( CREATED_POLICY_RC )); then rm -f /usr/sbin/policy-rc.d; CREATED_POLICY_RC=0; fi
  if want nginx; then
    nginx_stream_line >/dev/null || die "nginx stream module still missing after install"
  fi
}

# Build l4mesh and the pingpong example (release). Without l4mesh in the run,
# only pingpong is needed: if the crate does not build, compile it alone.
build_binaries() {
  local target=${CARGO_TARGET_DIR:-$ROOT/target} blog="$WORK/logs/build.log"
  command -v cargo >/dev/null || die "cargo not found (install Rust: https://rustup.rs)"
  if want l4mesh || want l4mesh-epoll || want l4mesh-copy || want l4mesh-unpinned; then
    log "building l4mesh and pingpong (cargo build --release; log: $blog)"
    (cd "$ROOT" && cargo build --release --bin l4mesh --example pingpong) >"$blog" 2>&1 ||
      { tail -n 30 "$blog" >&2; die "cargo build failed, see $blog"; }
    L4MESH="$target/release/l4mesh"
    [[ -x $L4MESH ]] || die "no binary at $L4MESH after build"
  else
    log "building pingpong (cargo build --release --example pingpong; log: $blog)"
    if ! (cd "$ROOT" && cargo build --release --example pingpong) >"$blog" 2>&1; then
      log "warning: the crate does not build; compiling examples/pingpong.rs alone with rustc"
      local edition
      edition=$(sed -nE 's/^edition *= *"([0-9]+)".*/\1/p' "$ROOT/Cargo.toml" | head -n 1)
      rustc --edition "${edition:-2021}" -O "$ROOT/examples/pingpong.rs" \
        -o "$WORK/pingpong" >>"$blog" 2>&1 || die "cannot build pingpong, see $blog"
      PINGPONG="$WORK/pingpong"
      return
    fi
  fi
  PINGPONG="$target/release/examples/pingpong"
  [[ -x $PINGPONG ]] || die "no binary at $PINGPONG after build"
}

# Raise the open-files limit to the hard limit and derive MAXCONN, the
# connection cap given to haproxy and nginx (a connection uses two fds, plus
# up to one pipe (two fds) per four connections for haproxy splicing).
raise_fd_limit() {
  local hard
  hard=$(ulimit -Hn)
  [[ $hard == unlimited ]] && hard=65536
  ulimit -n "$hard" 2>/dev/null || true
  MAXCONN=$((($(ulimit -n) - 200) / 3))
  ((MAXCONN > 8000)) && MAXCONN=8000
  ((MAXCONN >= 200)) || die "open-files limit too low ($(ulimit -n)); raise it with ulimit -n"
}

# Start the iperf3 backend (also used to restart it after a failed test).
start_iperf_backend() {
  start_server iperf3-backend iperf3 -s -B 127.0.0.1 -p "$B_IPERF" --rcv-timeout 10000
  wait_listening iperf3-backend "$B_IPERF"
}

# Start the three backends: iperf3, an nginx HTTP server, the pingpong echo.
start_backends() {
  B_IPERF=$PORT_BASE B_HTTP=$((PORT_BASE + 1)) B_PING=$((PORT_BASE + 2))
  require_free_ports "$B_IPERF" "$B_HTTP" "$B_PING"
  start_iperf_backend

  local d="$WORK/http-backend"
  mkdir -p "$d"
  cat >"$d/nginx.conf" <<EOF
worker_processes 1;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    client_body_temp_path $d/body;
    proxy_temp_path $d/proxy;
    fastcgi_temp_path $d/fastcgi;
    uwsgi_temp_path $d/uwsgi;
    scgi_temp_path $d/scgi;
    server {
        listen 127.0.0.1:$B_HTTP;
        default_type text/plain;
        location / { return 200 "ok\n"; }
    }
}
EOF
  nginx -t -q -p "$d" -c "$d/nginx.conf" -e "$d/error.log" 2>"$WORK/logs/http-backend.log" ||
    { cat "$WORK/logs/http-backend.log" >&2; die "bad nginx HTTP backend config"; }
  start_server http-backend \
    nginx -p "$d" -c "$d/nginx.conf" -e "$d/error.log" -g 'daemon off;'
  wait_listening http-backend "$B_HTTP"

  start_server ping-backend "$PINGPONG" server "127.0.0.1:$B_PING" --lifetime "$LIFETIME"
  wait_listening ping-backend "$B_PING"
}

# Write (and check) the config of proxy $1 listening on ports $2 $3 $4
# (iperf, http, ping) into $WORK/$1/.
proxy_config() {
  local name=$1 p_iperf=$2 p_http=$3 p_ping=$4 d="$WORK/$1" t
  mkdir -p "$d"
  case $name in
    l4mesh*)
      {
        printf '[runtime]\nworkers = 2\nbuffer_size = 65536\ndrain_timeout = "1s"\n'
        [[ $name == l4mesh-epoll ]] && printf 'event_loop = "epoll"\n'
        [[ $name == l4mesh-copy ]] && printf 'forward = "copy"\n'
        [[ $name == l4mesh-unpinned ]] && printf 'cpu_affinity = "off"\n'
        for t in iperf http ping; do
          local lp=p_$t bp=B_${t^^}
          printf '\n[listeners.%s]\nlisten = "127.0.0.1:%s"\nservice = "%s"\n' "$t" "${!lp}" "$t"
          printf '\n[services.%s]\nbalance = "round_robin"\nconnect_timeout = "1s"\n' "$t"
          printf 'idle_timeout = "5m"\nconnect_attempts = 1\n'
          printf 'endpoints = [ { addr = "127.0.0.1:%s" } ]\n' "${!bp}"
        done
      } >"$d/l4mesh.toml"
      ;;
    haproxy | haproxy-splice)
      {
        printf 'global\n    nbthread 2\n    maxconn %s\n\n' "$MAXCONN"
        printf 'defaults\n    mode tcp\n    timeout connect 1s\n'
        printf '    timeout client 5m\n    timeout server 5m\n'
        [[ $name == haproxy-splice ]] && printf '    option splice-auto\n'
        for t in iperf http ping; do
          local lp=p_$t bp=B_${t^^}
          printf '\nlisten %s\n    bind 127.0.0.1:%s\n    server s1 127.0.0.1:%s\n' \
            "$t" "${!lp}" "${!bp}"
        done
      } >"$d/haproxy.cfg"
      haproxy -c -q -f "$d/haproxy.cfg" >&2 || die "bad haproxy config $d/haproxy.cfg"
      ;;
    nginx)
      {
        nginx_stream_line
        printf 'worker_processes 2;\n'
        printf 'pid %s/nginx.pid;\nerror_log %s/error.log warn;\n' "$d" "$d"
        printf 'events { worker_connections %s; }\nstream {\n' "$MAXCONN"
        for t in iperf http ping; do
          local lp=p_$t bp=B_${t^^}
          printf '    server { listen 127.0.0.1:%s; proxy_pass 127.0.0.1:%s; }\n' \
            "${!lp}" "${!bp}"
        done
        printf '}\n'
      } >"$d/nginx.conf"
      nginx -t -q -p "$d" -c "$d/nginx.conf" -e "$d/error.log" >&2 ||
        die "bad nginx stream config $d/nginx.conf"
      ;;
  esac
}

# Start every selected proxy on its own ports (direct = the backend ports),
# then check each forwards with a few ping-pongs.
start_proxies() {
  local name idx=0 p_iperf p_http p_ping d
  for name in $ALL_PROXIES; do
    p_iperf=$((PORT_BASE + 10 * idx)) p_http=$((PORT_BASE + 10 * idx + 1))
    p_ping=$((PORT_BASE + 10 * idx + 2))
    idx=$((idx + 1))
    want "$name" || continue
    PORT[$name/iperf]=$p_iperf PORT[$name/http]=$p_http PORT[$name/ping]=$p_ping
    [[ $name == direct ]] && continue
    require_free_ports "$p_iperf" "$p_http" "$p_ping"
    proxy_config "$name" "$p_iperf" "$p_http" "$p_ping"
    log "starting $name"
    d="$WORK/$name"
    case $name in
      l4mesh | l4mesh-epoll | l4mesh-copy | l4mesh-unpinned) start_server "$name" \
        env RUST_LOG="${RUST_LOG:-warn}" "$L4MESH" -c "$d/l4mesh.toml" ;;
      l4mesh-base) start_server "$name" \
        env RUST_LOG="${RUST_LOG:-warn}" "$BENCH_BASELINE_BIN" -c "$d/l4mesh.toml" ;;
      haproxy*) start_server "$name" haproxy -db -f "$d/haproxy.cfg" ;;
      nginx) start_server "$name" \
        nginx -p "$d" -c "$d/nginx.conf" -e "$d/error.log" -g 'daemon off;' ;;
    esac
    wait_listening "$name" "$p_iperf" "$p_http" "$p_ping"
  done
  for name in $PROXIES; do
    timeout 20 "$PINGPONG" client "127.0.0.1:${PORT[$name/ping]}" --count 10 --warmup 0 \
      >/dev/null 2>"$WORK/logs/check-$name.log" ||
      { cat "$WORK/logs/check-$name.log" >&2; die "$name does not forward ping-pong traffic"; }
  done
}

# Append one raw result line: repeat, proxy, metric, value ("nan" = failed).
record() { printf '%s\t%s\t%s\t%s\n' "$@" >>"$WORK/results.tsv"; }

# iperf3 through proxy $1 (repeat $2) with $3 parallel streams; records the
# throughput and sets IPERF_BYTES to the bytes moved ("" on failure).
run_iperf() {
  local name=$1 r=$2 n=$3 out="$WORK/logs/r$2-$1-iperf$3.json" res
  IPERF_BYTES=""
  if timeout --foreground $((DUR + 20)) iperf3 -c 127.0.0.1 -p "${PORT[$name/iperf]}" \
      -t "$DUR" -P "$n" -J --connect-timeout 3000 >"$out" 2>&1 &&
    res=$(python3 "$HELPER" iperf "$out" 2>>"$WORK/logs/errors.log"); then
    record "$r" "$name" "iperf${n}_gbps" "${res% *}"
    record "$r" "$name" "iperf${n}_bytes" "${res#* }"
    log "  $name iperf3 -P $n: ${res% *} Gbit/s"
    IPERF_BYTES=${res#* }
  else
    record "$r" "$name" "iperf${n}_gbps" nan
    log "  $name iperf3 -P $n: FAILED (see $out); restarting the iperf3 backend"
    python3 "$HELPER" stop "${ENTRY[iperf3-backend]}"
    start_iperf_backend
  fi
}

# Both iperf3 tests through proxy $1 (repeat $2), plus the proxy's CPU s/GB.
run_throughput() {
  local name=$1 r=$2 cpu0=0 cpu1=0 b1 b4 per_gb
  [[ $name == direct ]] || cpu0=$(python3 "$HELPER" cpu "${ENTRY[$name]}")
  run_iperf "$name" "$r" 1
  b1=$IPERF_BYTES
  run_iperf "$name" "$r" 4
  b4=$IPERF_BYTES
  [[ $name == direct ]] && return
  cpu1=$(python3 "$HELPER" cpu "${ENTRY[$name]}")
  if [[ -n $b1 && -n $b4 ]]; then
    per_gb=$(python3 -c "print(f'{($cpu1 - $cpu0) / (($b1 + $b4) / 1e9):.4f}')")
    record "$r" "$name" cpu_s_per_gb "$per_gb"
    record "$r" "$name" cpu_s "$(python3 -c "print(f'{$cpu1 - $cpu0:.2f}')")"
    log "  $name CPU: $per_gb s/GB"
  else
    record "$r" "$name" cpu_s_per_gb nan
  fi
}

# wrk through proxy $1 (repeat $2), mode $3: ka (keep-alive) or close. For
# keep-alive, also the CPU per request: the proxy's, and the whole machine's.
run_wrk() {
  local name=$1 r=$2 mode=$3 out="$WORK/logs/r$2-$1-wrk-$3.txt" res rps p99 errors requests
  local args=(-t1 -c50 -d"${DUR}s" --latency) cpu0=0 cpu1=0 busy0=0 busy1=0 ran=0
  [[ $mode == close ]] && args+=(-H 'Connection: close')
  # The CPU readings (keep-alive only) bracket wrk alone, not the parsing.
  if [[ $mode == ka ]]; then
    [[ $name == direct ]] || cpu0=$(python3 "$HELPER" cpu "${ENTRY[$name]}")
    busy0=$(python3 "$HELPER" busy)
  fi
  timeout --foreground $((DUR + 20)) wrk "${args[@]}" "http://127.0.0.1:${PORT[$name/http]}/" \
    >"$out" 2>&1 && ran=1
  if [[ $mode == ka ]]; then
    busy1=$(python3 "$HELPER" busy)
    [[ $name == direct ]] || cpu1=$(python3 "$HELPER" cpu "${ENTRY[$name]}")
  fi
  if ((ran)) && res=$(python3 "$HELPER" wrk "$out" 2>>"$WORK/logs/errors.log"); then
    read -r rps p99 errors requests <<<"$res"
    record "$r" "$name" "wrk_${mode}_rps" "$rps"
    record "$r" "$name" "wrk_${mode}_p99_us" "$p99"
    record "$r" "$name" "wrk_${mode}_errors" "$errors"
    log "  $name wrk $mode: $rps req/s, p99 $p99 us, $errors errors"
    if [[ $mode == ka ]] && ((requests > 0)); then
      record "$r" "$name" ka_machine_cpu_us \
        "$(python3 -c "print(f'{($busy1 - $busy0) * 1e6 / $requests:.2f}')")"
      [[ $name == direct ]] || record "$r" "$name" ka_proxy_cpu_us \
        "$(python3 -c "print(f'{($cpu1 - $cpu0) * 1e6 / $requests:.2f}')")"
    fi
  else
    record "$r" "$name" "wrk_${mode}_rps" nan
    record "$r" "$name" "wrk_${mode}_p99_us" nan
    log "  $name wrk $mode: FAILED (see $out)"
  fi
}

# 64-byte ping-pong through proxy $1 (repeat $2).
run_ping() {
  local name=$1 r=$2 out="$WORK/logs/r$2-$1-ping.txt" res
  if timeout --foreground 120 "$PINGPONG" client "127.0.0.1:${PORT[$name/ping]}" \
      --count "$PINGS" >"$out" 2>&1 && res=$(python3 "$HELPER" ping "$out" 2>>"$WORK/logs/errors.log"); then
    record "$r" "$name" ping_p50_us "${res% *}"
    record "$r" "$name" ping_p99_us "${res#* }"
    log "  $name ping-pong: p50 ${res% *} us, p99 ${res#* } us"
  else
    record "$r" "$name" ping_p50_us nan
    record "$r" "$name" ping_p99_us nan
    log "  $name ping-pong: FAILED (see $out)"
  fi
}

# The repeats, interleaved: each repeat runs every test on every proxy; the
# proxy order rotates between repeats so none always goes first.
run_all() {
  local r name list i start=$SECONDS
  read -r -a list <<<"$PROXIES"
  for ((r = 1; r <= REPEATS; r++)); do
    if (( SECONDS - start > MAX_SECONDS )); then
      log "warning: over BENCH_MAX_SECONDS=$MAX_SECONDS, skipping repeats $r..$REPEATS"
      break
    fi
    check_lock || true
    log "repeat $r/$REPEATS"
    for ((i = 0; i < ${#list[@]}; i++)); do
      name=${list[(i + r - 1) % ${#list[@]}]}
      run_throughput "$name" "$r"
      run_wrk "$name" "$r" ka
      run_wrk "$name" "$r" close
      run_ping "$name" "$r"
    done
  done
}

# Tool versions for the report, as JSON.
versions_json() {
  python3 - "$(l4mesh_rev)" <<'EOF'
import json, subprocess, sys
def first(cmd):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return ((p.stdout or "") + (p.stderr or "")).strip().splitlines()[0]
    except Exception:
        return "?"
print(json.dumps({
    "l4mesh": sys.argv[1],
    "haproxy": first(["haproxy", "-v"]).split(" - ")[0].replace("HAProxy version ", ""),
    "nginx": first(["nginx", "-v"]).split("/")[-1],
    "iperf3": first(["iperf3", "--version"]).split(" (")[0].replace("iperf ", ""),
    "wrk": first(["wrk", "-v"]).split(" [")[0].replace("wrk ", ""),
}))
EOF
}

# Write bench/results/latest.{md,json} from the raw results and print the table.
report() {
  mkdir -p "$ROOT/bench/results"
  BENCH_META_PROXIES=$PROXIES BENCH_META_REPEATS=$REPEATS BENCH_META_SECONDS=$DUR \
  BENCH_META_PINGS=$PINGS BENCH_META_SUBJECT=$SUBJECT BENCH_META_DATE=$DATE \
  BENCH_META_KERNEL=$(uname -r) BENCH_META_NPROC=$(nproc) BENCH_META_LOADAVG=$LOADAVG \
  BENCH_META_COMMAND=$COMMAND BENCH_META_VERSIONS=$(versions_json) \
    python3 "$HELPER" report "$WORK/results.tsv" \
      "$ROOT/bench/results/latest.md" "$ROOT/bench/results/latest.json"
  log "wrote bench/results/latest.md and bench/results/latest.json"
  if [[ $SUBJECT == l4mesh ]]; then
    bash "$ROOT/bench/chart.sh" "$ROOT/bench/results/latest.json" "$ROOT/bench/results/latest.png" ||
      log "warning: no chart (bench/chart.sh failed)"
  fi
}

main() {
  check_settings
  begin_run l4mesh-bench
  chmod 755 "$WORK"   # nginx workers run as an unprivileged user
  : >"$WORK/results.tsv"
  DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
  log "proxies: $PROXIES; repeats $REPEATS, ${DUR}s per test; work dir $WORK"

  install_deps
  for tool in python3 ss iperf3 wrk nginx timeout; do
    command -v "$tool" >/dev/null || die "$tool not found"
  done
  if want haproxy || want haproxy-splice; then
    command -v haproxy >/dev/null || die "haproxy not found"
  fi
  build_binaries
  acquire_lock
  raise_fd_limit
  start_backends
  start_proxies
  run_all
  report
}

main "$@"
