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
if [[ ! -x target/release/l4mesh || -n "$(find src Cargo.toml -newer target/release/l4mesh -print -quit)" ]]; then
  echo "== building l4mesh (release)"
  cargo build --release --quiet --bin l4mesh
fi

# Waits until something listens on 127.0.0.1:$1 (up to 10 s).
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$1 after 10 s" >&2
  return 1
}

# A backend that writes its name and closes every connection.
backend() {
  python3 -c '
import socket, sys
name, port = sys.argv[1].encode() + b"\n", int(sys.argv[2])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen(128)
while True:
    c, _ = s.accept()
    c.sendall(name)
    c.close()
' "$1" "$2" &
  PIDS+=($!)
}

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
