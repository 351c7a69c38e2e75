#!/usr/bin/env bash
# Draws bench/results/latest.png: a bar chart of l4mesh's ratios to direct,
# to the better HAProxy and, when the run had it, to l4mesh-epoll (the same
# binary on the epoll event loop), from bench/results/latest.json
# (bench/run.sh calls it at the end). Installs gnuplot (gnuplot-nox) if missing.
#
#   bash bench/chart.sh [RESULTS.json [OUT.png]]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IN=${1:-$ROOT/bench/results/latest.json}
OUT=${2:-${IN%.json}.png}
[[ -r $IN ]] || { echo "chart: no results at $IN (run bash bench/run.sh first)" >&2; exit 1; }
if ! command -v gnuplot >/dev/null; then
  echo "chart: installing gnuplot-nox" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gnuplot-nox >/dev/null
fi
DATA=$(mktemp)
trap 'rm -f "$DATA"' EXIT
# One row per metric: label, ratio to direct, ratio to the better HAProxy,
# ratio to l4mesh-epoll.
# Lower-is-better metrics are inverted, so taller is always better.
python3 - "$IN" >"$DATA" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
labels = {
    "iperf1_gbps": "iperf3 1 stream", "iperf4_gbps": "iperf3 4 streams",
    "wrk_ka_rps": "keep-alive req/s", "wrk_close_rps": "close req/s",
    "wrk_ka_p99_us": "keep-alive p99", "wrk_close_p99_us": "close p99",
    "ping_p50_us": "ping-pong p50", "ping_p99_us": "ping-pong p99",
    "cpu_s_per_gb": "CPU per GB",
}
for key, label in labels.items():
    r = d.get("ratios", {}).get(key, {})
    def val(k):
        v = r.get(k)
        if isinstance(v, dict):
            v = v.get("ratio")
        if not v:
            return "NaN"
        return 1 / v if key.endswith("_us") or key.startswith("cpu_") else v
    print(f'"{label}" {val("direct")} {val("best_haproxy")} {val("epoll")}')
PY
EPOLL_PLOT="" VERSUS="direct and to the better HAProxy"
if awk '$NF != "NaN" { found = 1 } END { exit !found }' "$DATA"; then
  EPOLL_PLOT=', "" using 4 title "vs l4mesh-epoll" lc rgb "#59a14f"'
  VERSUS="direct, the better HAProxy and l4mesh-epoll"
fi
gnuplot <<GNUPLOT
set terminal pngcairo size 1100,520 noenhanced font "sans,10"
set output "$OUT"
set title "l4mesh relative to $VERSUS (taller is better; latency and CPU rows inverted)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set yrange [0:*]
set ylabel "ratio"
set xtics rotate by -25
set grid ytics
set key left top
set arrow from graph 0, first 1 to graph 1, first 1 nohead dashtype 2 lc rgb "#444444"
plot "$DATA" using 2:xtic(1) title "vs direct" lc rgb "#4e79a7", \
     "" using 3 title "vs better HAProxy" lc rgb "#f28e2b"$EPOLL_PLOT
GNUPLOT
echo "chart: wrote $OUT"
