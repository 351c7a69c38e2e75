#!/usr/bin/env bash
# Fleet benchmark (issue 11): etcd discovery at scale, on loopback.
#
#   bash bench/fleet.sh
#
# a. Cold start with FLEET_ENDPOINTS endpoints in FLEET_SERVICES services in
#    etcd (one listener per service): spawn to first served connection; RSS.
# b. FLEET_PROXIES l4mesh processes (workers = 1) watching one etcd,
#    FLEET_CHANGES moves of one service's only endpoint: etcd txn reply to
#    the first connection routed by it on each proxy, p50/p99.
# c. Ping-pong p99 through l4mesh with no etcd writes, with FLEET_RATE etcd
#    writes a second outside l4mesh's prefix (the control), and with
#    FLEET_RATE changes a second to other endpoints of the same service; the
#    ratios.
# The method is in bench/fleet.py's docstring.
#
# Environment (all optional):
#   FLEET_SERVICES, FLEET_ENDPOINTS  (a) default 1000, 10000
#   FLEET_PROXIES, FLEET_CHANGES     (b) default 20, 1000
#   FLEET_CHANGES_SECS   (b) time budget; fewer changes if spent (default 480)
#   FLEET_RATE           (c) etcd changes per second (default 10)
#   FLEET_PP_ROUNDS, FLEET_PP_COUNT  (c) alternating quiet/churn rounds and
#                        round trips per phase (default 8, 50000)
#   FLEET_PARTS          which of a, b, c to run (default abc)
#   FLEET_OUT            the report (default bench/results/fleet.md)
#   FLEET_KEEP           non-empty: keep the temp dir with logs and configs
#   FLEET_LOCK           lock shared with the other benchmarks (default
#                        /tmp/l4mesh-bench.lock; "" for none)
#   FLEET_LOCK_WAIT      seconds to wait for it (default 900)
#
# Needs python3, cargo, etcd (Debian's etcd-server; scripts/deps.sh). Builds
# l4mesh and examples/pingpong (release). fleet.py starts etcd with a temp
# data dir on free loopback ports and everything else on port 0, stops all by
# PID, and the whole run is bounded by `timeout` (15 min). Writes
# bench/results/fleet.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HELPER="$ROOT/bench/helper.py"
ERR_PREFIX="fleet bench"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

COMMAND=$(typed_command FLEET bench/fleet.sh)
LOCK=${FLEET_LOCK-$DEFAULT_LOCK}
OUT=${FLEET_OUT:-$ROOT/bench/results/fleet.md}
LOCK_WAIT=${FLEET_LOCK_WAIT:-900}
require_positive LOCK_WAIT:FLEET_LOCK_WAIT

on_exit() { stop_all; }

command -v etcd >/dev/null || die "etcd is not installed (apt-get install etcd-server, or scripts/deps.sh)"
command -v python3 >/dev/null || die "python3 is not installed"

log "building l4mesh and examples/pingpong (release)"
(cd "$ROOT" && cargo build --release --quiet --bin l4mesh --example pingpong) || die "build failed"
TARGET=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')

begin_run l4mesh-fleet
acquire_lock
mkdir -p "$ROOT/bench/results"
export FLEET_META_DATE FLEET_META_LOADAVG FLEET_META_REV FLEET_META_COMMAND
FLEET_META_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
FLEET_META_LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
FLEET_META_REV=$(l4mesh_rev)
FLEET_META_COMMAND=$COMMAND
LIFETIME=900
start_server fleet python3 "$ROOT/bench/fleet.py" run "$TARGET/release/l4mesh" \
  "$TARGET/release/examples/pingpong" "$OUT"
log "running (progress in $WORK/logs/fleet.log)"
st=0
wait "${ENTRY[fleet]%%:*}" || st=$?
PIDS=()
cat "$WORK/logs/fleet.log" >&2
((st == 0)) || die "bench/fleet.py failed (status $st)"
log "wrote $OUT"
