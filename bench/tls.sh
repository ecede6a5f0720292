#!/usr/bin/env bash
# TLS against plain TCP on one linechat server (memory store, both listeners): fanout over
# each side by side, and new connections per second to HELLO (full TLS handshakes, and plain
# connects for comparison) with the server's CPU time per connection. A fresh server per
# measurement, RUNS times; prints the medians that BENCHMARKS.md shows.
#
#   bash bench/tls.sh                      # full size, about 3 minutes
#   RUNS=1 SCALE=tiny bash bench/tls.sh    # seconds, to check that it all works
#   BUILD=0 bash bench/tls.sh              # the release binaries already built
#
# The server runs on core 0 and the load generator on core 1 (taskset), with --rate 0, as in
# bench/suite.sh. Certificates are self-signed for localhost, made with openssl: ECDSA P-256
# for everything, and RSA 2048 (what `openssl req -newkey rsa:2048` gives) for handshakes too.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-5}
SCALE=${SCALE:-full}
OUT=${OUT:-target/bench-tls}
SERVER_CORE=${SERVER_CORE:-0}
BENCH_CORE=${BENCH_CORE:-1}
mkdir -p "$OUT"
rm -f "$OUT/tls.jsonl"

if [ "${BUILD:-1}" != 0 ]; then
  cargo build --release --quiet -p linechat --bin linechat
  cargo build --release --quiet -p linechat-bench
fi
LINECHAT=${CARGO_TARGET_DIR:-target}/release/linechat
BENCH=${CARGO_TARGET_DIR:-target}/release/linechat-bench
command -v openssl >/dev/null || { echo "openssl is not installed (apt-get install openssl)" >&2; exit 1; }

if [ "$SCALE" = tiny ]; then
  fanout=(--rooms 2 --clients 5 --senders 2 --messages 50)
  handshakes=(--clients 4 --duration 1)
else
  fanout=()
  handshakes=(--clients 16 --duration 5)
fi

# A self-signed certificate for localhost. basicConstraints CA:FALSE: openssl's default
# (CA:TRUE) makes a CA certificate, which rustls refuses as a server's own.
for key in ec rsa; do
  case $key in
    ec) newkey=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1) ;;
    rsa) newkey=(-newkey rsa:2048) ;;
  esac
  openssl req -x509 "${newkey[@]}" -nodes -days 2 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost -addext basicConstraints=critical,CA:FALSE \
    -keyout "$OUT/$key-key.pem" -out "$OUT/$key-cert.pem" 2>/dev/null
done

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() { for _ in $(seq 1 600); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; exit 1; }

# run KEY SCENARIO ARGS...: a fresh server with KEY's certificate, one measurement.
run() {
  local key=$1 scenario=$2; shift 2
  taskset -c "$SERVER_CORE" "$LINECHAT" --store memory --rate 0 \
    --listen 127.0.0.1:7931 --tls-listen 127.0.0.1:7932 --http-listen off \
    --tls-cert "$OUT/$key-cert.pem" --tls-key "$OUT/$key-key.pem" 2>>"$OUT/linechat.log" &
  local pid=$!
  pids+=("$pid")
  wait_port 7931
  wait_port 7932
  echo "== $scenario, $key certificate: $*" >&2
  taskset -c "$BENCH_CORE" "$BENCH" "$scenario" --addr 127.0.0.1:7931 \
    --tls-addr 127.0.0.1:7932 --ca "$OUT/$key-cert.pem" --server-pid "$pid" --json "$@" |
    python3 -c 'import json,sys; r=json.load(sys.stdin); r["key"]=sys.argv[1]; print(json.dumps(r))' "$key" \
    >>"$OUT/tls.jsonl"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
}

for i in $(seq 1 "$RUNS"); do
  run ec fanout "${fanout[@]}"
  run ec handshakes "${handshakes[@]}"
  run rsa handshakes "${handshakes[@]}"
done

python3 bench/tls_table.py "$OUT/tls.jsonl" ${CHECK:+--check}
