#!/usr/bin/env bash
# Load test of `wgtrain serve` on loopback with wrk.
#
#   scripts/loadtest.sh            # 10 s per concurrency level
#   DURATION=30s scripts/loadtest.sh
#
# Builds the release binary, trains a 784-500-10 model for one epoch on
# Fashion-MNIST (/usr/share/datasets/fashion-mnist, Debian's
# dataset-fashion-mnist; without it, the built-in 8x8 digits, 64-500-10),
# starts the server on 127.0.0.1, drives POST /v1/predict with one JSON row
# per request at concurrency 1, 32 and 256 for a bounded time each, prints
# throughput, p50, p99 and failures, then stops the server with SIGTERM.
#
# Environment: DURATION (wrk -d, default 10s), PORT (default 18080),
# SERVE_ARGS (extra `wgtrain serve` flags, e.g. "--max-wait-us 0"),
# LEVELS (default "1 32 256"), SKIP_BUILD=1 (use target/release/wgtrain as is),
# WRK_THREADS (wrk -t; default 1).
# Needs wrk (Debian: apt-get install wrk) and curl. On a 2-core machine wrk
# and the server share the cores, so the figures are a lower bound.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
PORT=${PORT:-18080}
LEVELS=${LEVELS:-"1 32 256"}
ADDR=127.0.0.1:$PORT
command -v wrk >/dev/null || { echo "wrk not found (apt-get install wrk)" >&2; exit 1; }
command -v curl >/dev/null || { echo "curl not found" >&2; exit 1; }

[ -n "${SKIP_BUILD:-}" ] || cargo build --release --quiet
BIN=target/release/wgtrain
WORK=$(mktemp -d)
SERVER=""
cleanup() {
    if [ -n "$SERVER" ] && kill -0 "$SERVER" 2>/dev/null; then
        kill -TERM "$SERVER" 2>/dev/null || true
        wait "$SERVER" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

DATA=/usr/share/datasets/fashion-mnist
if [ -e "$DATA/train-images-idx3-ubyte.gz" ] || [ -e "$DATA/train-images-idx3-ubyte" ]; then
    DIM=784
    "$BIN" -q train --data "$DATA" --device cpu --epochs 1 --hidden 500 --save "$WORK/model.safetensors"
else
    echo "no Fashion-MNIST at $DATA; using the built-in 8x8 digits" >&2
    DIM=64
    "$BIN" -q train --data builtin --device cpu --epochs 1 --hidden 500 --save "$WORK/model.safetensors"
fi

# One request body: a single row of pixel values.
awk -v n="$DIM" 'BEGIN { printf "{\"inputs\": [["; for (i = 0; i < n; i++) printf "%s%d", (i ? "," : ""), (i * 37) % 256; printf "]]}" }' \
    >"$WORK/body.json"

cat >"$WORK/post.lua" <<EOF
local f = io.open("$WORK/body.json", "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format("RESULT %.0f %.3f %.3f %d %d %d\n",
        summary.requests / (summary.duration / 1e6),
        latency:percentile(50) / 1000, latency:percentile(99) / 1000,
        summary.requests, e.status, e.connect + e.read + e.write + e.timeout))
end
EOF

# shellcheck disable=SC2086
"$BIN" -q serve --model "$WORK/model.safetensors" --addr "$ADDR" ${SERVE_ARGS:-} &
SERVER=$!
for _ in $(seq 1 100); do
    curl -sf "http://$ADDR/healthz" >/dev/null 2>&1 && break
    kill -0 "$SERVER" 2>/dev/null || { echo "server exited" >&2; exit 1; }
    sleep 0.1
done
curl -sf "http://$ADDR/healthz" >/dev/null || { echo "server did not come up" >&2; exit 1; }
curl -sf -H 'Content-Type: application/json' --data-binary @"$WORK/body.json" "http://$ADDR/v1/predict" >/dev/null

echo "wgtrain serve, model $DIM-500-10, one row per request, $DURATION per level, $(nproc) cores"
printf "%-12s %12s %10s %10s %10s %10s %12s\n" concurrency "requests/s" "p50 ms" "p99 ms" requests non-2xx "socket errs"
for c in $LEVELS; do
    # One client thread: on 2 cores a second one takes CPU from the server
    # (it drives 45,000 requests/s alone, more than the server answers).
    t=${WRK_THREADS:-1}
    out=$(wrk -t"$t" -c"$c" -d"$DURATION" --timeout 5s --latency -s "$WORK/post.lua" "http://$ADDR/v1/predict")
    read -r rps p50 p99 n bad sock <<<"$(grep '^RESULT' <<<"$out" | cut -d' ' -f2-)"
    printf "%-12s %12s %10s %10s %10s %10s %12s\n" "$c" "$rps" "$p50" "$p99" "$n" "$bad" "$sock"
done
echo
echo "server metrics after the run:"
curl -sf "http://$ADDR/metrics" | grep -E '^wgtrain_(requests_total|queue_depth|predicted_rows_total|batch_size_(sum|count))'
kill -TERM "$SERVER"
wait "$SERVER"
SERVER=""
echo "server drained and stopped"
