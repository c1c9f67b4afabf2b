#!/usr/bin/env bash
# Serving figures over the real gRPC API on loopback: starts sluiced on MODEL, runs the
# load generator (clients/loadgen, sluice-loadgen) at several concurrency levels, then again
# at 16 streams while a client keeps sending 2,000-token prompts, optionally at Poisson
# arrival rates, and stops the daemon.
# Usage: bench/serving_bench.sh BUILD_DIR MODEL_DIR [extra sluiced flags...]
# Environment: SECONDS_PER_LEVEL (15), WARMUP_SECONDS (5), LEVELS (1,4,16,64), RATES (empty:
# no Poisson phase, e.g. 0.5,1,2,4), BUDGET_MIX (e.g. 0.7:dense,0.3:skip_ratio=0.5), GOODPUT
# (e.g. ttft=0.5,itl=0.1,e2e=10), OUT_DIR (write each phase's JSON there, and a PNG of it
# when build/venv has matplotlib: scripts/setup-venv.sh).
set -euo pipefail
build=$1; model=$2; shift 2
port_file=$(mktemp)
"$build/bin/sluiced" --model "$model" --listen 127.0.0.1:0 --http_listen= --port_file "$port_file" \
  --metrics_listen= --max_num_seqs 64 --kv_cache_memory $((4 << 30)) --max_model_len 4096 "$@" \
  2>/tmp/sluiced-bench.log &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$port_file"' EXIT
alive() { kill -0 $pid 2>/dev/null || { echo "sluiced exited:"; cat /tmp/sluiced-bench.log; exit 1; }; }
for _ in $(seq 1 600); do [[ -s $port_file ]] && break; alive; sleep 0.1; done
addr=127.0.0.1:$(cat "$port_file")
until "$build/bin/sluice" --server "$addr" health >/dev/null 2>&1; do alive; sleep 0.2; done
vocab=$("$build/bin/sluice" --server "$addr" info | awk '/vocab_size/ {print $2}')
seconds=${SECONDS_PER_LEVEL:-15}
warmup=${WARMUP_SECONDS:-5}  # load before each window, not measured (steady state)
levels=${LEVELS:-1,4,16,64}
extra=()
[[ -n ${BUDGET_MIX:-} ]] && extra+=(--budget_mix "$BUDGET_MIX")
[[ -n ${GOODPUT:-} ]] && extra+=(--goodput "$GOODPUT")
out_dir=${OUT_DIR:-}
[[ -n $out_dir ]] && mkdir -p "$out_dir"
here=$(cd "$(dirname "$0")/.." && pwd)
# sluice-loadgen with the common flags; PHASE names the JSON (and PNG) in OUT_DIR.
loadgen() {
  local phase=$1; shift
  local json=()
  [[ -n $out_dir ]] && json=(--json "$out_dir/$phase.json")
  "$build/bin/sluice-loadgen" --server "$addr" --seconds "$seconds" --warmup_seconds "$warmup" --vocab "$vocab" \
    "${extra[@]}" "${json[@]}" "$@"
  if [[ -n $out_dir && -x $here/build/venv/bin/python ]] && "$here/build/venv/bin/python" -c "import matplotlib" 2>/dev/null; then
    "$here/build/venv/bin/python" "$here/clients/loadgen/plot_loadgen.py" "$out_dir/$phase.json" -o "$out_dir/$phase.png" >/dev/null
  fi
}
echo "== decode throughput and latency (prompt 32, 192 new tokens per request, ${warmup}s warm-up + ${seconds}s per level)"
loadgen closed --streams "$levels" --prompt_tokens 32 --max_tokens 192
echo "== the same while one more client keeps sending 2,000-token prompts"
loadgen long_prompts --streams 1,16 --prompt_tokens 32 --max_tokens 192 --long_prompt_tokens 2000
if [[ -n ${RATES:-} ]]; then
  echo "== Poisson arrivals at ${RATES} requests/s (prompt uniform:16:256, 192 new tokens)"
  loadgen poisson --mode poisson --rates "$RATES" --prompt_tokens uniform:16:256 --max_tokens 192
fi
[[ -n $out_dir ]] && echo "JSON and PNG in $out_dir"
"$build/bin/sluice" --server "$addr" stats | grep -E "preemptions|steps"
