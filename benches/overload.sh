#!/usr/bin/env bash
# Overload against a real daemon process, pinned: the daemon (one worker, queue capacity 64, serving
# MODEL alone) on CPU 0, `inferd bench` on CPU 1. Measures saturation in a closed loop, then offers RATE requests a
# second (default 3x saturation) in an open loop with a 50 ms deadline, and prints what the
# throughput issue's overload targets ask: served and refused, refusal time from sending
# (overloaded_p99_us), accepted latency, answers after their deadline, the generator's own lag,
# the daemon's RSS before and after, and whether it still answers.
#   bash benches/overload.sh BINARY MODEL [RATE] [-- extra `inferd serve` flags]
# Inputs are the model's shipped sample (models/MODEL/1/sample/NAME.npy). Extra environment for
# the daemon can be given as usual (`FOO=1 bash benches/overload.sh ...`).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "$1")
model=$2
rate=${3:-}
shift $(($# < 3 ? $# : 3))
[ "${1:-}" = "--" ] && shift
inputs=()
for f in models/"$model"/1/sample/*.npy; do
  name=$(basename "$f" .npy)
  inputs+=(--input "$name=$f")
done
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

# A repository of this model alone, as a deployment of it would be (io_preempt = auto decides from
# the slowest model served).
mkdir -p "$work/models"
cp -r "models/$model" "$work/models/"
taskset -c 0 "$bin" serve --listen 127.0.0.1:0 --metrics-listen off --models "$work/models" --workers 1 \
  --queue-capacity 64 --model-cache off "$@" 2> "$work/log" &
pid=$!
for _ in $(seq 100); do grep -q "ready in" "$work/log" && break; sleep 0.1; done
addr=$(sed -nE 's/.* listening on ([0-9.:]+).*/\1/p' "$work/log" | head -n 1)
[ -n "$addr" ] || { cat "$work/log"; exit 1; }

gen() { taskset -c 1 "$bin" bench --addr "$addr" --model "$model" "${inputs[@]}" --json "$@"; }
sat=$(gen --concurrency 4 --depth 8 --duration 3 | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["throughput_rps"]))')
rate=${rate:-$((3 * sat))}
rss0=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
gen --concurrency 16 --rate "$rate" --duration 5 --warmup 0 --deadline-ms 50 > "$work/over.json"
rss1=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
up=no
"$bin" ping --addr "$addr" > /dev/null 2>&1 && up=yes
python3 - "$work/over.json" "$model" "$sat" "$rate" "$rss0" "$rss1" "$up" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
model, sat, rate, rss0, rss1, up = sys.argv[2:]
errors = d.get("errors", {})
print(f"{model}: saturation {sat} req/s, offered {rate} req/s (50 ms deadline)")
print(f"  served {d['ok']} ({d['throughput_rps']:.0f} req/s), refused overloaded {errors.get('overloaded', 0)}, "
      f"deadline_exceeded {errors.get('deadline_exceeded', 0)}, other errors "
      f"{sum(v for k, v in errors.items() if k not in ('overloaded', 'deadline_exceeded'))}")
print(f"  refusal p99 / max {d.get('overloaded_p99_us')} / {d.get('overloaded_max_us')} us; "
      f"accepted p50 / p99 / max {d['p50_us']} / {d['p99_us']} / {d['max_us']} us; "
      f"answers after their deadline {d.get('ok_after_deadline')}; generator lag p99 {d.get('send_lag_p99_us')} us")
print(f"  daemon RSS {rss0} -> {rss1} kB; answers a ping afterwards: {up}")
PY
# What io_preempt = auto chose last (the policy decides how long a frame may wait unread).
grep -oE "I/O threads (now )?at [^:]*" "$work/log" | tail -n 1 | sed 's/^/  /' || true
