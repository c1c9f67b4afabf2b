#!/usr/bin/env bash
# sluice vs llama.cpp side by side, one machine, one run (issue 16): decode tok/s at context
# 512 and prefill-512 tok/s at each weight width (sluice --quantization none/int8/int4 vs
# llama.cpp BF16/Q8_0/Q4_K_M) on the synthetic Qwen3.5 shapes, and held-out quality
# (perplexity, mean KL from bf16) on the trained demo model. Writes a markdown table.
#
#   bench/llamacpp_compare.sh [all|prepare|quality|speed|table]      (default: all)
#
# Nothing from llama.cpp is committed. It is built outside the repository, from the tree
# vendored in the llama-cpp-python sdist (0.3.36 vendors llama.cpp 0c1e570, 2026-10-01,
# which has the QWEN35 / QWEN35MOE architectures: conversion/qwen.py Qwen3_5TextModel and
# Qwen3_5MoeTextModel). The commands used:
#
#   mkdir -p /work/llamacpp && cd /work/llamacpp
#   pip download --no-binary :all: --no-deps llama-cpp-python        # llama_cpp_python-0.3.36.tar.gz
#   tar xzf llama_cpp_python-0.3.36.tar.gz
#   S=$PWD/llama_cpp_python-0.3.36/vendor/llama.cpp   # the real path: its .git file points at
#       ../../.git/modules/vendor/llama.cpp, which a symlinked path breaks (ninja then re-runs
#       cmake forever), and build-info takes the llama.cpp commit from it
#   nice -n 10 cmake -S $S -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
#     -DGGML_OPENMP=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
#     -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF \
#     -DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache
#   nice -n 10 ninja -C build -j2 llama-bench llama-quantize llama-perplexity llama-tokenize
#     (shared libraries by default: build/bin/libllama.so is what the quality harness loads)
#
# The Python side (convert_hf_to_gguf.py and bench/llamacpp_compare.py) runs in a venv
# outside the repository that reuses a torch + transformers 5.x venv (Qwen3.5 needs
# transformers >= 5; llama.cpp pins 4.57 but its Qwen3.5 converter does not import it):
#
#   python3 -m venv /work/llamavenv
#   echo /work/mlvenv/lib/python3.11/site-packages > /work/llamavenv/lib/python3.11/site-packages/mlvenv.pth
#   /work/llamavenv/bin/pip install sentencepiece 'protobuf>=4.21,<5' $S/gguf-py
#     (/work/mlvenv: torch 2.15 and transformers 5.24, safetensors, tokenizers, numpy)
#
# sluice's binaries: SLUICE_BUILD (default build/release) needs sluice-bench-model with
# --quantization, sluice-bench-budget-quality and sluice-tokenize. The committed results
# used a clean copy of one commit, built outside the shared checkout:
#   mkdir -p /work/llamacpp/sluice-head && git archive HEAD | tar -x -C /work/llamacpp/sluice-head
#   cmake -S /work/llamacpp/sluice-head -B /work/llamacpp/sluice-head/build -G Ninja \
#     -DCMAKE_BUILD_TYPE=Release -DSLUICE_CUDA=OFF -DSLUICE_BUILD_TESTS=OFF
#   ninja -C /work/llamacpp/sluice-head/build sluice-bench-model sluice-bench-budget-quality sluice-tokenize
#   SLUICE_BUILD=/work/llamacpp/sluice-head/build SLUICE_REV=<commit> bench/llamacpp_compare.sh
#
# What the phases do:
#   prepare  each model is staged (bench/llamacpp_compare.py stage: symlinks, nothing written
#            into bench/synthetic), converted with llama.cpp's own convert_hf_to_gguf.py to a
#            BF16 GGUF (--no-mtp: the synthetic checkpoints have no MTP tensors) and quantized
#            with llama-quantize to Q8_0 and Q4_K_M. Tokenizers: the synthetic checkpoints
#            (bench/make_synthetic.py) carry none, and Qwen3.5's own (248,320 ids) is not on
#            this machine; the converter needs one, so the staged copy gets Qwen3's
#            tokenizer (TOKENIZER, default /work/shared/tokenizers/qwen3, 151,669 ids; the
#            converter pads the vocabulary to config.json's 248,320 with [PAD] tokens). The
#            speed runs never tokenize (random ids on both sides), so this changes no figure.
#            The demo model is staged WITHOUT its 32 GateSkip `residual_gate` tensors:
#            llama.cpp has no such op, and the gates are part of the demo model's dense math
#            (tests/data/models/GATESKIP.md: "a request without a budget still applies g"),
#            so both engines are compared on the same gate-free weights. Its BPE
#            pre-tokenizer hash is unknown to llama.cpp; the converter is run with a
#            fallback to "gpt-2" for a plain ByteLevel pre-tokenizer (see the .py), and the
#            token ids are then checked identical.
#   quality  held-out text build/demo-corpus/heldout.txt (Twelfth Night, made by
#            `tests/fixtures/train_demo_model.py --corpus_only` if missing), tokenized as
#            bench/budget_quality.cc does; ids checked equal across HF tokenizers,
#            sluice-tokenize and llama.cpp. llama.cpp: ppl / KL / top-1 on budget_quality's
#            protocol (24 windows x 256 tokens) through libllama, plus llama-perplexity
#            --kl-divergence-base/--kl-divergence (its own protocol) on the same text.
#            sluice: sluice-bench-budget-quality on the same staged model (its dense row is
#            sluice bf16 on the same windows); int8/int4 rows only if that binary has
#            --quantization (at 247ac33 it has not; see the notes in the results file).
#   speed    per model, ROUNDS rounds; in each, for bf16 / int8 / int4: llama-bench prefill
#            (-p 512 -n 0) and decode (-p 0 -n 64 -d 512), -t 2, -r LLAMA_REPS, then
#            sluice-bench-model --threads 2 --context 512 --decode_tokens 64
#            --quantization none|int8|int4 --kv_cache_dtype bf16. OMP_WAIT_POLICY is
#            removed from the environment (passive halves llama.cpp's speed).
#   table    bench/results/llamacpp_compare.md (machine, load, date, the tables, notes).
#
# Environment (defaults): LLAMACPP_SRC LLAMACPP_BUILD (/work/llamacpp/build) LLAMACPP_PY
# (the sdist dir with llama_cpp/) PY (/work/llamavenv/bin/python) WORK (/work/llamacpp/work)
# SLUICE_BUILD (build/release) THREADS (2) ROUNDS (2) WIDTHS (bf16 int8 int4) LLAMA_REPS (3)
# WAIT_LOAD_BELOW (2) DEMO_QUANTS SLUICE_WIDTHS (the quality rows, see below)
# WAIT_MAX_S (0: do not wait) MODELS
# ("qwen3_5_0_8b qwen3_5_moe_2b8") TOKENIZER OUT (bench/results/llamacpp_compare.md).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
LLAMACPP_PY=${LLAMACPP_PY:-/work/llamacpp/llama_cpp_python-0.3.36}
LLAMACPP_SRC=${LLAMACPP_SRC:-$LLAMACPP_PY/vendor/llama.cpp}
LLAMACPP_BUILD=${LLAMACPP_BUILD:-/work/llamacpp/build}
PY=${PY:-/work/llamavenv/bin/python}
WORK=${WORK:-/work/llamacpp/work}
SLUICE_BUILD=${SLUICE_BUILD:-$root/build/release}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-2}
WIDTHS=${WIDTHS:-"bf16 int8 int4"}  # the speed run's widths
LLAMA_REPS=${LLAMA_REPS:-3}
MODELS=${MODELS:-"qwen3_5_0_8b qwen3_5_moe_2b8"}
TOKENIZER=${TOKENIZER:-/work/shared/tokenizers/qwen3}
OUT=${OUT:-$root/bench/results/llamacpp_compare.md}
HELDOUT=${HELDOUT:-$root/build/demo-corpus/heldout.txt}
# The quality run's extra llama.cpp formats: Q4_0 and Q4_1 are 4 bits everywhere (Q4_1 is
# sluice's int4/32 format: a scale and a minimum per 32), Q5_0 is what Q4_K_M falls back to
# on the 128-wide demo model.
DEMO_QUANTS=${DEMO_QUANTS:-"Q4_0 Q4_1 Q5_0"}
# sluice's quality rows: NAME=FLAGS (flags joined by '+'), each scored against bf16.
SLUICE_WIDTHS=${SLUICE_WIDTHS:-"int8=--quantization+int8 int4/128=--quantization+int4 int4/32=--quantization+int4+--int4_group_size+32 int4/32+lm_head,delta_net_in=--quantization+int4+--int4_group_size+32+--int4_int8_parts+lm_head,delta_net_in"}
phase=${1:-all}

lbin=$LLAMACPP_BUILD/bin
tool="$PY $here/llamacpp_compare.py"
res=$WORK/results
mkdir -p "$WORK" "$res"
unset OMP_WAIT_POLICY || true
for b in llama-bench llama-quantize llama-perplexity; do
  [[ -x $lbin/$b ]] || { echo "missing $lbin/$b (build llama.cpp first, see the comments)" >&2; exit 2; }
done
for b in sluice-bench-model sluice-bench-budget-quality sluice-tokenize; do
  [[ -x $SLUICE_BUILD/bin/$b ]] || { echo "missing $SLUICE_BUILD/bin/$b" >&2; exit 2; }
done
has_flag() { [[ $("$1" --helpfull 2>&1) == *"--$2 "* ]]; }  # (no grep -q under pipefail)
has_flag "$SLUICE_BUILD/bin/sluice-bench-model" quantization ||
  { echo "$SLUICE_BUILD/bin/sluice-bench-model has no --quantization (stale build?)" >&2; exit 2; }

load() { cut -d' ' -f1-3 /proc/loadavg; }
# Before each speed round: wait (at most WAIT_MAX_S, default 0) for the 1-minute load
# average to fall below WAIT_LOAD_BELOW (default 2); the loads are recorded either way.
wait_for_quiet() {
  local waited=0
  while (( waited < ${WAIT_MAX_S:-0} )) &&
        awk -v l="$(cut -d' ' -f1 /proc/loadavg)" -v t="${WAIT_LOAD_BELOW:-2}" 'BEGIN {exit !(l >= t)}'; do
    sleep 30
    waited=$((waited + 30))
  done
  (( waited == 0 )) || echo "(waited ${waited} s for the load to drop: $(load))"
}

# prepare_one NAME SRC_DIR [stage flags...]: WORK/NAME-{BF16,Q8_0,Q4_K_M}.gguf, and the
# EXTRA_QUANTS named in the environment (the demo model: the plain 4- and 5-bit formats).
prepare_one() {
  local name=$1 src=$2
  shift 2
  local bf16=$WORK/$name-BF16.gguf
  $tool stage --model "$src" --out "$WORK/$name-hf" "$@"
  if [[ ! -s $bf16 ]]; then
    nice -n 10 $tool convert --llamacpp "$LLAMACPP_SRC" --model "$WORK/$name-hf" --out "$bf16.tmp" \
      > "$WORK/$name-convert.log" 2>&1 || { tail -20 "$WORK/$name-convert.log"; exit 1; }
    mv "$bf16.tmp" "$bf16"
  fi
  for q in Q8_0 Q4_K_M ${EXTRA_QUANTS:-}; do
    if [[ ! -s $WORK/$name-$q.gguf ]]; then
      nice -n 10 "$lbin/llama-quantize" "$bf16" "$WORK/$name-$q.gguf.tmp" "$q" "$THREADS" \
        > "$WORK/$name-$q-quantize.log" 2>&1 || { tail -20 "$WORK/$name-$q-quantize.log"; exit 1; }
      mv "$WORK/$name-$q.gguf.tmp" "$WORK/$name-$q.gguf"
    fi
  done
}

do_prepare() {
  for m in $MODELS; do
    [[ -f $here/synthetic/$m/config.json ]] ||
      { echo "missing bench/synthetic/$m: python3 bench/make_synthetic.py --only $m" >&2; exit 2; }
    prepare_one "$m" "$here/synthetic/$m" --tokenizer "$TOKENIZER"
  done
  EXTRA_QUANTS="$DEMO_QUANTS" prepare_one demo "$root/deploy/models/sluice-demo" --strip-gates
}

meta_set() {  # meta_set KEY JSON_VALUE: one key of results/meta.json
  $PY - "$res/meta.json" "$1" "$2" <<'EOF'
import json, os, sys
p, k, v = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
m = json.load(open(p)) if os.path.exists(p) else {}
cur = m
keys = k.split(".")
for part in keys[:-1]:
    cur = cur.setdefault(part, {})
cur[keys[-1]] = v
json.dump(m, open(p, "w"), indent=1)
EOF
}

do_quality() {
  local started
  started=$(date -u '+%Y-%m-%d %H:%M UTC')
  if [[ ! -s $HELDOUT ]]; then
    (cd "$root" && $PY tests/fixtures/train_demo_model.py --corpus_only)
  fi
  local demo=$WORK/demo-hf
  $tool tokens --tokenizer "$demo" --text "$HELDOUT" --out "$res/heldout_ids.json" \
    --sluice-tokenize "$SLUICE_BUILD/bin/sluice-tokenize" --gguf "$WORK/demo-BF16.gguf" \
    --llamacpp-lib "$lbin" --llamacpp-py "$LLAMACPP_PY"
  meta_set heldout_tokens "$($PY -c "import json;print(len(json.load(open('$res/heldout_ids.json'))['ids']))")"
  # llama.cpp on budget_quality.cc's protocol.
  local models=(--model "Q8_0=$WORK/demo-Q8_0.gguf")
  for q in $DEMO_QUANTS Q4_K_M; do models+=(--model "$q=$WORK/demo-$q.gguf"); done
  nice -n 5 $tool quality --tokens "$res/heldout_ids.json" --ref "$WORK/demo-BF16.gguf" "${models[@]}" \
    --llamacpp-lib "$lbin" --llamacpp-py "$LLAMACPP_PY" --threads "$THREADS" \
    --windows 24 --window 256 --json "$res/quality_llamacpp.json"
  # llama.cpp's own tool, its own protocol, the same text.
  local ctx=256 kld=$WORK/demo-BF16.kld
  "$lbin/llama-perplexity" -m "$WORK/demo-BF16.gguf" -f "$HELDOUT" -c $ctx -t "$THREADS" \
    --kl-divergence-base "$kld" > "$res/ppl-BF16.log" 2>&1
  for q in Q8_0 $DEMO_QUANTS Q4_K_M; do
    "$lbin/llama-perplexity" -m "$WORK/demo-$q.gguf" -f "$HELDOUT" -c $ctx -t "$THREADS" \
      --kl-divergence-base "$kld" --kl-divergence > "$res/ppl-$q.log" 2>&1
  done
  $PY - "$res" "$here/llamacpp_compare.py" Q8_0 $DEMO_QUANTS Q4_K_M <<'EOF'
import importlib.util, json, sys
res, mod, names = sys.argv[1], sys.argv[2], sys.argv[3:]
spec = importlib.util.spec_from_file_location("lc", mod); lc = importlib.util.module_from_spec(spec); spec.loader.exec_module(lc)
rows = []
for name in ["BF16"] + names:
    r = lc.parse_perplexity(f"{res}/ppl-{name}.log"); r["name"] = name; rows.append(r)
base = lc.parse_perplexity(f"{res}/ppl-BF16.log")
json.dump({"n_ctx": base.get("n_ctx"), "chunks": base.get("chunks"), "rows": rows}, open(f"{res}/quality_llama_perplexity.json", "w"), indent=1)
print(json.dumps(rows))
EOF
  # sluice: the same staged model and windows, each width against a second, unquantized load.
  local bq=$SLUICE_BUILD/bin/sluice-bench-budget-quality
  local common=(--model "$demo" --text "$HELDOUT" --windows 24 --window 256 --threads "$THREADS"
                --skip_ratios= --floors= --experts=2 --skip_middle_third=false --repeats 1
                --decode_tokens 8)
  "$bq" "${common[@]}" --json "$res/sluice-bq-none.json" > "$res/sluice-bq-none.log" 2>&1
  local names=(bf16) spec flags i=0
  for spec in $SLUICE_WIDTHS; do
    i=$((i + 1))
    flags=${spec#*=}
    # shellcheck disable=SC2086
    "$bq" "${common[@]}" ${flags//+/ } --json "$res/sluice-bq-$i.json" > "$res/sluice-bq-$i.log" 2>&1
    names+=("${spec%%=*}")
  done
  $PY - "$res" "${names[@]}" <<'EOF'
import json, re, sys
res, names = sys.argv[1], sys.argv[2:]
rows = []
for i, name in enumerate(names):
    path = f"{res}/sluice-bq-none.json" if i == 0 else f"{res}/sluice-bq-{i}.json"
    j = json.load(open(path))
    d = next(r for r in j["rows"] if r["label"] == "dense" and r["mode"] == "prefill")
    log = open(path[:-len(".json")] + ".log").read()
    m = re.search(r"^weights: (.*?)(?: \(scored against.*\))?$", log, re.M)
    rows.append({"name": name, "perplexity": d["perplexity"], "positions": d["positions"],
                 "kl": 0.0 if i == 0 else d["kl"], "top1_agreement": 1.0 if i == 0 else d["top1_agreement"],
                 "weights": m.group(1) if m else "bf16 (as the checkpoint)"})
json.dump({"rows": rows}, open(f"{res}/quality_sluice.json", "w"), indent=1)
print(json.dumps(rows))
EOF
  meta_set runs.quality "\"$started to $(date -u '+%Y-%m-%d %H:%M UTC') (load-independent figures)\""
}

do_speed() {
  : > "$res/speed.jsonl"
  # A fresh run's loads only (meta.json keeps other keys, such as the quality run's).
  $PY -c "import json,os,sys; p=sys.argv[1]; m=json.load(open(p)) if os.path.exists(p) else {}; m.pop('loads',None); json.dump(m,open(p,'w'),indent=1)" "$res/meta.json"
  meta_set runs.speed "\"$(date -u '+%Y-%m-%d %H:%M UTC') to (unfinished)\""
  local started
  started=$(date -u '+%Y-%m-%d %H:%M UTC')
  meta_set rounds "$ROUNDS"
  meta_set llama_reps "$LLAMA_REPS"
  meta_set models "$($PY -c "import json,sys;print(json.dumps(sys.argv[1:]))" $MODELS)"
  local sb=$SLUICE_BUILD/bin/sluice-bench-model
  for m in $MODELS; do
    meta_set "loads.$m.start" "\"$(load)\""
    meta_set "dense.$m" "$(grep -q '"num_experts"' "$here/synthetic/$m/config.json" && echo false || echo true)"
    for ((r = 1; r <= ROUNDS; r++)); do
      wait_for_quiet
      meta_set "loads.$m.round $r" "\"$(load)\""
      for w in $WIDTHS; do
        local g q
        case $w in bf16) g=BF16 q=none ;; int8) g=Q8_0 q=int8 ;; int4) g=Q4_K_M q=int4 ;; esac
        local tag=$res/$m-r$r-$w
        echo "== $m round $r $w: llama.cpp $g (load $(load))"
        "$lbin/llama-bench" -m "$WORK/$m-$g.gguf" -t "$THREADS" -p 512 -n 0 -r "$LLAMA_REPS" -o json \
          > "$tag-llama-pp.json" 2> "$tag-llama-pp.log"
        "$lbin/llama-bench" -m "$WORK/$m-$g.gguf" -t "$THREADS" -p 0 -n 64 -d 512 -r "$LLAMA_REPS" -o json \
          > "$tag-llama-tg.json" 2> "$tag-llama-tg.log"
        $tool record --out "$res/speed.jsonl" --model "$m" --round "$r" --engine "llama.cpp $g" --width "$w" \
          --llama-pp "$tag-llama-pp.json" --llama-tg "$tag-llama-tg.json"
        echo "== $m round $r $w: sluice --quantization $q (load $(load))"
        "$sb" --model "$here/synthetic/$m" --threads "$THREADS" --context 512 --decode_tokens 64 \
          --quantization "$q" --kv_cache_dtype bf16 > "$tag-sluice.log" 2>&1
        $tool record --out "$res/speed.jsonl" --model "$m" --round "$r" --engine "sluice $q" --width "$w" \
          --sluice-log "$tag-sluice.log"
      done
    done
    meta_set "loads.$m.end" "\"$(load)\""
  done
  meta_set runs.speed "\"$started to $(date -u '+%Y-%m-%d %H:%M UTC')\""
}

do_table() {
  local machine=$res/machine.md
  {
    echo "# sluice vs llama.cpp, side by side (issue 16)"
    echo
    echo "Made by \`bench/llamacpp_compare.sh\` (the commands are in its comments); $(date -u '+%Y-%m-%d %H:%M UTC')."
    echo
    echo "- CPU: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p'), $(nproc) cores visible; flags:" \
         "$(for f in avx512f avx512_bf16 avx512_vnni amx_tile; do grep -qw $f /proc/cpuinfo && printf '%s ' $f || printf 'no-%s ' $f; done)"
    echo "- Memory: $(free -g | awk '/^Mem:/ {print $2}') GiB; the machine is shared with other people's builds."
    echo "- \`uptime\` when the table was written: $(uptime | sed 's/^ *//')"
    echo "- llama.cpp: commit $(sed -n 's/.*LLAMA_COMMIT = "\([^"]*\)".*/\1/p' "$LLAMACPP_BUILD/common/build-info.cpp" 2>/dev/null) (vendored in llama-cpp-python 0.3.36), Release, GGML_NATIVE (-march=native), OpenMP, shared libraries, $(gcc --version | head -1)"
    echo "- sluice: binaries of ${SLUICE_REV:-$(git -C "$root" rev-parse --short HEAD)} from $SLUICE_BUILD"
  } > "$machine"
  cat > "$res/notes.md" <<EOF
## Notes

- **Same weights.** Every GGUF is converted by llama.cpp's own \`convert_hf_to_gguf.py\` from the
  safetensors sluice loads, then quantized by \`llama-quantize\` (no imatrix). The BF16 GGUF
  holds the same bf16 matrices; the converter widens norms, the router and the SSM
  parameters to F32 (lossless).
- **Q4_K_M is a mix**, not 4 bits everywhere: it keeps the embedding/LM head and part of
  attn_v/ffn_down at Q6_K, and k-quants need rows that are a multiple of 256. The MoE
  synthetic's expert down projections (384 wide) fall back to Q8_0/Q5_0; the 128-wide demo
  model falls back almost everywhere (its "Q4_K_M" row lists what was written). sluice's
  widths are in the "weights" column (sluice-bench-model's \`weight format\`). Where it says
  "routed experts bfloat16", sluice's int8/int4 rows still read the MoE's routed experts in
  bf16 (the grouped-experts op had no quantized body in that build): only attention,
  DeltaNet, the shared expert, the embedding and the LM head are quantized.
- **Widths on the demo model.** Q4_0 (4.5 bits a weight) and Q4_1 (5.0: a scale and a
  minimum per 32, sluice's int4/32 layout) are 4 bits in every matrix; llama.cpp keeps the
  tied embedding/LM head at Q8_0, the Gated DeltaNet's fused qkv at Q8_0 and the router in
  f32 in all of them. Q4_K_M on this model is mostly Q5_0. sluice's int4/32 with
  \`--int4_int8_parts lm_head,delta_net_in\` is the same mix as Q4_1's.
- **The demo model without its gates.** GateSkip's residual gates are part of the demo
  model's dense math (tests/data/models/GATESKIP.md), and llama.cpp has no such op, so both
  engines run a copy without the 32 \`residual_gate\` tensors. That is a different (worse)
  function than the shipped model (whose dense perplexity on these windows is 35.6,
  deploy/models/sluice-demo/MODEL_CARD.md), but the same one on both sides. sluice bf16
  and llama.cpp BF16 give the same perplexity on the same windows to a few parts in 10^4, which
  checks the tokens and the protocol.
- **sluice's quantized quality.** \`sluice-bench-budget-quality --quantization ...\` scores
  each width against a second, unquantized load of the same model, so KL and top-1 are
  against sluice's own bf16, as llama.cpp's rows are against its BF16 GGUF.
- **Timing differences.** llama-bench does one warm-up run and averages its repetitions.
  sluice-bench-model times the first prefill of a fresh process (no warm-up) and the mean
  of its decode steps. Its bandwidth fraction counts the bytes one decode step reads (the
  weights at their stored width, the distinct experts the steps routed to, the KV cache and
  the recurrent state), over its own read-bandwidth probe. llama.cpp reports no bandwidth.
  For the dense model the table estimates it as file bytes × tok/s over sluice's probe.
- **A shared machine.** 2 cores, shared with other people's builds. With OpenMP's default
  (spinning) wait policy, llama.cpp loses much more than sluice when a third process takes
  a core. Figures taken at a load average above ~2 are not a fair comparison (see the loads
  under each table).
EOF
  mkdir -p "$(dirname "$OUT")"
  $tool table --results "$res" --out "$OUT" --machine "$machine"
}

case $phase in
  prepare) do_prepare ;;
  quality) do_prepare; do_quality; do_table ;;
  speed) do_prepare; do_speed; do_table ;;
  table) do_table ;;
  all) do_prepare; do_quality; do_speed; do_table ;;
  *) echo "usage: $0 [all|prepare|quality|speed|table]" >&2; exit 2 ;;
esac
