#!/usr/bin/env bash
# The chaos suite: l4mesh under load from many clients while the network and
# the upstreams misbehave, every transfer checked byte for byte.
#
#   bash tests/chaos/run.sh [--short | --soak MINUTES]
#
# Runs as root. Builds the release binary and the chaos examples, then makes
# three network namespaces joined by veth pairs, with private addresses that
# exist only inside them (nothing is routed anywhere else):
#
#   l4c-client 10.203.1.2 ── 10.203.1.1 l4c-proxy 10.203.2.1 ── 10.203.2.2 l4c-up
#   (chaos_load clients)     (l4mesh: :8080, slow clients :8083;   (chaos_server :7001-7006)
#                             the fd-limited one :8081)
#
# Phases, each bounded in time, each under load (examples/chaos_load.rs):
#   baseline   clean load; the proxy's descriptors and RSS after it are the baseline
#   reload     the config rewritten every 100 ms (every fifth write invalid),
#              a listener added and removed, endpoints registered and deregistered
#   kill       one endpoint killed with SIGKILL mid-stream, restarted later
#   pause      one endpoint stopped with SIGSTOP for longer than idle_timeout
#   blackhole  one endpoint's packets dropped both ways for longer than idle_timeout
#   netem      2% loss, 20 ms ± 10 ms delay each way with reordering, on the upstream link
#   slow       slow readers and slow writers at 50-200 KB/s, steadily
#   abort      half the transfers are uploads the client resets halfway: the
#              server must see a reset, not an EOF
#   fdlimit    a second l4mesh under `prlimit --nofile=256` and more clients than fit
# The kernel here has no sch_netem, so loss, delay and reordering come from
# examples/chaos_netem.rs on an NFQUEUE; the blackhole is an iptables DROP.
#
# The report (printed, and written to tests/chaos/results/latest.md) gives the
# targets and exits non-zero when one is missed. --short (the default, in
# .ci/run) takes under 2 minutes once built; --soak MINUTES repeats the faulty
# phases for that long and samples the proxy's descriptors and RSS every 10 s.
# CHAOS_FORWARD=splice|copy runs the proxy in another forward mode (default
# auto); CHAOS_CLIENTS sets the number of load clients (default 128).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

MODE=short
SOAK_MIN=0
case "${1:-}" in
  "" | --short) ;;
  --soak)
    MODE=soak
    SOAK_MIN=${2:?--soak needs MINUTES}
    [[ $SOAK_MIN =~ ^[0-9]+$ && $SOAK_MIN -gt 0 ]] || { echo "--soak MINUTES: a whole number above 0" >&2; exit 2; }
    ;;
  *) echo "usage: bash tests/chaos/run.sh [--short | --soak MINUTES]" >&2; exit 2 ;;
esac
[[ $(id -u) == 0 ]] || { echo "the chaos suite needs root (network namespaces, iptables)" >&2; exit 2; }
# One run at a time: the namespaces and addresses are fixed. (The processes
# started below close fd 9, so a leftover one never holds the lock.)
exec 9>/tmp/l4mesh-chaos.lock
flock -w 900 9 || { echo "another chaos run holds /tmp/l4mesh-chaos.lock" >&2; exit 1; }

FORWARD=${CHAOS_FORWARD:-auto}
# CHAOS_PHASES="slow netem" runs only those phases after the baseline (while
# working on one fault); the report then misses the fdlimit target.
PHASES=${CHAOS_PHASES:-reload kill pause blackhole netem slow abort fdlimit}
CLIENTS=${CHAOS_CLIENTS:-128}
NS_C=l4c-client NS_P=l4c-proxy NS_U=l4c-up
CLIENT_IP=10.203.1.2 PROXY_IP=10.203.1.1 PROXY_UP_IP=10.203.2.1 UP_IP=10.203.2.2
IDLE_MS=2000 CONNECT_MS=1000 ATTEMPTS=2
# The slow clients' listener (:8083) has a shorter idle_timeout: with this
# kernel's default buffers a slow reader's splice chunk is about 64 KiB, which
# takes 1.3 s to drain at 50 KB/s, so 2 s would only catch readers under 32 KB/s.
SLOW_IDLE_MS=1000
# A client calls a transfer hung after this long without a byte: two idle
# timeouts (a timer that checks a progress stamp may fire up to one period
# late), every connect attempt, and a second of margin.
STALL_MS=$((2 * IDLE_MS + ATTEMPTS * CONNECT_MS + 1000))
RESULTS=$ROOT/tests/chaos/results
RUN=$RESULTS/run
REL=$ROOT/target/release

declare -A SERVER_PID=()
PIDS=()

log() { printf '%(%H:%M:%S)T == %s\n' -1 "$*"; }
# Foreground commands only: a function in the background is a subshell, so
# `$!` would not be the process; background ones call `ip netns exec`
# directly, which execs, so `$!` is the process itself.
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# Signals a process only if it is still a child of this script (a pid that
# exited and was reused belongs to someone else).
kill_ours() {
  local sig=$1 pid=$2 ppid
  ppid=$(awk '{ print $4 }' /proc/"$pid"/stat 2>/dev/null) || return 0
  [[ $ppid == "$$" ]] && kill "$sig" "$pid" 2>/dev/null
  return 0
}

# Kills what this script started, then removes the namespaces along with
# any process a crashed earlier run left in them.
remove_namespaces() {
  local ns pid
  for ns in $NS_C $NS_P $NS_U; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
}
cleanup() {
  local rc=$? pid
  set +e
  {
    for pid in "${PIDS[@]}" "${SERVER_PID[@]}"; do
      kill_ours -CONT "$pid"
      kill_ours -KILL "$pid"
    done
    remove_namespaces
    wait
  } 2>/dev/null
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

install_missing() {
  local missing=()
  command -v ip >/dev/null || missing+=(iproute2)
  command -v iptables-legacy >/dev/null || missing+=(iptables)
  command -v prlimit >/dev/null || missing+=(util-linux)
  command -v curl >/dev/null || missing+=(curl)
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

make_namespaces() {
  local ns
  for ns in $NS_C $NS_P $NS_U; do
    ip netns add "$ns"
    in_ns "$ns" ip link set lo up
    # Many short connections: reuse TIME_WAIT ports, use a wide port range.
    in_ns "$ns" sysctl -qw net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range="10000 65000"
  done
  ip link add l4c-c0 netns $NS_C type veth peer name l4c-p0 netns $NS_P
  ip link add l4c-p1 netns $NS_P type veth peer name l4c-u0 netns $NS_U
  ip -n $NS_C addr add $CLIENT_IP/24 dev l4c-c0
  ip -n $NS_P addr add $PROXY_IP/24 dev l4c-p0
  ip -n $NS_P addr add $PROXY_UP_IP/24 dev l4c-p1
  ip -n $NS_U addr add $UP_IP/24 dev l4c-u0
  ip -n $NS_C link set l4c-c0 up
  ip -n $NS_P link set l4c-p0 up
  ip -n $NS_P link set l4c-p1 up
  ip -n $NS_U link set l4c-u0 up
}

# Safety net: every helper exits by itself after the longest possible run.
LIFETIME=$((SOAK_MIN * 60 + 600))

start_server() {
  local port=$1
  ip netns exec $NS_U "$REL/examples/chaos_server" "$UP_IP:$port" --lifetime $LIFETIME \
    --events "$RUN/server-events.jsonl" \
    >>"$RUN/servers.log" 2>&1 9>&- &
  SERVER_PID[$port]=$!
}

# The main proxy's config. $1: a (4 endpoints and an extra listener), b (3
# endpoints, other weights, no extra listener), or invalid-weight / invalid-toml.
write_config() {
  local variant=$1 endpoints extra=""
  case $variant in
    a | invalid-weight)
      endpoints="{ addr = \"$UP_IP:7001\" }, { addr = \"$UP_IP:7002\" }, { addr = \"$UP_IP:7003\" }, { addr = \"$UP_IP:7004\" }"
      [[ $variant == invalid-weight ]] && endpoints="{ addr = \"$UP_IP:7001\", weight = 0 }, { addr = \"$UP_IP:7002\" }"
      extra="[listeners.extra]
listen = \"$PROXY_IP:8082\"
service = \"chaos\""
      ;;
    b | invalid-toml)
      endpoints="{ addr = \"$UP_IP:7001\", weight = 2 }, { addr = \"$UP_IP:7002\" }, { addr = \"$UP_IP:7003\", weight = 3 }"
      ;;
  esac
  cat <<EOF
[runtime]
workers = 2
drain_timeout = "2s"
forward = "$FORWARD"

[listeners.chaos]
listen = "$PROXY_IP:8080"
service = "chaos"

$extra

[services.chaos]
balance = "round_robin"
connect_timeout = "${CONNECT_MS}ms"
idle_timeout = "${IDLE_MS}ms"
connect_attempts = $ATTEMPTS
endpoints = [ $endpoints ]
$([[ $variant == invalid-toml ]] && echo 'panic_threshold = = 5')

[services.chaos.health]
interval = "500ms"
timeout = "300ms"
healthy_threshold = 1
unhealthy_threshold = 2
send = "PING"
expect = "PONG"

[services.chaos.outlier]
consecutive_failures = 3
base_ejection = "2s"
max_ejection = "5s"
max_ejection_percent = 50

[listeners.slow]
listen = "$PROXY_IP:8083"
service = "slow"

[services.slow]
connect_timeout = "${CONNECT_MS}ms"
idle_timeout = "${SLOW_IDLE_MS}ms"
connect_attempts = $ATTEMPTS
endpoints = [ { addr = "$UP_IP:7001" }, { addr = "$UP_IP:7002" }, { addr = "$UP_IP:7003" }, { addr = "$UP_IP:7004" } ]

[registry]
socket = "$RUN/registry.sock"

[admin]
listen = "127.0.0.1:9901"

[access_log]
path = "$RUN/access.log"
EOF
}

fd_config() {
  cat <<EOF
[runtime]
workers = 2
drain_timeout = "2s"
forward = "$FORWARD"

[listeners.fdlimit]
listen = "$PROXY_IP:8081"
service = "chaos"

[services.chaos]
connect_timeout = "${CONNECT_MS}ms"
idle_timeout = "5s"  # longer than the server's 1.5 s hold
connect_attempts = $ATTEMPTS
endpoints = [ { addr = "$UP_IP:7001" }, { addr = "$UP_IP:7002" }, { addr = "$UP_IP:7003" }, { addr = "$UP_IP:7004" } ]

[admin]
listen = "127.0.0.1:9902"

[access_log]
path = "$RUN/fd-access.log"
EOF
}

metrics() { in_ns $NS_P curl -s --max-time 2 "http://127.0.0.1:${1:-9901}/metrics"; }
metric_sum() { metrics "${2:-9901}" | awk -v m="$1" '$1 == m || index($1, m "{") == 1 { s += $2 } END { print s + 0 }'; }

wait_ready() {
  local port=$1 pid=$2 i
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || { echo "l4mesh (admin $port) exited at start; see $RUN" >&2; exit 1; }
    [[ $(in_ns $NS_P curl -s --max-time 1 "http://127.0.0.1:$port/healthz" 2>/dev/null) == ok ]] && return 0
    sleep 0.1
  done
  echo "l4mesh (admin $port) not ready after 10 s" >&2
  exit 1
}

# Waits (up to 20 s) until the main proxy has no connection open.
wait_drained() {
  local i active=0
  for ((i = 0; i < 200; i++)); do
    active=$(metric_sum l4mesh_downstream_connections_active)
    ((active == 0)) && return 0
    sleep 0.1
  done
  log "still $active connections open after 20 s"
}

# "descriptors-other-than-pipes pipes rss-KiB" of a process.
resources() {
  local pid=$1 all pipes
  all=$(find /proc/"$pid"/fd -mindepth 1 2>/dev/null | wc -l)
  pipes=$(find /proc/"$pid"/fd -mindepth 1 -lname 'pipe:*' 2>/dev/null | wc -l)
  echo "$((all - pipes)) $pipes $(awk '/^VmRSS/ { print $2 }' /proc/"$pid"/status)"
}

# Fails unless process $1 is the program $2 (before a signal is sent to it).
expect_comm() {
  local comm
  comm=$(cat /proc/"$1"/comm 2>/dev/null) || comm="(gone)"
  [[ $comm == "$2" ]] || { echo "pid $1 is $comm, not $2" >&2; exit 1; }
}

fact() { echo "$1=$2" >>"$RUN/facts"; }
# Records the proxy's descriptors and RSS as facts *_$1: the sample with the
# fewest descriptors of five, 200 ms apart, so that a health probe or an admin
# request in flight at that instant is not taken for a leak (a leak stays).
record_resources() {
  local r s i
  read -r -a r <<<"$(resources "$PROXY_PID")"
  for ((i = 0; i < 4; i++)); do
    sleep 0.2
    read -r -a s <<<"$(resources "$PROXY_PID")"
    ((s[0] < r[0])) && r=("${s[@]}")
  done
  fact "fds_$1" "${r[0]}"
  fact "pipes_$1" "${r[1]}"
  fact "rss_kb_$1" "${r[2]}"
  # By kind ("socket 12, anon_inode:[eventpoll] 2, ..."), to tell what changed.
  fact "fd_kinds_$1" "$(find /proc/"$PROXY_PID"/fd -mindepth 1 -printf '%l\n' 2>/dev/null |
    sed -E 's/:\[[0-9]+\]$//; s|^/.*|file|' | sort | uniq -c | awk '{ printf "%s%s %s", sep, $2, $1; sep = ", " }')"
  ls -l /proc/"$PROXY_PID"/fd >"$RUN/fds_$1.txt" 2>/dev/null || true
}

# run_load PHASE SECONDS [chaos_load options...]: the load, in the client namespace.
run_load() {
  local phase=$1 seconds=$2 port=8080
  shift 2
  [[ $phase == slow ]] && port=8083
  in_ns $NS_C "$REL/examples/chaos_load" run --phase "$phase" --target "$PROXY_IP:$port" \
    --clients "$CLIENTS" --seconds "$seconds" --out "$RUN/results.jsonl" \
    --stall-ms $STALL_MS --first-byte-ms $STALL_MS "$@"
}

CONFIG_WRITES=0 CONFIG_INVALID=0 REGISTRY_REQUESTS=0 REGISTRY_NOT_OK=0
phase_reload() {
  fact fault.reload "config rewritten every 100 ms (every 5th invalid), listener churn, register/deregister"
  run_load reload 10 &
  local load=$! i=0 variant answer
  local end=$((SECONDS + 10))
  while ((SECONDS < end)); do
    i=$((i + 1))
    if ((i % 5 == 0)); then
      variant=invalid-weight
      ((i % 10 == 0)) && variant=invalid-toml
      CONFIG_INVALID=$((CONFIG_INVALID + 1))
    elif ((i % 2)); then variant=a; else variant=b; fi
    if ((i % 3)); then
      write_config $variant >"$RUN/l4mesh.toml"
    else
      write_config $variant >"$RUN/l4mesh.toml.new" && mv "$RUN/l4mesh.toml.new" "$RUN/l4mesh.toml"
    fi
    CONFIG_WRITES=$((CONFIG_WRITES + 1))
    case $((i % 4)) in
      0) answer=(register chaos "$UP_IP:7005" weight=2 ttl=2s) ;;
      1) answer=(register chaos "$UP_IP:7006" ttl=2s) ;;
      2) answer=(deregister chaos "$UP_IP:7005") ;;
      3) answer=(deregister chaos "$UP_IP:7006") ;;
    esac
    REGISTRY_REQUESTS=$((REGISTRY_REQUESTS + 1))
    "$REL/l4mesh" ctl -s "$RUN/registry.sock" "${answer[@]}" >>"$RUN/ctl.log" 2>&1 ||
      REGISTRY_NOT_OK=$((REGISTRY_NOT_OK + 1))
    sleep 0.1
  done
  write_config a >"$RUN/l4mesh.toml"
  wait $load
}

phase_kill() {
  fact fault.kill "SIGKILL endpoint :7001 at 2 s, restarted at 4 s"
  run_load kill 7 &
  local load=$!
  sleep 2
  expect_comm "${SERVER_PID[7001]}" chaos_server
  kill -KILL "${SERVER_PID[7001]}"
  wait "${SERVER_PID[7001]}" 2>/dev/null || true
  sleep 2
  start_server 7001
  wait $load
}

phase_pause() {
  fact fault.pause "SIGSTOP endpoint :7002 at 2 s, SIGCONT at 5 s"
  run_load pause 7 &
  local load=$!
  sleep 2
  expect_comm "${SERVER_PID[7002]}" chaos_server
  kill -STOP "${SERVER_PID[7002]}"
  sleep 3
  kill -CONT "${SERVER_PID[7002]}"
  wait $load
}

blackhole() {
  local op=$1
  in_ns $NS_U iptables-legacy "$op" INPUT -p tcp --dport 7003 -j DROP
  in_ns $NS_U iptables-legacy "$op" OUTPUT -p tcp --sport 7003 -j DROP
}
phase_blackhole() {
  fact fault.blackhole "endpoint :7003 blackholed both ways at 2 s, restored at 5 s"
  run_load blackhole 7 &
  local load=$!
  sleep 2
  blackhole -I
  sleep 3
  blackhole -D
  wait $load
}

netem_rules() {
  local op=$1
  in_ns $NS_U iptables-legacy "$op" INPUT -i l4c-u0 -p tcp -j NFQUEUE --queue-num 0 --queue-bypass
  in_ns $NS_U iptables-legacy "$op" OUTPUT -o l4c-u0 -p tcp -j NFQUEUE --queue-num 0 --queue-bypass
}
phase_netem() {
  fact fault.netem "upstream link: 2% loss, 20 ms ± 10 ms delay each way (reordering)"
  ip netns exec $NS_U "$REL/examples/chaos_netem" --queue 0 --delay-ms 20 --jitter-ms 10 \
    --loss-percent 2 --lifetime $LIFETIME >>"$RUN/netem.log" 2>&1 9>&- &
  local netem=$!
  PIDS+=("$netem")
  sleep 0.2
  kill -0 $netem || { echo "chaos_netem failed: $(cat "$RUN/netem.log")" >&2; exit 1; }
  netem_rules -A
  run_load netem 10 --size 1K-2M
  netem_rules -D
  sleep 0.1
  kill_ours -TERM $netem
  wait $netem 2>/dev/null || true
}

phase_slow() {
  fact fault.slow "64 clients, each reads and/or writes at 50-200 KB/s for 6-12 s (listener with idle_timeout ${SLOW_IDLE_MS} ms)"
  # One transfer per client, each 6-12 s long: long enough to outgrow the
  # socket buffers, so a cut loses bytes the client can count.
  run_load slow 1 --clients 64 --rate 50K-200K --slow-seconds 12
}

phase_abort() {
  fact fault.abort "half the transfers are uploads the client resets after 10-90% of their bytes"
  run_load abort 6 --abort-share 0.5 --size 64K-4M
}

phase_fdlimit() {
  fact fault.fdlimit "a second l4mesh under prlimit --nofile=256:256; 300 clients at once, the server holds each 1.5 s"
  fact fd_phase fdlimit
  fd_config >"$RUN/fd.toml"
  ip netns exec $NS_P prlimit --nofile=256:256 "$REL/l4mesh" -c "$RUN/fd.toml" >>"$RUN/fd-l4mesh.log" 2>&1 9>&- &
  local fdpid=$!
  PIDS+=("$fdpid")
  wait_ready 9902 $fdpid
  expect_comm "$fdpid" l4mesh
  in_ns $NS_C "$REL/examples/chaos_load" run --phase fdlimit --target "$PROXY_IP:8081" \
    --clients 300 --seconds 0 --once --modes download --size 16K-64K --hold-ms 1500 \
    --out "$RUN/results.jsonl" --stall-ms $STALL_MS --first-byte-ms 60000
  kill_ours -TERM $fdpid
  wait $fdpid || log "the fd-limited l4mesh exited with $? after SIGTERM"
}

# The soak's sampler: "t_s fds pipes rss_kb active" every 10 s.
sample_loop() {
  local t0=$SECONDS next=0
  while kill -0 "$PROXY_PID" 2>/dev/null; do
    echo "$((SECONDS - t0)) $(resources "$PROXY_PID") $(metric_sum l4mesh_downstream_connections_active)" >>"$RUN/samples"
    next=$((next + 10))
    while ((SECONDS - t0 < next)); do sleep 0.5; done
  done
}

main() {
  install_missing
  local t_build=$SECONDS
  log "building (release)"
  cargo build --release --quiet --bin l4mesh --example chaos_server --example chaos_netem --example chaos_load
  local build_s=$((SECONDS - t_build)) t0=$SECONDS
  rm -rf "$RUN"
  mkdir -p "$RUN"
  remove_namespaces
  make_namespaces
  fact mode "$MODE"
  fact command "bash tests/chaos/run.sh $*"
  fact started "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  fact commit "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo +dirty)"
  fact forward "$FORWARD"
  fact workers 2
  fact clients "$CLIENTS"
  fact idle_timeout_ms $IDLE_MS
  fact slow_idle_timeout_ms $SLOW_IDLE_MS
  fact connect_timeout_ms $CONNECT_MS
  fact connect_attempts $ATTEMPTS
  fact stall_ms $STALL_MS
  fact build_s $build_s
  fact pipe_limit $((2 * 256 * 2))

  local port
  for port in 7001 7002 7003 7004 7005 7006; do start_server $port; done
  write_config a >"$RUN/l4mesh.toml"
  ip netns exec $NS_P "$REL/l4mesh" -c "$RUN/l4mesh.toml" >>"$RUN/l4mesh.log" 2>&1 9>&- &
  PROXY_PID=$!
  PIDS+=("$PROXY_PID")
  wait_ready 9901 $PROXY_PID
  expect_comm "$PROXY_PID" l4mesh
  record_resources start

  log "phase baseline"
  fact fault.baseline "none"
  run_load baseline 5
  wait_drained
  record_resources base

  local sampler=""
  if [[ $MODE == soak ]]; then
    sample_loop &
    sampler=$!
    PIDS+=("$sampler")
  fi
  local until=$((SECONDS + SOAK_MIN * 60)) phase
  while :; do
    for phase in $PHASES; do
      log "phase $phase"
      phase_$phase
    done
    [[ $MODE == soak ]] && ((SECONDS < until)) || break
  done
  wait_drained
  if [[ -n $sampler ]]; then
    kill_ours -TERM "$sampler"
    wait "$sampler" 2>/dev/null || true
  fi
  record_resources end
  fact active_end "$(metric_sum l4mesh_downstream_connections_active)"
  fact reloads_success "$(metrics | awk -F' ' '/^l4mesh_config_reloads_total\{result="success"\}/ { print $2 }')"
  fact reloads_failure "$(metrics | awk -F' ' '/^l4mesh_config_reloads_total\{result="failure"\}/ { print $2 }')"
  fact config_writes $CONFIG_WRITES
  fact config_invalid $CONFIG_INVALID
  fact registry_requests $REGISTRY_REQUESTS
  fact registry_not_ok $REGISTRY_NOT_OK
  fact elapsed_s $((SECONDS - t0))
  kill_ours -TERM "$PROXY_PID"
  wait "$PROXY_PID" || log "l4mesh exited with $? after SIGTERM"

  local out=$RESULTS/latest.md samples=()
  [[ $MODE == soak ]] && { out=$RESULTS/soak.md; samples=(--samples "$RUN/samples"); }
  log "report"
  "$REL/examples/chaos_load" report --results "$RUN/results.jsonl" --facts "$RUN/facts" \
    --access-log "$RUN/access.log" --access-log "$RUN/fd-access.log" \
    --server-events "$RUN/server-events.jsonl" "${samples[@]}" --out "$out"
}


main "$@"
