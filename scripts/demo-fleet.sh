#!/usr/bin/env bash
# The fleet demo (`scripts/demo.sh fleet`): starts etcd (temp data dir,
# 127.0.0.1:23790), two l4mesh proxies on conf/fleet-a.toml (127.0.0.1:8081)
# and conf/fleet-b.toml (127.0.0.1:8082), and three backends (alpha, beta,
# gamma on 127.0.0.1:9011-9013) that answer with their name, each with its
# own sidecar `l4mesh ctl --etcd URL register web ADDR --ttl 5s`. It sends
# requests through both proxies to show the split, stops gamma's sidecar
# (SIGTERM: the lease is revoked, the endpoint leaves etcd at once) and gamma,
# and shows the traffic moving to alpha and beta. Everything it starts is
# stopped by PID on exit, including Ctrl-C. The proxies log to a temp dir,
# shown if the demo fails.
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-12}
ETCD_URL=http://127.0.0.1:23790
PIDS=()
TMP=""
# Stops what was started, newest first, one at a time: the sidecars revoke
# their leases while etcd still runs. On failure, shows the proxies' logs.
cleanup() {
  local rc=$? i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    kill "${PIDS[i]}" 2>/dev/null || true
    wait "${PIDS[i]}" 2>/dev/null || true
  done
  if ((rc != 0)) && [[ -n $TMP ]]; then
    tail -n 20 "$TMP"/proxy-*.log 2>/dev/null >&2 || true
  fi
  [[ -z $TMP ]] || rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

command -v etcd >/dev/null || { echo "etcd is not installed (scripts/deps.sh installs it)" >&2; exit 1; }
source scripts/demo-lib.sh
build_release
L4MESH=./target/release/l4mesh
for port in 23790 23800 8081 8082 9011 9012 9013; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "127.0.0.1:$port is already in use; the demo needs it" >&2
    exit 1
  fi
done
TMP=$(mktemp -d /tmp/l4mesh-demo-fleet.XXXXXX)

# The replies to $2 connections through 127.0.0.1:$1, one per line.
replies() {
  local reply
  for _ in $(seq "$2"); do
    reply="(no reply)"
    if exec 3<>"/dev/tcp/127.0.0.1/$1"; then
      read -r -t 2 reply <&3 || reply="(no reply)"
      exec 3<&-
    fi
    echo "$reply"
  done 2>/dev/null
}

# Prints the split of $REQUESTS connections through each proxy.
show_split() {
  local port
  for port in 8081 8082; do
    echo "-- proxy 127.0.0.1:$port: $(replies "$port" "$REQUESTS" | sort | uniq -c | awk '{printf "%s x%s  ", $2, $1}')"
  done
}

# Waits (up to 10 s) until both proxies answer with exactly the names given.
wait_split() {
  local want port got
  want=$(printf '%s\n' "$@" | sort | tr '\n' ' ')
  for _ in $(seq 50); do
    for port in 8081 8082; do
      got=$(replies "$port" 6 | sort -u | tr '\n' ' ')
      [[ $got == "$want" ]] || continue 2
    done
    return 0
  done
  echo "the proxies do not route to exactly: $want (last: $got)" >&2
  return 1
}

echo "== starting etcd on $ETCD_URL (data in $TMP)"
etcd --name demo --data-dir "$TMP/etcd" --log-level warn \
  --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
  --listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
  --initial-cluster demo=http://127.0.0.1:23800 >"$TMP/etcd.log" 2>&1 &
PIDS+=($!)
wait_port 23790

echo "== starting two l4mesh proxies: conf/fleet-a.toml (127.0.0.1:8081), conf/fleet-b.toml (127.0.0.1:8082)"
for n in a b; do
  RUST_LOG=${RUST_LOG:-info} "$L4MESH" -c "conf/fleet-$n.toml" >"$TMP/proxy-$n.log" 2>&1 &
  PIDS+=($!)
done
wait_port 8081
wait_port 8082

# The registration sidecar of backend $2 at $1 (log $TMP/sidecar-$2.log): `l4mesh ctl --etcd` keeps a lease
# alive and revokes it on SIGTERM. With a build of l4mesh whose ctl has no
# --etcd yet, the same with etcdctl (lease grant, put --lease, keep-alive,
# lease revoke on SIGTERM).
sidecar() {
  if "$L4MESH" ctl --help 2>/dev/null | grep -q -- --etcd; then
    "$L4MESH" ctl --etcd "$ETCD_URL" register web "$1" --ttl 5s >"$TMP/sidecar-$2.log" 2>&1 &
  else
    ETCDCTL_API=3 ETCD_URL=$ETCD_URL bash -c '
      set -euo pipefail
      ctl() { etcdctl --endpoints "$ETCD_URL" "$@"; }
      lease=$(ctl lease grant 5 | awk "{print \$2}")
      ctl put --lease="$lease" "/l4mesh/services/web/endpoints/$1" "{\"weight\": 1}" >/dev/null
      ctl lease keep-alive "$lease" >/dev/null &
      keep=$!
      trap "kill $keep; ctl lease revoke $lease >/dev/null; exit 0" TERM
      wait "$keep"
    ' sidecar "$1" >"$TMP/sidecar-$2.log" 2>&1 &
  fi
  PIDS+=($!)
}

if ! "$L4MESH" ctl --help 2>/dev/null | grep -q -- --etcd; then
  echo "== note: this l4mesh has no 'ctl --etcd' yet; each sidecar below does the same with etcdctl (lease grant, put --lease, keep-alive, revoke on SIGTERM)"
fi
declare -A SIDECAR BACKEND
for spec in alpha:9011 beta:9012 gamma:9013; do
  name=${spec%%:*} port=${spec#*:}
  echo "== backend $name on 127.0.0.1:$port, with its sidecar: l4mesh ctl --etcd $ETCD_URL register web 127.0.0.1:$port --ttl 5s"
  backend "$name" "$port"
  BACKEND[$name]=$!
  wait_port "$port"
  sidecar "127.0.0.1:$port" "$name"
  SIDECAR[$name]=$!
done

wait_split alpha beta gamma
echo "== in etcd:"
ETCDCTL_API=3 etcdctl --endpoints "$ETCD_URL" get --prefix /l4mesh/ 2>/dev/null | paste - - | sed 's/^/   /' || true
echo "== $REQUESTS connections through each proxy:"
show_split

echo "== stopping gamma's sidecar (SIGTERM: it revokes its lease, the endpoint leaves etcd)"
start=$(date +%s%N)
kill "${SIDECAR[gamma]}"
wait "${SIDECAR[gamma]}" 2>/dev/null || true
# gamma itself still answers here: only etcd can take it out of the split.
wait_split alpha beta
echo "   both proxies stopped routing to gamma $((($(date +%s%N) - start) / 1000000)) ms after the SIGTERM"
echo "   gamma's sidecar said:"
sed 's/^/     /' "$TMP/sidecar-gamma.log"
echo "== stopping gamma"
kill "${BACKEND[gamma]}"
wait "${BACKEND[gamma]}" 2>/dev/null || true
echo "== $REQUESTS connections through each proxy:"
show_split
echo "== done; stopping everything"
