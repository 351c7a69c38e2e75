#!/usr/bin/env bash
# What the PROXY protocol and SNI routing cost, in one run: `Connection: close`
# req/s and 64-byte ping-pong p50 through a plain l4mesh listener, an
# `accept_proxy` listener fed by HAProxy `send-proxy-v2` (beside the same
# HAProxy into the plain listener, so the difference is the header alone),
# and an SNI listener; and HTTPS `Connection: close` (a TLS handshake per
# request, wrk as the real TLS client) through nginx TLS backends directly,
# through l4mesh plain and SNI listeners, and through HAProxy's `req.ssl_sni`
# and nginx's `ssl_preread` routing, the peers' equivalents.
#
#   bash bench/identity.sh
#
# Environment (all optional): BENCH_REPEATS (interleaved repeats, median
# reported; default 3), BENCH_SECONDS (each wrk test; default 5),
# BENCH_PINGS (timed round trips; default 20000), BENCH_PORT_BASE (first of
# 20 loopback ports; default 24300), BENCH_AFFINITY (l4mesh's
# runtime.cpu_affinity; default "auto"), BENCH_LOCK / BENCH_LOCK_WAIT (the
# lock shared with bench/run.sh, so two benchmarks never run at once).
#
# Needs haproxy, nginx with its stream module, wrk and openssl (scripts/deps.sh
# and bench/run.sh install them). Writes bench/results/identity.md and .json;
# logs and configs stay in the temp dir it names.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HELPER="$ROOT/bench/helper.py"
ERR_PREFIX=identity
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
COMMAND=$(typed_command BENCH bench/identity.sh)

REPEATS=${BENCH_REPEATS:-3}
DUR=${BENCH_SECONDS:-5}
PINGS=${BENCH_PINGS:-20000}
PORT_BASE=${BENCH_PORT_BASE:-24300}
PORT_ENV=BENCH_PORT_BASE
LOCK=${BENCH_LOCK-$DEFAULT_LOCK}
LOCK_WAIT=${BENCH_LOCK_WAIT:-1500}
LIFETIME=3600
WAIT_LISTEN_SECS=15
AFFINITY=${BENCH_AFFINITY:-auto}

on_exit() { stop_all l4mesh; }

require_positive REPEATS:BENCH_REPEATS DUR:BENCH_SECONDS PINGS:BENCH_PINGS PORT_BASE:BENCH_PORT_BASE
require_port_range 20
for tool in haproxy nginx wrk openssl; do
  command -v "$tool" >/dev/null || die "$tool is missing (bash scripts/deps.sh; apt-get install wrk)"
done
begin_run l4mesh-identity
P=$PORT_BASE
port() { echo $((P + $1)); }
require_free_ports $(seq "$P" $((P + 19)))

log "building l4mesh and pingpong (release)"
(cd "$ROOT" && cargo build --release --bin l4mesh --example pingpong) >"$WORK/logs/build.log" 2>&1 ||
  die "build failed, see $WORK/logs/build.log"
L4MESH="$ROOT/target/release/l4mesh"
PINGPONG="$ROOT/target/release/examples/pingpong"
acquire_lock

# ------------------------------------------------------------------ backends
B_HTTP=$(port 0) B_HTTPS=$(port 1) B_PING=$(port 2)
D="$WORK/backends"
mkdir -p "$D"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -keyout "$D/key.pem" -out "$D/cert.pem" -subj "/CN=api.example.com" \
  -addext "subjectAltName=DNS:api.example.com,IP:127.0.0.1" >"$WORK/logs/openssl.log" 2>&1
STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so
cat >"$D/nginx.conf" <<EOF
worker_processes 1;
pid $D/nginx.pid;
error_log $D/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $D/body; proxy_temp_path $D/proxy; fastcgi_temp_path $D/fastcgi;
    uwsgi_temp_path $D/uwsgi; scgi_temp_path $D/scgi;
    server {
        listen 127.0.0.1:$B_HTTP;
        listen 127.0.0.1:$B_HTTPS ssl;
        ssl_certificate $D/cert.pem;
        ssl_certificate_key $D/key.pem;
        ssl_session_cache off;
        ssl_session_tickets off;
        default_type text/plain;
        location / { return 200 "ok\n"; }
    }
}
EOF
start_server backends nginx -p "$D" -c "$D/nginx.conf" -e "$D/error.log" -g 'daemon off;'
wait_listening backends "$B_HTTP" "$B_HTTPS"
start_server ping-backend "$PINGPONG" server "127.0.0.1:$B_PING" --lifetime "$LIFETIME"
wait_listening ping-backend "$B_PING"

# ------------------------------------------------------------------- l4mesh
# Listeners: plain HTTP, accept_proxy HTTP, plain HTTPS, SNI HTTPS, and the
# same three kinds for ping-pong (the SNI one sends the not-TLS ping bytes to
# its default service at once).
L_HTTP=$(port 3) L_PP_HTTP=$(port 4) L_HTTPS=$(port 5) L_SNI=$(port 6)
L_PING=$(port 7) L_PP_PING=$(port 8) L_SNI_PING=$(port 9)
mkdir -p "$WORK/l4mesh"
cat >"$WORK/l4mesh/l4mesh.toml" <<EOF
[runtime]
workers = 2
drain_timeout = "1s"
cpu_affinity = "$AFFINITY"

[admin]
listen = "127.0.0.1:$(port 19)"

[listeners.http]
listen = "127.0.0.1:$L_HTTP"
service = "http"

[listeners.pp_http]
listen = "127.0.0.1:$L_PP_HTTP"
service = "http"
accept_proxy = "v2"
trusted_sources = ["127.0.0.0/8"]

[listeners.https]
listen = "127.0.0.1:$L_HTTPS"
service = "https"

[listeners.sni]
listen = "127.0.0.1:$L_SNI"
sni = [
  { names = ["api.example.com", "127.0.0.1"], service = "https" },
  { names = ["*.example.com"], service = "other" },
]
default_service = "other"

[listeners.ping]
listen = "127.0.0.1:$L_PING"
service = "ping"

[listeners.pp_ping]
listen = "127.0.0.1:$L_PP_PING"
service = "ping"
accept_proxy = "v2"
trusted_sources = ["127.0.0.0/8"]

[listeners.sni_ping]
listen = "127.0.0.1:$L_SNI_PING"
sni = [{ names = ["api.example.com"], service = "https" }]
default_service = "ping"

[services.http]
endpoints = [{ addr = "127.0.0.1:$B_HTTP" }]

[services.https]
endpoints = [{ addr = "127.0.0.1:$B_HTTPS" }]

[services.other]
endpoints = [{ addr = "127.0.0.1:$B_HTTPS" }]

[services.ping]
endpoints = [{ addr = "127.0.0.1:$B_PING" }]
EOF
"$L4MESH" --check -c "$WORK/l4mesh/l4mesh.toml" >/dev/null || die "bad l4mesh config"
start_server l4mesh "$L4MESH" -c "$WORK/l4mesh/l4mesh.toml"
wait_listening l4mesh "$L_HTTP" "$L_PP_HTTP" "$L_HTTPS" "$L_SNI" "$L_PING" "$L_PP_PING" "$L_SNI_PING"

# -------------------------------------------------------------------- peers
H_HTTP=$(port 10) H_PP_HTTP=$(port 11) H_PING=$(port 12) H_PP_PING=$(port 13)
H_SNI=$(port 14) N_SNI=$(port 15) H_PP_HAPROXY=$(port 16) H_ACCEPT=$(port 17)
mkdir -p "$WORK/haproxy"
cat >"$WORK/haproxy/haproxy.cfg" <<EOF
global
    nbthread 2
    maxconn 8000
defaults
    mode tcp
    timeout connect 1s
    timeout client 5m
    timeout server 5m
listen to_plain
    bind 127.0.0.1:$H_HTTP
    server l4 127.0.0.1:$L_HTTP
listen to_accept
    bind 127.0.0.1:$H_PP_HTTP
    server l4 127.0.0.1:$L_PP_HTTP send-proxy-v2
listen ping_to_plain
    bind 127.0.0.1:$H_PING
    server l4 127.0.0.1:$L_PING
listen ping_to_accept
    bind 127.0.0.1:$H_PP_PING
    server l4 127.0.0.1:$L_PP_PING send-proxy-v2
listen to_haproxy_accept
    bind 127.0.0.1:$H_PP_HAPROXY
    server hp 127.0.0.1:$H_ACCEPT send-proxy-v2
listen haproxy_accept
    bind 127.0.0.1:$H_ACCEPT accept-proxy
    server b 127.0.0.1:$B_HTTP
frontend sni
    bind 127.0.0.1:$H_SNI
    tcp-request inspect-delay 5s
    tcp-request content accept if { req.ssl_hello_type 1 }
    use_backend https if { req.ssl_sni -i api.example.com 127.0.0.1 }
    default_backend https
backend https
    server b 127.0.0.1:$B_HTTPS
EOF
haproxy -c -q -f "$WORK/haproxy/haproxy.cfg" || die "bad HAProxy config"
start_server haproxy haproxy -f "$WORK/haproxy/haproxy.cfg" -db
wait_listening haproxy "$H_HTTP" "$H_PP_HTTP" "$H_PING" "$H_PP_PING" "$H_SNI" "$H_PP_HAPROXY" "$H_ACCEPT"
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<EOF
load_module $STREAM_MODULE;
worker_processes 2;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 8192; }
stream {
    map \$ssl_preread_server_name \$upstream {
        api.example.com 127.0.0.1:$B_HTTPS;
        default 127.0.0.1:$B_HTTPS;
    }
    server {
        listen 127.0.0.1:$N_SNI;
        ssl_preread on;
        proxy_pass \$upstream;
    }
}
EOF
start_server nginx nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" -g 'daemon off;'
wait_listening nginx "$N_SNI"

# ---------------------------------------------------------------- the rows
# name|kind|port: kind http (wrk close over HTTP), https (wrk close over TLS),
# ping (pingpong p50).
ROWS=(
  "direct nginx|http|$B_HTTP"
  "l4mesh plain listener|http|$L_HTTP"
  "HAProxy → l4mesh plain listener|http|$H_HTTP"
  "HAProxy send-proxy-v2 → l4mesh accept_proxy|http|$H_PP_HTTP"
  "HAProxy send-proxy-v2 → HAProxy accept-proxy|http|$H_PP_HAPROXY"
  "direct pingpong|ping|$B_PING"
  "l4mesh plain listener|ping|$L_PING"
  "l4mesh SNI listener (not TLS → default)|ping|$L_SNI_PING"
  "HAProxy → l4mesh plain listener|ping|$H_PING"
  "HAProxy send-proxy-v2 → l4mesh accept_proxy|ping|$H_PP_PING"
  "direct nginx TLS|https|$B_HTTPS"
  "l4mesh plain listener|https|$L_HTTPS"
  "l4mesh SNI listener|https|$L_SNI"
  "HAProxy req.ssl_sni|https|$H_SNI"
  "nginx stream ssl_preread|https|$N_SNI"
)
TSV="$WORK/results.tsv"
: >"$TSV"
for ((r = 1; r <= REPEATS; r++)); do
  log "repeat $r of $REPEATS"
  for row in "${ROWS[@]}"; do
    IFS='|' read -r name kind p <<<"$row"
    out="$WORK/logs/r$r-$kind-$p.txt"
    case $kind in
      http | https)
        timeout --foreground $((DUR + 20)) wrk -t2 -c50 -d"${DUR}s" --latency \
          -H 'Connection: close' "$kind://127.0.0.1:$p/" >"$out" 2>&1 || true
        if res=$(python3 "$HELPER" wrk "$out" 2>/dev/null); then
          read -r rps _p99 errors _ <<<"$res"
          printf '%s\t%s\t%s\t%s\t%s\n' "$r" "$name" "$kind" "$rps" "$errors" >>"$TSV"
          log "  $kind $name: $rps req/s ($errors errors)"
        else
          log "  $kind $name: FAILED (see $out)"
        fi
        ;;
      ping)
        timeout --foreground 120 "$PINGPONG" client "127.0.0.1:$p" --count "$PINGS" >"$out" 2>&1 || true
        if res=$(python3 "$HELPER" ping "$out" 2>/dev/null); then
          read -r p50 _ <<<"$res"
          printf '%s\t%s\t%s\t%s\t0\n' "$r" "$name" ping "$p50" >>"$TSV"
          log "  ping $name: p50 $p50 us"
        else
          log "  ping $name: FAILED (see $out)"
        fi
        ;;
    esac
  done
done
curl -s "http://127.0.0.1:$(port 19)/metrics" | grep -E '^l4mesh_(sni_routes|client_hello_failures|proxy_header_errors)_total' \
  >"$WORK/l4mesh-metrics.txt" || true

python3 - "$TSV" "$ROOT/bench/results/identity.md" "$ROOT/bench/results/identity.json" \
  "$COMMAND" "$REPEATS" "$DUR" "$PINGS" "$WORK/l4mesh-metrics.txt" "$(git -C "$ROOT" rev-parse --short HEAD)" <<'PY'
import json, statistics, sys, datetime
tsv, md, js, command, repeats, dur, pings, metrics, commit = sys.argv[1:]
runs = {}
for line in open(tsv):
    r, name, kind, value, errors = line.rstrip("\n").split("\t")
    runs.setdefault((kind, name), []).append((float(value), int(errors)))
order = []
for line in open(tsv):
    key = tuple(line.split("\t")[2:0:-1])
    if key not in order:
        order.append(key)
base = {"http": "l4mesh plain listener", "https": "l4mesh plain listener", "ping": "l4mesh plain listener"}
pairs = {"HAProxy send-proxy-v2 → l4mesh accept_proxy": "HAProxy → l4mesh plain listener"}
med = {k: statistics.median(v for v, _ in vals) for k, vals in runs.items()}
title = {"http": "HTTP `Connection: close` req/s", "https": "HTTPS `Connection: close` req/s (a TLS handshake per request)", "ping": "64 B ping-pong p50 (µs)"}
lines = [f"# PROXY protocol and SNI routing: what they cost\n",
         f"`{command}` at {commit}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%MZ}: "
         f"{repeats} interleaved repeats (medians), wrk -t2 -c50 {dur} s per test, {pings} timed round trips; "
         "2 shared, noisy cores: compare ratios within this run only.\n"]
out = {}
for kind in ("http", "ping", "https"):
    lines.append(f"\n## {title[kind]}\n")
    lines.append("| path | median | vs l4mesh plain listener | vs its own baseline | errors |")
    lines.append("|---|---|---|---|---|")
    b = med.get((kind, base[kind]))
    for k, name in [(k, n) for (k, n) in order if k == kind]:
        m = med[(k, name)]
        errs = sum(e for _, e in runs[(k, name)])
        ratio = f"{m / b:.2f}" if b else "-"
        other = pairs.get(name)
        own = f"{m / med[(k, other)]:.2f} of {other}" if other and (k, other) in med else ""
        fmt = f"{m:.1f}" if kind == "ping" else f"{m:,.0f}"
        lines.append(f"| {name} | {fmt} | {ratio} | {own} | {errs} |")
        out.setdefault(kind, {})[name] = {"median": m, "runs": [v for v, _ in runs[(k, name)]], "errors": errs}
lines.append("\nFor ping-pong, lower is better (a ratio above 1 is slower).\n")
lines.append("\nl4mesh's counters after the run:\n\n```\n" + open(metrics).read() + "```\n")
open(md, "w").write("\n".join(lines))
json.dump({"command": command, "commit": commit, "results": out}, open(js, "w"), indent=1)
print("\n".join(lines))
PY
log "wrote bench/results/identity.md"
