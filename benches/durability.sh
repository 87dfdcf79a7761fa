#!/usr/bin/env bash
# Durable QoS 1 publish throughput and publish->PUBACK latency at each durability level, with 1
# and 16 publishers and one persistent QoS 1 subscriber (every message is stored, delivered,
# acknowledged and deleted). A fresh broker and data directory per measurement; the levels run
# alternately (memory wal fsync, then fsync wal memory, ...) for ROUNDS rounds; medians and the
# ratio to `memory` are printed. Loopback only; every run is bounded by its message count.
#
#   benches/durability.sh [ROUNDS=3] [MESSAGES=4000]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
messages="${2:-4000}"
source .ci/prepare
cargo build --release --locked -p tern --bin tern -p tern-benches --bin tern-load >&2
work="$(mktemp -d)"
trap 'kill "$broker" 2>/dev/null || true; rm -rf "$work"' EXIT
results="$work/results.jsonl"
port=$((20000 + RANDOM % 20000))

run() { # durability publishers
  rm -rf "$work/data"
  # Queues large enough that no message is dropped by the overflow policy: this measures the
  # durable path, not the drop policy. Same settings at every level.
  TERN__STORAGE__DURABILITY="$1" TERN__STORAGE__DIR="$work/data" TERN__LOG__LEVEL=warn \
    TERN__MQTT__MAX_QUEUED_MESSAGES=1000000 TERN__MQTT__MAX_QUEUED_BYTES=1073741824 \
    TERN__MQTT__MAX_INFLIGHT_MESSAGES=256 \
    target/release/tern --bind 127.0.0.1 -p "$port" 2>"$work/tern.log" &
  broker=$!
  for _ in $(seq 50); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  target/release/tern-load --scenario durable --addr "127.0.0.1:$port" --broker-pid "$broker" \
    --publishers "$2" --messages $(( messages / $2 * ($2 > 1 ? 4 : 1) )) --window 16 --label "$1" \
    | tee -a /dev/stderr | grep '^{' >> "$results"
  kill "$broker"; wait "$broker" || true
}

for round in $(seq "$rounds"); do
  levels="memory wal fsync"; [ $((round % 2)) -eq 0 ] && levels="fsync wal memory"
  for publishers in 1 16; do
    for level in $levels; do run "$level" "$publishers"; done
  done
done

python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
# Each round wrote 6 rows (1 and 16 publishers x 3 levels); ratios are taken within a round,
# where broker runs sat side by side in time, and their median is reported.
rounds = [{(r["label"], r["publishers"]): r for r in rows[i:i + 6]} for i in range(0, len(rows), 6)]
print("\n| durability | publishers | msg/s (median) | p99 µs (median) | vs memory (median of per-round ratios) | lost/dup/reordered |")
print("|---|---|---|---|---|---|")
for publishers in (1, 16):
    for level in ("memory", "wal", "fsync"):
        rs = [r[(level, publishers)] for r in rounds]
        # msgs_per_s: acknowledged messages per second of publishing; ack_p99_us: publish->PUBACK.
        rate = statistics.median(r["msgs_per_s"] for r in rs)
        p99 = statistics.median(r["ack_p99_us"] for r in rs)
        ratio = statistics.median(
            r[(level, publishers)]["msgs_per_s"] / r[("memory", publishers)]["msgs_per_s"] for r in rounds)
        bad = sum(r["lost"] + r["duplicates"] + r["reordered"] for r in rs)
        print(f"| {level} | {publishers} | {rate:,.0f} | {p99:,.0f} | {ratio:.0%} | {bad} |")
PY
