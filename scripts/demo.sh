#!/usr/bin/env bash
# The l4mesh demo: builds l4mesh if needed, starts two local backends that
# answer with their own name ("alpha" on 127.0.0.1:9001, "beta" on
# 127.0.0.1:9002), runs l4mesh on conf/demo.toml (127.0.0.1:8080, weights 1:3)
# and sends requests through it to show the weighted split. Everything it
# starts is stopped by PID on exit, including Ctrl-C.
#
# `scripts/demo.sh fleet` runs the etcd fleet demo instead
# (scripts/demo-fleet.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ${1:-} == fleet ]]; then exec scripts/demo-fleet.sh; fi
[[ $# -eq 0 ]] || { echo "usage: scripts/demo.sh [fleet]" >&2; exit 2; }

REQUESTS=${REQUESTS:-20}
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

command -v python3 >/dev/null || { apt-get update -qq && apt-get install -y -qq python3; }
source scripts/demo-lib.sh
build_release

echo "== starting backends alpha (127.0.0.1:9001, weight 1) and beta (127.0.0.1:9002, weight 3)"
backend alpha 9001
backend beta 9002
wait_port 9001
wait_port 9002

echo "== starting l4mesh -c conf/demo.toml"
./target/release/l4mesh -c conf/demo.toml &
PIDS+=($!)
wait_port 8080

echo "== sending $REQUESTS connections to 127.0.0.1:8080"
replies=()
for _ in $(seq "$REQUESTS"); do
  exec 3<>/dev/tcp/127.0.0.1/8080
  read -r reply <&3 || reply="(no reply)"
  exec 3<&-
  replies+=("$reply")
done
echo "replies in order: ${replies[*]}"
echo "== split (expected 1:3):"
printf '%s\n' "${replies[@]}" | sort | uniq -c
