#!/usr/bin/env bash
# Hot swaps against a real daemon process: the binary you ship (e.g. the static musl one from
# `bash cross/build x86_64-unknown-linux-musl`, whose allocator is musl's, not glibc's), serving
# digits-mlp v1 <-> v2 by rewriting the model's serving.toml and sending SIGHUP, under closed-loop
# load from `inferd bench`. Prints the daemon's RSS after the first, the tenth-way and the last swap,
# and the load's failures (there must be none).
#   bash benches/swap_rss.sh BINARY [SWAPS] [INTERVAL_MS]     (default: 1000 swaps, 10 ms apart)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "$1")
swaps=${2:-1000}
interval_ms=${3:-10}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

repo=$work/repo
mkdir -p "$repo/digits"
cp -r models/digits-mlp/1 "$repo/digits/1"
cp -r models/digits-mlp/1 "$repo/digits/2"
echo "versions = [1]" > "$repo/digits/serving.toml"

# --model-poll-ms 0: swaps happen only on SIGHUP, one at a time.
RUST_LOG=info "$bin" serve --models "$repo" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
  --workers 2 --model-poll-ms 0 2> "$work/log" &
pid=$!
for _ in $(seq 100); do grep -q "ready in" "$work/log" && break; sleep 0.1; done
addr=$(sed -nE 's/.* listening on ([0-9.:]+).*/\1/p' "$work/log" | head -n 1)
metrics=$(sed -nE 's#.*metrics and health on http://([0-9.:]+)/metrics.*#\1#p' "$work/log" | sed -n 1p)
[ -n "$addr" ] && [ -n "$metrics" ] || { cat "$work/log"; exit 1; }

# In bash alone, without a process per poll (no curl, no sed, no command substitution, no sleep):
# the polling loop must not take CPU from the daemon. Sets $swaps_done.
exec 4<> <(:)   # a pipe nobody writes: `read -t` on it is a sleep without a process
nap() { read -r -t "$1" -u 4 || true; }
poll_swaps() {
  local line n=""
  exec 3<> "/dev/tcp/${metrics%:*}/${metrics##*:}"
  printf 'GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n' >&3
  while IFS= read -r line <&3; do
    if [[ $line == "inferd_model_swaps_total "* ]]; then n=${line#* }; n=${n%%[!0-9]*}; fi
  done
  exec 3<&-
  swaps_done=${n:-0}
}
rss_kib() { sed -nE 's/^VmRSS:\s+([0-9]+) kB/\1/p' "/proc/$pid/status"; }

# Load in 2-second rounds (one JSON report each) until the swaps are done.
(
  while [ ! -e "$work/stop" ]; do
    "$bin" bench --addr "$addr" --model digits --concurrency 3 --duration 2 --json 2> /dev/null
    echo
  done
) > "$work/bench.jsonl" &
load=$!
# The first round runs before any swap: the steady figures.
sleep 2.5

pause=$(printf '%d.%03d' $(( interval_ms / 1000 )) $(( interval_ms % 1000 )))
poll_swaps
base=$swaps_done
start=$(date +%s.%N)
tenth_at=$(( swaps >= 10 ? swaps / 10 : 1 ))
for ((i = 1; i <= swaps; i++)); do
  echo "versions = [$(( i % 2 == 1 ? 2 : 1 ))]" > "$repo/digits/serving.toml"
  kill -HUP "$pid"
  for ((k = 0; k < 2000; k++)); do
    poll_swaps
    [ "$swaps_done" -ge $(( base + i )) ] && break
    nap 0.005
  done
  [ "$swaps_done" -ge $(( base + i )) ] || { echo "swap $i did not happen" >&2; exit 1; }
  nap "$pause"
  [ "$i" -eq 1 ] && first=$(rss_kib)
  [ "$i" -eq "$tenth_at" ] && tenth=$(rss_kib)
done
last=$(rss_kib)
secs=$(echo "$(date +%s.%N) - $start" | bc)
touch "$work/stop"
wait "$load"
kill -TERM "$pid"
wait "$pid" || true

echo "$swaps swaps of digits-mlp ($interval_ms ms apart) in ${secs%.*} s, $(basename "$bin") $(file -b "$bin" | cut -d, -f1,4)"
python3 - "$work/bench.jsonl" <<'PY'
import json, statistics, sys
text = open(sys.argv[1]).read()
dec, i, reports = json.JSONDecoder(), 0, []
while True:
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text):
        break
    report, i = dec.raw_decode(text, i)
    reports.append(report)
steady, during = reports[0], reports[1:]
ok = sum(r["ok"] for r in during)
errors = {}
for r in during:
    for code, n in r["errors"].items():
        errors[code] = errors.get(code, 0) + n
p99s = [r["p99_us"] for r in during]
print(f"before the swaps: {steady['ok']} answered, p99 {steady['p99_us'] / 1000:.3f} ms, errors {steady['errors'] or 'none'}")
print(f"during the swaps: {ok} answered in {len(during)} rounds of 2 s, errors {errors or 'none'}; "
      f"p99 per round: median {statistics.median(p99s) / 1000:.3f} ms "
      f"({statistics.median(p99s) / steady['p99_us']:.2f}x before), "
      f"worst {max(p99s) / 1000:.3f} ms ({max(p99s) / steady['p99_us']:.2f}x)")
PY
awk -v f="$first" -v t="$tenth" -v l="$last" 'BEGIN {
  printf "RSS after the first swap %.1f MiB, after swap %d %.1f MiB, after the last %.1f MiB: last / first %.3fx, last / tenth %.3fx\n",
    f / 1024, '"$tenth_at"', t / 1024, l / 1024, l / f, l / t }'
