#!/usr/bin/env python3
"""Memory sizing of sluiced from a checkpoint's config.json: weights, KV cache, state slots.

  python3 deploy/sizing.py [--kv_cache_memory BYTES] [--max_num_seqs N] [--max_model_len L]
                           [--contexts 4096,32768] [--markdown] [CONFIG ...]

With no CONFIG it sizes the published flagship configs under tests/data/configs/.
Parameter counts come from `sluice-inspect --config` (the engine's own shape-only load),
so they are the engine's figures, not this script's; the cache shapes are read from the
config here and cross-checked against what sluice-inspect prints.

The arithmetic is the engine's (engine/engine.cc, engine/cache/*.cc):

- KV cache (--kv_cache_dtype, sluiced's default bf16): per token and attention layer 2 (K
  and V) x num_kv_heads x head_dim x 2 bytes (f32: x 4; fp8: x 1, plus one 4-byte scale per
  K and V row: 2 x num_kv_heads x 4), in blocks of 16 tokens; a sequence of L tokens holds
  ceil(L / 16) blocks.
- Recurrent state (Gated DeltaNet layers, f32): one slot per running sequence, per linear
  layer 4 x (conv_dim x (conv_kernel - 1) + num_value_heads x key_head_dim x value_head_dim)
  bytes, conv_dim = 2 x num_key_heads x key_head_dim + num_value_heads x value_head_dim.
- --kv_cache_memory holds --max_num_seqs state slots (hybrid models: reserved up front,
  whether used or not) and, in what is left, the KV blocks. Start-up fails when the slots
  do not fit, or when the blocks cannot hold one sequence of --max_model_len.
- Weights: the checkpoint is memory-mapped in its stored dtype (bf16 for every flagship,
  2 bytes a parameter) and every linear layer's weight is packed once, at load, into
  oneDNN's layout (kernels/cpu/linear_cpu.cc): about the same bytes again, anonymous.
  The mapped pages are clean and the kernel may drop them under pressure, but they are
  charged to the container's cgroup, so a memory limit should cover both copies.
- Runtime: RUNTIME_OVERHEAD below (measured; tests/python/manifests_test.py checks a
  real daemon's resident set stays under this script's figure).
"""

import argparse
import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BLOCK_SIZE = 16  # engine/engine.h EngineOptions::block_size
F32 = 4
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
KV_DTYPE_BYTES = {"f32": 4, "bf16": 2, "fp8": 1}  # --kv_cache_dtype (engine/cache/kv_cache.cc)
DEFAULT_KV_CACHE_DTYPE = "bf16"  # sluiced's default
DEFAULT_KV_CACHE_MEMORY = 2 << 30
DEFAULT_MAX_NUM_SEQS = 64  # sluiced's default
FLAGSHIPS = [
    ("Qwen3.5-0.8B", "tests/data/configs/qwen3_5_0_8b/config.json"),
    ("Qwen3.5-35B-A3B", "tests/data/configs/qwen3_5_35b_a3b/config.partial.json"),
    ("Qwen3-Next-80B-A3B", "tests/data/configs/qwen3_next_80b_a3b_instruct/config.json"),
    ("Mixtral-8x7B", "tests/data/configs/mixtral_8x7b_v0_1/config.json"),
]
HYBRID_TYPES = {"qwen3_next", "qwen3_5_text", "qwen3_5_moe_text", "qwen3_5", "qwen3_5_moe"}
GIB = 1 << 30
MIB = 1 << 20
# Besides weights and --kv_cache_memory: gRPC, oneDNN, thread pools, RoPE table, tokenizer,
# and the step's activations and logits. Measured on a Qwen3.5-0.8B-shaped checkpoint
# (--max_num_batched_tokens 2048, 8 concurrent 512-token prompts): 0.17 GiB idle, 0.53 GiB
# at peak; rounded up for wider models, whose activations per token are larger.
RUNTIME_OVERHEAD = 1 * GIB


def default_inspect():
    return os.path.join(os.environ.get("SLUICE_BIN_DIR", os.path.join(ROOT, "build", "release", "bin")),
                        "sluice-inspect")


class ModelShape:
    """The cache-relevant shapes of one config.json, as the engine reads them."""

    def __init__(self, path, inspect=None, kv_cache_dtype=DEFAULT_KV_CACHE_DTYPE):
        self.path = path
        self.kv_cache_dtype = kv_cache_dtype
        with open(path) as f:
            root = json.load(f)
        outer = root.get("model_type", "")
        j = root
        if outer in ("qwen3_5", "qwen3_5_moe") and isinstance(root.get("text_config"), dict):
            j = root["text_config"]  # multimodal wrapper: the text decoder's config
        self.model_type = j.get("model_type", outer)
        self.num_layers = int(j["num_hidden_layers"])
        self.num_attention_heads = int(j["num_attention_heads"])
        self.num_kv_heads = int(j.get("num_key_value_heads", self.num_attention_heads))
        self.head_dim = int(j.get("head_dim") or int(j["hidden_size"]) // self.num_attention_heads)
        self.max_position_embeddings = int(j.get("max_position_embeddings", 2048))
        hybrid = self.model_type in HYBRID_TYPES
        if isinstance(j.get("layer_types"), list):
            types = list(j["layer_types"])
        elif hybrid:
            interval = int(j.get("full_attention_interval", 4))
            types = ["full_attention" if (i + 1) % interval == 0 else "linear_attention"
                     for i in range(self.num_layers)]
        else:
            types = ["full_attention"] * self.num_layers
        self.num_attention_layers = types.count("full_attention")
        self.num_linear_layers = types.count("linear_attention")
        if self.num_linear_layers:
            self.linear_key_heads = int(j["linear_num_key_heads"])
            self.linear_value_heads = int(j["linear_num_value_heads"])
            self.linear_key_head_dim = int(j["linear_key_head_dim"])
            self.linear_value_head_dim = int(j["linear_value_head_dim"])
            self.conv_kernel = int(j.get("linear_conv_kernel_dim", 4))
        dtype = j.get("dtype") or j.get("torch_dtype") or root.get("dtype") or root.get("torch_dtype")
        self.dtype_assumed = dtype is None
        self.dtype = dtype or "bfloat16"  # published checkpoints are bf16; say so when assumed
        self.total_parameters = None
        self.active_parameters = None
        if inspect is not None:
            self._inspect(inspect)

    def _inspect(self, binary):
        out = subprocess.run([binary, f"--config={self.path}"], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"{binary} --config={self.path}: {out.stderr.strip()}")
        text = out.stdout
        self.total_parameters = int(re.search(r"^total parameters\s+(\d+)", text, re.M).group(1))
        self.active_parameters = int(re.search(r"^active parameters\s+(\d+)", text, re.M).group(1))
        m = re.search(r"^layers\s+(\d+) \((\d+) full attention, (\d+) linear attention\)", text, re.M)
        heads = re.search(r"heads (\d+)/(\d+) x (\d+)", text)
        engine = (int(m.group(1)), int(m.group(2)), int(m.group(3)), int(heads.group(2)), int(heads.group(3)))
        mine = (self.num_layers, self.num_attention_layers, self.num_linear_layers, self.num_kv_heads, self.head_dim)
        if engine != mine:
            raise RuntimeError(f"{self.path}: sluice-inspect reads (layers, attention, linear, kv heads, head_dim) "
                               f"{engine}, this script {mine}")

    # --- per-unit bytes -------------------------------------------------------------
    @property
    def kv_bytes_per_token(self):
        row = self.head_dim * KV_DTYPE_BYTES[self.kv_cache_dtype] + (F32 if self.kv_cache_dtype == "fp8" else 0)
        return self.num_attention_layers * 2 * self.num_kv_heads * row

    @property
    def kv_bytes_per_block(self):
        return self.kv_bytes_per_token * BLOCK_SIZE

    @property
    def state_bytes_per_slot(self):
        if not self.num_linear_layers:
            return 0
        conv_dim = 2 * self.linear_key_heads * self.linear_key_head_dim + self.linear_value_heads * self.linear_value_head_dim
        recurrent = self.linear_value_heads * self.linear_key_head_dim * self.linear_value_head_dim
        return self.num_linear_layers * F32 * (conv_dim * (self.conv_kernel - 1) + recurrent)

    @property
    def weight_bytes(self):
        return self.total_parameters * DTYPE_BYTES[self.dtype]

    # --- what a --kv_cache_memory budget holds ---------------------------------------
    def blocks_for(self, tokens):
        return -(-tokens // BLOCK_SIZE)

    def kv_blocks(self, kv_cache_memory, max_num_seqs):
        """Total KV blocks the engine makes (engine.cc), or None when start-up fails on the slots."""
        state = self.state_bytes_per_slot * max_num_seqs
        if state >= kv_cache_memory:
            return None
        return min((kv_cache_memory - state) // self.kv_bytes_per_block, 1 << 30) if self.num_attention_layers else None

    def concurrent_sequences(self, kv_cache_memory, max_num_seqs, context):
        """Sequences of `context` tokens that run at once: KV blocks, state slots and max_num_seqs."""
        blocks = self.kv_blocks(kv_cache_memory, max_num_seqs)
        if blocks is None:
            return 0
        return min(max_num_seqs, blocks // self.blocks_for(context))

    def best_concurrency(self, kv_cache_memory, context):
        """The most sequences of `context` tokens the budget holds with --max_num_seqs set to
        exactly that many (each one then costs a slot plus its blocks)."""
        per_seq = self.state_bytes_per_slot + self.blocks_for(context) * self.kv_bytes_per_block
        return kv_cache_memory // per_seq

    def min_kv_cache_memory(self, max_num_seqs, max_model_len):
        """The smallest --kv_cache_memory that starts: every slot plus one full-length sequence."""
        return self.state_bytes_per_slot * max_num_seqs + self.blocks_for(max_model_len) * self.kv_bytes_per_block + 1

    def process_memory_bytes(self, kv_cache_memory):
        """What a pod's memory request should cover: the mapped checkpoint, its packed copy,
        the cache budget and the runtime (see RUNTIME_OVERHEAD)."""
        return 2 * self.weight_bytes + kv_cache_memory + RUNTIME_OVERHEAD

    def memory_floor_bytes(self, kv_cache_memory):
        """The anonymous memory alone (packed weights, cache, runtime): below this the process
        cannot run; between it and process_memory_bytes the kernel drops mapped pages."""
        return self.weight_bytes + kv_cache_memory + RUNTIME_OVERHEAD


def gib(n):
    return f"{n / GIB:.2f} GiB"


def count(n):
    return f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"


def human(n):
    if n >= GIB:
        return f"{n / GIB:.2f} GiB"
    if n >= MIB:
        return f"{n / MIB:.1f} MiB"
    return f"{n / 1024:.0f} KiB"


def tables(models, kv_cache_memory, max_num_seqs, contexts):
    """Two tables: the per-unit costs of each model, and what the budget buys."""
    shapes_head = ["model", "params total / active", "weights", "attention / linear layers",
                   "KV per token", "state per slot"] + [f"one {c // 1024}k sequence" for c in contexts]
    shapes = []
    for name, s in models:
        row = [name, f"{count(s.total_parameters)} / {count(s.active_parameters)}",
               human(s.weight_bytes) + (" (bf16 assumed)" if s.dtype_assumed else ""),
               f"{s.num_attention_layers} / {s.num_linear_layers}", human(s.kv_bytes_per_token),
               human(s.state_bytes_per_slot) if s.state_bytes_per_slot else "-"]
        row += [human(s.state_bytes_per_slot + s.blocks_for(c) * s.kv_bytes_per_block) for c in contexts]
        shapes.append(row)
    budget_head = ["model", f"{max_num_seqs} state slots"]
    budget_head += [f"at {c // 1024}k, --max_num_seqs={max_num_seqs}" for c in contexts]
    budget_head += [f"at {c // 1024}k, --max_num_seqs tuned" for c in contexts]
    budget_head += ["pod memory", "floor"]
    budget = []
    for name, s in models:
        slots = s.state_bytes_per_slot * max_num_seqs
        row = [name, (human(slots) + (" (does not fit)" if slots >= kv_cache_memory else "")) if slots else "-"]
        row += [str(s.concurrent_sequences(kv_cache_memory, max_num_seqs, c)) for c in contexts]
        row += [str(s.best_concurrency(kv_cache_memory, c)) for c in contexts]
        row.append(human(s.process_memory_bytes(kv_cache_memory)))
        row.append(human(s.memory_floor_bytes(kv_cache_memory)))
        budget.append(row)
    return (shapes_head, shapes), (budget_head, budget)


def print_table(head, rows, markdown):
    if markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for r in rows:
            print("| " + " | ".join(r) + " |")
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip())
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("configs", nargs="*", help="config.json files (default: the flagships in tests/data/configs)")
    ap.add_argument("--kv_cache_memory", type=int, default=DEFAULT_KV_CACHE_MEMORY)
    ap.add_argument("--max_num_seqs", type=int, default=DEFAULT_MAX_NUM_SEQS)
    ap.add_argument("--kv_cache_dtype", default=DEFAULT_KV_CACHE_DTYPE, choices=sorted(KV_DTYPE_BYTES))
    ap.add_argument("--contexts", default="4096,32768", help="context lengths for the concurrency columns")
    ap.add_argument("--max_model_len", type=int, default=32768,
                    help="for the 'smallest --kv_cache_memory that starts' column")
    ap.add_argument("--inspect", default=default_inspect(), help="the sluice-inspect binary")
    ap.add_argument("--markdown", action="store_true", help="print Markdown tables (deploy/README.md)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    contexts = [int(x) for x in args.contexts.split(",")]
    if args.configs:
        entries = [(os.path.basename(os.path.dirname(os.path.abspath(p))), p) for p in args.configs]
    else:
        entries = [(n, os.path.join(ROOT, p)) for n, p in FLAGSHIPS]
    models = [(n, ModelShape(p, inspect=args.inspect, kv_cache_dtype=args.kv_cache_dtype)) for n, p in entries]

    if args.json:
        out = {}
        for n, s in models:
            out[n] = {
                "config": os.path.relpath(s.path, ROOT), "total_parameters": s.total_parameters,
                "active_parameters": s.active_parameters, "weight_bytes": s.weight_bytes, "dtype": s.dtype,
                "attention_layers": s.num_attention_layers, "linear_layers": s.num_linear_layers,
                "kv_bytes_per_token": s.kv_bytes_per_token, "state_bytes_per_slot": s.state_bytes_per_slot,
                "kv_blocks": s.kv_blocks(args.kv_cache_memory, args.max_num_seqs),
                "concurrent_sequences": {c: s.concurrent_sequences(args.kv_cache_memory, args.max_num_seqs, c)
                                         for c in contexts},
                "best_concurrency": {c: s.best_concurrency(args.kv_cache_memory, c) for c in contexts},
                "min_kv_cache_memory": s.min_kv_cache_memory(args.max_num_seqs, args.max_model_len),
            }
        json.dump(out, sys.stdout, indent=2)
        print()
        return

    (sh, sr), (bh, br) = tables(models, args.kv_cache_memory, args.max_num_seqs, contexts)
    print(f"Per model (KV cache in {args.kv_cache_dtype}, state in f32, KV in blocks of {BLOCK_SIZE} tokens; a sequence "
          f"costs one state slot plus its blocks):\n")
    print_table(sh, sr, args.markdown)
    print(f"\nWhat --kv_cache_memory={args.kv_cache_memory} ({gib(args.kv_cache_memory)}) buys, in "
          f"sequences running at once (0: start-up fails or nothing fits); pod memory = 2 x weights "
          f"+ budget + {gib(RUNTIME_OVERHEAD)} runtime; floor: the same with 1 x weights:\n")
    print_table(bh, br, args.markdown)
    print()
    print(f"Smallest --kv_cache_memory that starts with --max_num_seqs={args.max_num_seqs} and "
          f"--max_model_len={args.max_model_len} (all slots + one full-length sequence):")
    for n, s in models:
        L = min(args.max_model_len, s.max_position_embeddings)
        print(f"  {n}: {human(s.min_kv_cache_memory(args.max_num_seqs, L))}"
              + (f" (max_model_len {L}, the model's)" if L != args.max_model_len else ""))


if __name__ == "__main__":
    main()
