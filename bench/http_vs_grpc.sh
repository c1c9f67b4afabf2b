#!/usr/bin/env bash
# The HTTP (OpenAI-compatible) front door against the gRPC one on the same load: one
# sluiced serves both; sluice-loadgen drives gRPC GenerateStream and sluice-http-loadgen
# drives POST /v1/completions (stream, continuous_usage_stats) with the same closed-loop
# load: N streams, random token prompts, max_tokens with EOS ignored, greedy. Both count
# TTFT and ITL the same way (first chunk with tokens; each gap shared by the tokens it
# brought; nearest-rank percentiles). CPU is sluiced's utime+stime from /proc over the
# measured window only, in total and split by thread: the HTTP connection threads
# ("sluice-http*": SSE/JSON, detokenization and socket writes of HTTP requests), gRPC's own
# threads (grpc*, nexting_thread, event_engine, default-executor, ...), and the rest (the engine thread,
# which also runs the gRPC reactors' event handling and detokenization, and the compute
# threads). The load clients' own CPU is shown beside it: on a small machine they take
# cores from the daemon.
#
# Usage: bench/http_vs_grpc.sh [BUILD_DIR] [MODEL_DIR] [extra sluiced flags...]
# Environment: LEVELS ("16 64"), SECONDS_PER_LEVEL (20), WARMUP_SECONDS (5), ROUNDS (2; the
# API order alternates per round), PROMPT_TOKENS (64), MAX_TOKENS (128), OUT_DIR (keep JSON).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$here/build/release}; shift || true
model=${1:-$here/deploy/models/sluice-tiny}; shift || true
levels=${LEVELS:-16 64}
seconds=${SECONDS_PER_LEVEL:-20}
warmup=${WARMUP_SECONDS:-5}
rounds=${ROUNDS:-2}
prompt=${PROMPT_TOKENS:-64}
max_tokens=${MAX_TOKENS:-128}
out=${OUT_DIR:-$(mktemp -d)}
mkdir -p "$out"
for bin in sluiced sluice sluice-loadgen sluice-http-loadgen; do
  [[ -x $build/bin/$bin ]] || { echo "no $build/bin/$bin: build it first" >&2; exit 1; }
done

port_file=$out/grpc.port
http_port_file=$out/http.port
rm -f "$port_file" "$http_port_file"
"$build/bin/sluiced" --model "$model" --listen 127.0.0.1:0 --port_file "$port_file" \
  --http_listen 127.0.0.1:0 --http_port_file "$http_port_file" --metrics_listen= \
  --max_num_seqs 64 --kv_cache_memory $((1 << 30)) "$@" 2>"$out/sluiced.log" &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do [[ -s $port_file ]] && break; kill -0 $pid 2>/dev/null || { cat "$out/sluiced.log"; exit 1; }; sleep 0.1; done
grpc=127.0.0.1:$(cat "$port_file")
http=127.0.0.1:$(cat "$http_port_file")
until curl -sf "http://$http/health" >/dev/null; do kill -0 $pid 2>/dev/null || { cat "$out/sluiced.log"; exit 1; }; sleep 0.2; done
vocab=$("$build/bin/sluice" --server "$grpc" info | awk '/vocab_size/ {print $2}')
hz=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# "http grpc" ticks of sluiced's threads by name.
thread_ticks() {
  local http=0 grpc=0 name t
  for d in /proc/$pid/task/*; do
    name=$(cat "$d/comm" 2>/dev/null) || continue
    t=$(awk '{print $14 + $15}' "$d/stat" 2>/dev/null) || continue
    case $name in
      sluice-http*) http=$((http + t)) ;;
      grpc* | event_engine | default-executo | resolver-execut | timer_manager | nexting_thread) grpc=$((grpc + t)) ;;
    esac
  done
  echo "$http $grpc"
}
echo "sluiced pid $pid: gRPC $grpc, HTTP $http; model $model (vocab $vocab); $(nproc) cores"
echo "load: closed loop, prompt $prompt tokens, $max_tokens new tokens (EOS ignored), greedy;" \
     "levels $levels; ${warmup} s warm-up + ${seconds} s measured; $rounds rounds"

runs=$out/runs.tsv
: >"$runs"
for round in $(seq 1 "$rounds"); do
  order="grpc http"
  (( round % 2 == 0 )) && order="http grpc"
  for level in $levels; do
    for api in $order; do
      json=$out/$api-$level-$round.json
      if [[ $api == grpc ]]; then
        "$build/bin/sluice-loadgen" --server "$grpc" --streams "$level" --seconds "$seconds" --warmup_seconds "$warmup" \
          --vocab "$vocab" --prompt_tokens "$prompt" --max_tokens "$max_tokens" --quiet --json "$json" >"$json.txt" &
      else
        "$build/bin/sluice-http-loadgen" --server "$http" --streams "$level" --seconds "$seconds" \
          --warmup_seconds "$warmup" --vocab "$vocab" --prompt_tokens "$prompt" --max_tokens "$max_tokens" \
          --json "$json" >"$json.txt" &
      fi
      client=$!
      sleep "$warmup"
      d0=$(ticks $pid); c0=$(ticks $client); th0=$(thread_ticks); t0=$(date +%s.%N)
      # The client is sampled half a second early: it exits as its window ends.
      sleep "$(awk -v s="$seconds" 'BEGIN { print (s > 1 ? s - 0.5 : s / 2) }')"
      c1=$(ticks $client 2>/dev/null || echo "$c0"); tc1=$(date +%s.%N)
      sleep 0.5
      d1=$(ticks $pid); th1=$(thread_ticks); t1=$(date +%s.%N)
      wait $client
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$api" "$level" "$round" "$d0" "$d1" "$c0" "$c1" \
        "$t0 $t1" "$json" "$th0" "$th1" "$tc1" >>"$runs"
      echo "  round $round, $level streams, $api: done"
    done
  done
done

python3 - "$runs" "$hz" <<'EOF'
import json, sys, statistics
runs, hz = sys.argv[1], float(sys.argv[2])
rows = {}
for line in open(runs):
    api, level, rnd, d0, d1, c0, c1, ts, path, th0, th1, tc1 = line.rstrip("\n").split("\t")
    t0, t1 = map(float, ts.split())
    (h0, g0), (h1, g1) = map(float, th0.split()), map(float, th1.split())
    j = json.load(open(path))["levels"][0]
    tps = j.get("output_tokens_per_s", j.get("throughput", {}).get("output_tokens_per_s", 0.0))
    wall = t1 - t0
    daemon_cpu = (float(d1) - float(d0)) / hz
    rows.setdefault((int(level), api), []).append({
        "ttft50": j["ttft_ms"].get("p50"), "ttft99": j["ttft_ms"].get("p99"),
        "itl50": j["itl_ms"].get("p50"), "itl99": j["itl_ms"].get("p99"), "tps": tps,
        "cores": daemon_cpu / wall, "ms_per_1k": 1e6 * daemon_cpu / max(tps * wall, 1e-9),
        "http_cores": (h1 - h0) / hz / wall, "grpc_cores": (g1 - g0) / hz / wall,
        "rest_cores": (daemon_cpu - (h1 - h0 + g1 - g0) / hz) / wall,
        "client_cores": (float(c1) - float(c0)) / hz / (float(tc1) - t0)})

def vals(level, api, key):
    return [r[key] for r in rows[(level, api)] if r[key] is not None]

def med(level, api, key):
    v = vals(level, api, key)
    return statistics.median(v) if v else float("nan")

def spread(level, api, key):
    v = vals(level, api, key)
    return f"{min(v):.2f}-{max(v):.2f}" if v else "-"

keys = [("ttft50", "TTFT p50 ms"), ("ttft99", "TTFT p99 ms"), ("itl50", "ITL p50 ms"), ("itl99", "ITL p99 ms"),
        ("tps", "output tok/s"), ("cores", "sluiced CPU (cores)"), ("ms_per_1k", "sluiced CPU ms / 1k tokens"),
        ("http_cores", "  HTTP threads (cores)"), ("grpc_cores", "  gRPC threads (cores)"),
        ("rest_cores", "  engine+compute (cores)"), ("client_cores", "load client CPU (cores)")]
print()
print("medians over rounds (min-max in brackets); added = HTTP - gRPC")
for level in sorted({l for l, _ in rows}):
    print(f"\n{level} streams")
    print(f"  {'':28s} {'gRPC':>10s} {'':19s} {'HTTP':>10s} {'':19s} {'added':>10s}")
    for key, name in keys:
        g, h = med(level, "grpc", key), med(level, "http", key)
        print(f"  {name:28s} {g:10.2f} [{spread(level, 'grpc', key):>17s}] {h:10.2f} "
              f"[{spread(level, 'http', key):>17s}] {h - g:+10.2f}")
EOF
echo
echo "raw figures: $out"
