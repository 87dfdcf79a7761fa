#!/usr/bin/env bash
# What the hot-path counters cost, in instructions, under callgrind (repeatable on a noisy
# machine, unlike a rate). Runs BIN under `valgrind --tool=callgrind` with `storage.durability =
# memory`, sends MESSAGES QoS 1 messages from one mosquitto_pub to one QoS 1 mosquitto_sub, stops
# the broker, and prints the broker's total instructions per message and the inclusive
# instructions of every `tern::metrics::` function per message (the counting code; build BIN
# with those functions kept out of line, see BENCHMARKS.md, so callgrind can attribute them).
# Loopback only; bounded by the message count and a 10-minute timeout per client.
#
#   benches/counting-cost.sh BIN [MESSAGES=20000]
set -euo pipefail
bin="$1"
messages="${2:-20000}"
work="$(mktemp -d)"
trap 'kill "$broker" 2>/dev/null || true; rm -rf "$work"' EXIT
port=$((20000 + RANDOM % 20000))
TERN__STORAGE__DURABILITY=memory TERN__LOG__LEVEL=warn TERN__SYS__INTERVAL=0 \
  valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" \
  "$bin" --bind 127.0.0.1 -p "$port" 2>"$work/tern.log" &
broker=$!
for _ in $(seq 300); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
timeout 600 mosquitto_sub -p "$port" -t 'bench/#' -q 1 -C "$messages" > /dev/null &
sub=$!
sleep 2
seq "$messages" | timeout 600 mosquitto_pub -p "$port" -t bench/x -q 1 -l
wait "$sub"
kill -TERM "$broker"
wait "$broker" || true
callgrind_annotate --inclusive=yes --auto=no --threshold=100 "$work/callgrind.out" > "$work/annotated.txt"
total=$(grep -m1 'PROGRAM TOTALS' "$work/annotated.txt" | awk '{gsub(",","",$1); print $1}')
echo "messages: $messages"
echo "broker instructions: $total ($((total / messages)) per message, start and stop included)"
echo "tern::metrics functions (inclusive instructions, per message):"
# Function entries (they carry the object in brackets; inlined copies are listed without it).
grep -E '[0-9] .*tern::metrics::.* \[' "$work/annotated.txt" | while read -r ir rest; do
  ir="${ir//,/}"
  name="$(echo "$rest" | grep -oE 'tern::metrics::[A-Za-z_:]+')"
  printf '  %12s  %8.2f  %s\n' "$ir" "$(echo "$ir / $messages" | bc -l)" "$name"
done
