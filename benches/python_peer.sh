#!/usr/bin/env bash
# inferd vs onnxruntime behind FastAPI + uvicorn, same model, same cores, same concurrency, in one run.
#   bash benches/python_peer.sh [MODEL] [SECONDS]     (default: silero-vad 10)
# Installs wrk (Debian) and onnxruntime/fastapi/uvicorn (PyPI, in target/peer-venv) if missing; builds
# inferd in release mode. Prints both throughputs, latency percentiles and the ratio inferd / peer.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-silero-vad}
secs=${2:-10}
workers=2
conns=16
dir=models/$model/1
[ -f "$dir/model.onnx" ] || { echo "no model $model"; exit 1; }

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
venv=target/peer-venv
# uvicorn[standard] (httptools, uvloop) is the production install; plain uvicorn's h11 path stalls
# ~40 ms per request on a keep-alive connection here (Nagle / delayed ACK), which would flatter us.
if ! "$venv/bin/python" -c "import onnxruntime, fastapi, httptools, uvloop" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q onnxruntime fastapi 'uvicorn[standard]' numpy
fi
cargo build -q --release
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

# The peer.
"$venv/bin/python" benches/python_peer/make_body.py "$dir/sample" "$work/body.json"
cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("$work/body.json", "rb"); wrk.body = f:read("*a"); f:close()
LUA
(cd benches/python_peer && MODEL_PATH="$OLDPWD/$dir/model.onnx" "$OLDPWD/$venv/bin/uvicorn" server:app \
  --host 127.0.0.1 --port 18080 --workers $workers --log-level warning) &
for _ in $(seq 100); do curl -sf -X POST -H 'Content-Type: application/json' --data @"$work/body.json" \
  http://127.0.0.1:18080/infer >/dev/null 2>&1 && break; sleep 0.2; done
wrk -t2 -c$conns -d2s -s "$work/post.lua" http://127.0.0.1:18080/infer >/dev/null   # warm-up
wrk -t2 -c$conns -d${secs}s --latency -s "$work/post.lua" http://127.0.0.1:18080/infer > "$work/wrk.txt"
kill %1; wait %1 2>/dev/null || true
peer_rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt")
peer_p50=$(awk '$1=="50%" {print $2}' "$work/wrk.txt")
peer_p99=$(awk '$1=="99%" {print $2}' "$work/wrk.txt")
peer_errors=$(awk '/Non-2xx|Socket errors/' "$work/wrk.txt")

# inferd, same model, workers and concurrency (16 connections, one request in flight each).
target/release/inferd serve --listen 127.0.0.1:18081 --workers $workers 2>/dev/null &
for _ in $(seq 100); do target/release/inferd ping --addr 127.0.0.1:18081 >/dev/null 2>&1 && break; sleep 0.1; done
inputs=()
for f in "$dir"/sample/*.npy; do inputs+=(--input "$(basename "$f" .npy)=$f"); done
json=$(target/release/inferd bench --addr 127.0.0.1:18081 --model "$model" "${inputs[@]}" \
  --concurrency $conns --duration "$secs" --warmup 2 --json)

python3 - "$json" "$peer_rps" "$peer_p50" "$peer_p99" "$model" "$secs" "$peer_errors" <<'PY'
import json, sys
ours = json.loads(sys.argv[1])
peer_rps, p50, p99, model, secs, peer_errors = float(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7]
print(f"# {model}, {secs} s, 2 workers, 16 concurrent requests, client on the same cores")
print(f"onnxruntime + FastAPI/uvicorn (wrk): {peer_rps:.0f} req/s, p50 {p50}, p99 {p99} {peer_errors}")
print(f"inferd (inferd bench):               {ours['throughput_rps']:.0f} req/s, p50 {ours['p50_us']/1e3:.3f} ms, p99 {ours['p99_us']/1e3:.3f} ms, errors {ours['errors']}")
print(f"ratio inferd / peer: {ours['throughput_rps'] / peer_rps:.1f}x throughput")
PY
