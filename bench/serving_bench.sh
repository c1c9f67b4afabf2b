#!/usr/bin/env bash
# Serving figures over the real gRPC API on loopback: starts sluiced on MODEL, runs the
# load generator at several concurrency levels, then again at 16 streams while a client
# keeps sending 2,000-token prompts, and stops the daemon.
# Usage: bench/serving_bench.sh BUILD_DIR MODEL_DIR [extra sluiced flags...]
set -euo pipefail
build=$1; model=$2; shift 2
port_file=$(mktemp)
"$build/bin/sluiced" --model "$model" --listen 127.0.0.1:0 --port_file "$port_file" \
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
echo "== decode throughput and latency (prompt 32, 192 new tokens per request, ${warmup}s warm-up + ${seconds}s per level)"
"$build/bin/sluice-loadgen" --server "$addr" --streams "$levels" --seconds "$seconds" --warmup_seconds "$warmup" --vocab "$vocab" \
  --prompt_tokens 32 --max_tokens 192
echo "== the same while one more client keeps sending 2,000-token prompts"
"$build/bin/sluice-loadgen" --server "$addr" --streams 1,16 --seconds "$seconds" --warmup_seconds "$warmup" --vocab "$vocab" \
  --prompt_tokens 32 --max_tokens 192 --long_prompt_tokens 2000
"$build/bin/sluice" --server "$addr" stats | grep -E "preemptions|steps"
