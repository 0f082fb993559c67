#!/usr/bin/env bash
# Compares inferd binaries (a static musl build against the glibc release build, say) on the shipped
# fp32 models: per-run p50 in process, one thread pinned to CPU 0, through `inferd validate` (each
# model against itself, so both figures of a row come from the same binary). Binaries run in turn,
# ROUNDS times (default 2), and each row prints its ratio to the first binary's figure in the round.
#   bash benches/binaries.sh BIN_A BIN_B [...]          (ROUNDS=3 bash benches/binaries.sh ...)
set -euo pipefail
cd "$(dirname "$0")/.."
(($# >= 1)) || { echo "usage: benches/binaries.sh BIN [BIN...]" >&2; exit 2; }
rounds=${ROUNDS:-2}
# model, data, passes, extra flags
models=(
  "digits-mlp tests/fixtures/validation/digits-mlp 10"
  "silero-vad tests/fixtures/validation/silero-vad 10 --carry stateN=state"
  "ppocr-cls models/ppocr-cls/1/sample 300"
)
p50() {
  local bin=$1 model=$2 data=$3 passes=$4
  shift 4
  taskset -c 0 "$bin" validate --reference "models/$model/1" --candidate "models/$model/1" \
    --data "$data" --passes "$passes" "$@" --json 2>/dev/null |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(min(d["reference"]["p50_us"], d["candidate"]["p50_us"]))'
}
printf '%-6s %-12s %-40s %12s %8s\n' round model binary "p50 µs" ratio
for round in $(seq "$rounds"); do
  for spec in "${models[@]}"; do
    read -r -a m <<<"$spec"
    first=""
    for bin in "$@"; do
      t=$(p50 "$bin" "${m[@]}")
      first=${first:-$t}
      printf '%-6s %-12s %-40s %12.2f %7.2fx\n' "$round" "${m[0]}" "$bin" "$t" \
        "$(python3 -c "print($t / $first)")"
    done
  done
done
