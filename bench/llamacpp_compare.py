#!/usr/bin/env python3
"""Helpers for bench/llamacpp_compare.sh (sluice vs llama.cpp, side by side).

Nothing here is part of sluice; nothing from llama.cpp is committed. Subcommands:

  stage    --model DIR --out DIR [--tokenizer DIR] [--strip-gates]
           A directory convert_hf_to_gguf.py can read, without touching the source: the
           config, index and safetensors are symlinked; tokenizer files come from
           --tokenizer (the synthetic checkpoints have none). --strip-gates writes a copy of
           the weights without GateSkip's `*.residual_gate.*` tensors (llama.cpp has no such
           op), and the staged directory is then a complete model both sides can load.
  convert  --llamacpp SRC --model DIR --out FILE [--outtype bf16]
           llama.cpp's own convert_hf_to_gguf.py, run in-process with one fallback: a BPE
           tokenizer whose pre-tokenizer hash llama.cpp does not know (the demo model's own
           byte-level BPE) is written with pre-tokenizer "gpt-2" *only* if tokenizer.json's
           pre_tokenizer is plain ByteLevel with use_regex (the GPT-2 regex, which is what
           llama.cpp's "gpt-2" pre-type applies). `tokens` checks the result token by token.
  tokens   --tokenizer DIR --text FILE --out FILE.json [--sluice-tokenize BIN] [--gguf FILE
           --llamacpp-lib DIR --llamacpp-py DIR]
           Held-out ids as bench/budget_quality.cc makes them (tokenizer.json, no special
           tokens), from HF `tokenizers`; checked equal to sluice-tokenize's and to
           llama.cpp's own tokenization of the same text with the GGUF's vocabulary.
  quality  --tokens FILE.json --ref BF16.gguf --model NAME=FILE.gguf ... --llamacpp-lib DIR
           --llamacpp-py DIR [--windows 24 --window 256 --threads 2] --json OUT
           Teacher-forced quality through llama.cpp (libllama via llama-cpp-python's ctypes
           bindings), on exactly budget_quality.cc's protocol: the first --windows windows
           of --window tokens, each window one fresh sequence, every position but the last
           scored: perplexity, mean KL(ref || model) and top-1 agreement against the ref.
  ppl      --log FILE  Parses llama-perplexity output (Mean PPL, Mean KLD, Same top p).
  sluice-bench --log FILE   Parses sluice-bench-model output.
  gguf-types --gguf FILE    The tensor types llama-quantize actually wrote (k-quants fall back
           to other types for rows not a multiple of 256, e.g. every matrix of a 128-wide model).
  record   --out speed.jsonl --model M --round R --engine E --width W
           (--sluice-log LOG | --llama-pp PP.json --llama-tg TG.json)   One speed figure.
  table    --results DIR --out FILE.md --machine FILE   The markdown report.
"""
import argparse
import glob
import importlib
import json
import math
import os
import re
import statistics
import subprocess
import sys
import types


# ----------------------------------------------------------------------------- stage

def cmd_stage(a):
    os.makedirs(a.out, exist_ok=True)
    src = os.path.abspath(a.model)

    def link(name):
        dst = os.path.join(a.out, name)
        if os.path.lexists(dst):
            os.remove(dst)
        os.symlink(os.path.join(src, name), dst)

    with open(os.path.join(src, "config.json")) as f:
        config = json.load(f)
    if config.get("architectures"):
        link("config.json")
    else:
        # bench/make_synthetic.py writes no `architectures`, which the converter dispatches on.
        archs = {"qwen3_5_text": "Qwen3_5ForCausalLM", "qwen3_5_moe_text": "Qwen3_5MoeForCausalLM"}
        if config.get("model_type") not in archs:
            sys.exit(f"stage: no architectures in config.json and no default for {config.get('model_type')}")
        config["architectures"] = [archs[config["model_type"]]]
        dst = os.path.join(a.out, "config.json")
        if os.path.lexists(dst):
            os.remove(dst)
        with open(dst, "w") as f:
            json.dump(config, f, indent=2)
        print(f"stage: config.json copied with architectures = {config['architectures']}")
    weights = sorted(glob.glob(os.path.join(src, "*.safetensors")))
    if a.strip_gates:
        from safetensors import safe_open
        from safetensors.torch import save_file
        if len(weights) != 1:
            sys.exit("--strip-gates handles a single-file checkpoint")
        kept, dropped = {}, 0
        with safe_open(weights[0], "pt") as f:
            meta = f.metadata() or {"format": "pt"}
            for k in f.keys():
                if ".residual_gate." in k:
                    dropped += 1
                else:
                    kept[k] = f.get_tensor(k)
        dst = os.path.join(a.out, "model.safetensors")
        if os.path.lexists(dst):
            os.remove(dst)
        save_file(kept, dst, metadata=meta)
        print(f"stage: {len(kept)} tensors kept, {dropped} residual_gate tensors dropped")
    else:
        for w in weights:
            link(os.path.basename(w))
        if os.path.exists(os.path.join(src, "model.safetensors.index.json")):
            link("model.safetensors.index.json")
    tok_dir = a.tokenizer or src
    for name in ("tokenizer.json", "tokenizer_config.json"):
        p = os.path.join(tok_dir, name)
        dst = os.path.join(a.out, name)
        if os.path.lexists(dst):
            os.remove(dst)
        if os.path.exists(p):
            os.symlink(os.path.abspath(p), dst)
    if not os.path.exists(os.path.join(a.out, "tokenizer.json")):
        sys.exit(f"stage: no tokenizer.json in {tok_dir} (pass --tokenizer)")


# ----------------------------------------------------------------------------- convert

def cmd_convert(a):
    src = os.path.abspath(a.llamacpp)
    sys.path.insert(0, src)
    sys.path.insert(1, os.path.join(src, "gguf-py"))
    import conversion.base as base  # llama.cpp's converter package

    with open(os.path.join(a.model, "tokenizer.json")) as f:
        pre = json.load(f).get("pre_tokenizer") or {}
    plain_byte_level = pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
    original = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer):
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            if not plain_byte_level:
                raise
            print("convert: unknown BPE pre-tokenizer hash; tokenizer.json's pre_tokenizer is "
                  "plain ByteLevel (GPT-2 regex): writing tokenizer.ggml.pre = gpt-2", flush=True)
            return "gpt-2"

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    sys.argv = ["convert_hf_to_gguf.py", a.model, "--outtype", a.outtype, "--outfile", a.out, "--no-mtp"]
    script = os.path.join(src, "convert_hf_to_gguf.py")
    code = compile(open(script).read(), script, "exec")
    exec(code, {"__name__": "__main__", "__file__": script})


# ----------------------------------------------------------------------------- llama.cpp via ctypes

def load_llama(lib_dir, py_dir):
    """llama-cpp-python's low-level ctypes module, on our libllama, without its __init__
    (which pulls in the high-level API and its extra dependencies)."""
    os.environ["LLAMA_CPP_LIB_PATH"] = os.path.abspath(lib_dir)
    pkg = types.ModuleType("llama_cpp")
    pkg.__path__ = [os.path.join(os.path.abspath(py_dir), "llama_cpp")]
    sys.modules["llama_cpp"] = pkg
    lc = importlib.import_module("llama_cpp.llama_cpp")
    if not os.environ.get("LLAMACPP_VERBOSE"):
        # Keep warnings and errors (level >= 3) on stderr, drop llama.cpp's info chatter.
        @lc.llama_log_callback
        def quiet(level, text, user_data):
            if level in (3, 4) and text:
                sys.stderr.write(text.decode(errors="replace"))
        lc._quiet_log = quiet  # keep a reference: the C side holds the pointer
        lc.llama_log_set(quiet, None)
    lc.llama_backend_init()
    return lc


class LlamaModel:
    def __init__(self, lc, path, n_ctx, threads):
        self.lc = lc
        mp = lc.llama_model_default_params()
        self.model = lc.llama_model_load_from_file(path.encode(), mp)
        if not self.model:
            sys.exit(f"cannot load {path}")
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        cp = lc.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = n_ctx
        cp.n_ubatch = n_ctx
        cp.n_seq_max = 1
        cp.n_threads = threads
        cp.n_threads_batch = threads
        self.ctx = lc.llama_init_from_model(self.model, cp)
        if not self.ctx:
            sys.exit(f"cannot create a context for {path}")
        self.n_ctx = n_ctx

    def tokenize(self, text):
        raw = text.encode("utf-8")
        n = len(raw) + 16
        buf = (self.lc.llama_token * n)()
        got = self.lc.llama_tokenize(self.vocab, raw, len(raw), buf, n, False, False)
        if got < 0:
            sys.exit("llama_tokenize: buffer too small")
        return list(buf[:got])

    def logits(self, ids):
        """All rows' logits of ids as one fresh sequence (numpy [len, vocab], float64)."""
        import numpy as np
        lc = self.lc
        lc.llama_memory_clear(lc.llama_get_memory(self.ctx), True)
        n = len(ids)
        batch = lc.llama_batch_init(n, 0, 1)
        try:
            for i, t in enumerate(ids):
                batch.token[i] = t
                batch.pos[i] = i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 1
            batch.n_tokens = n
            if lc.llama_decode(self.ctx, batch) != 0:
                sys.exit("llama_decode failed")
            ptr = lc.llama_get_logits(self.ctx)
            out = np.ctypeslib.as_array(ptr, shape=(n * self.n_vocab,)).reshape(n, self.n_vocab)
            return out.astype(np.float64)
        finally:
            lc.llama_batch_free(batch)

    def close(self):
        self.lc.llama_free(self.ctx)
        self.lc.llama_model_free(self.model)


# ----------------------------------------------------------------------------- tokens

def cmd_tokens(a):
    from tokenizers import Tokenizer
    text = open(a.text, encoding="utf-8").read()
    tok = Tokenizer.from_file(os.path.join(a.tokenizer, "tokenizer.json"))
    ids = tok.encode(text, add_special_tokens=False).ids
    checks = {"hf_tokenizers": len(ids)}
    if a.sluice_tokenize:
        line = json.dumps({"text": text}) + "\n"
        out = subprocess.run([a.sluice_tokenize, f"--tokenizer={a.tokenizer}"], input=line,
                             capture_output=True, text=True, check=True).stdout
        sl = json.loads(out.strip().splitlines()[0])["ids"]
        if sl != ids:
            first = next((i for i, (x, y) in enumerate(zip(sl, ids)) if x != y), min(len(sl), len(ids)))
            sys.exit(f"tokens: sluice-tokenize differs from tokenizers at {first} ({len(sl)} vs {len(ids)} ids)")
        checks["sluice_tokenize"] = "identical"
    if a.gguf:
        lc = load_llama(a.llamacpp_lib, a.llamacpp_py)
        m = LlamaModel(lc, a.gguf, 64, 1)
        ll = m.tokenize(text)
        m.close()
        if ll != ids:
            first = next((i for i, (x, y) in enumerate(zip(ll, ids)) if x != y), min(len(ll), len(ids)))
            sys.exit(f"tokens: llama.cpp's tokenizer differs from tokenizers at {first} ({len(ll)} vs {len(ids)} ids)")
        checks["llama_cpp_tokenize"] = "identical"
    with open(a.out, "w") as f:
        json.dump({"text": os.path.abspath(a.text), "checks": checks, "ids": ids}, f)
    print("tokens:", json.dumps(checks))


# ----------------------------------------------------------------------------- quality

def log_softmax(x):
    import numpy as np
    m = x.max(axis=-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))


def cmd_quality(a):
    import numpy as np
    ids = json.load(open(a.tokens))["ids"]
    lc = load_llama(a.llamacpp_lib, a.llamacpp_py)
    n_win = min(a.windows, len(ids) // a.window)
    windows = [ids[w * a.window:(w + 1) * a.window] for w in range(n_win)]
    targets = [np.array(w[1:]) for w in windows]

    ref = LlamaModel(lc, a.ref, a.window, a.threads)
    ref_lp = [log_softmax(ref.logits(w))[:-1] for w in windows]
    ref.close()
    rows = []
    for spec in [f"BF16={a.ref}"] + a.model:
        name, path = spec.split("=", 1)
        if path == a.ref:
            lps = ref_lp
        else:
            m = LlamaModel(lc, path, a.window, a.threads)
            lps = [log_softmax(m.logits(w))[:-1] for w in windows]
            m.close()
        nll = kl = agree = n = 0.0
        for lp, rp, t in zip(lps, ref_lp, targets):
            nll -= lp[np.arange(len(t)), t].sum()
            kl += (np.exp(rp) * (rp - lp)).sum()
            agree += (lp.argmax(-1) == rp.argmax(-1)).sum()
            n += len(t)
        rows.append({"name": name, "gguf": os.path.basename(path), "perplexity": math.exp(nll / n),
                     "kl": kl / n, "top1_agreement": agree / n, "positions": int(n),
                     "types": gguf_types(path)})
        print(f"quality {name:8s} ppl {rows[-1]['perplexity']:.4f}  KL {rows[-1]['kl']:.5f}  "
              f"top1 {rows[-1]['top1_agreement']:.4f}  ({int(n)} positions)", flush=True)
    json.dump({"windows": n_win, "window": a.window, "threads": a.threads, "rows": rows},
              open(a.json, "w"), indent=1)


# ----------------------------------------------------------------------------- log parsers

def parse_perplexity(path):
    text = open(path, errors="replace").read()
    out = {}
    m = re.search(r"Mean PPL\(Q\)\s*:\s*([0-9.]+)", text)
    if m:
        out["perplexity"] = float(m.group(1))
    else:
        m = re.findall(r"Final estimate: PPL = ([0-9.]+)", text)
        if m:
            out["perplexity"] = float(m[-1])
    m = re.search(r"Mean\s+KLD:\s*([0-9.eE+-]+)", text)
    if m:
        out["kl"] = float(m.group(1))
    m = re.search(r"Same top p:\s*([0-9.]+)", text)
    if m:
        out["top1_agreement"] = float(m.group(1)) / 100.0
    m = re.search(r"calculating perplexity over (\d+) chunks, n_ctx=(\d+)", text) or \
        re.search(r"computing over (\d+) chunks, n_ctx=(\d+)", text)
    if m:
        out["chunks"], out["n_ctx"] = int(m.group(1)), int(m.group(2))
    return out


def parse_sluice_bench(path):
    text = open(path, errors="replace").read()
    out = {}
    m = re.search(r"prefill\s+(\d+) tokens in [0-9.]+ s = ([0-9.]+) tokens/s", text)
    if m:
        out["prefill_tps"] = float(m.group(2))
    m = re.search(r"decode\s+batch \d+, context \d+: ([0-9.]+) ms/step, ([0-9.]+) tokens/s", text)
    if m:
        out["decode_tps"] = float(m.group(2))
    m = re.search(r"step times\s+min ([0-9.]+) ms, median ([0-9.]+) ms.*\(min: ([0-9.]+) %", text)
    if m:
        out["step_min_ms"], out["step_median_ms"], out["min_step_bw_frac"] = map(float, m.groups())
    m = re.search(r"bandwidth frac\s+([0-9.]+) %", text)
    if m:
        out["bw_frac"] = float(m.group(1))
    m = re.search(r"read bandwidth\s+([0-9.]+) GB/s", text)
    if m:
        out["read_gbps"] = float(m.group(1))
    m = re.search(r"bytes/step\s+([0-9.]+) MB \(weights ([0-9.]+) MB", text)
    if m:
        out["step_mb"], out["weight_mb"] = float(m.group(1)), float(m.group(2))
    m = re.search(r"weight format\s+(.*)", text)
    if m:
        out["weight_format"] = m.group(1).strip()
    m = re.search(r"load\s+([0-9.]+) s", text)
    if m:
        out["load_s"] = float(m.group(1))
    return out


def cmd_parse(a, fn):
    print(json.dumps(fn(a.log)))


# ----------------------------------------------------------------------------- records

def gguf_types(path):
    """Tensor type histogram and tensor bytes of a GGUF (what llama-quantize really wrote)."""
    from gguf import GGUFReader
    r = GGUFReader(path)
    hist, nbytes = {}, 0
    for t in r.tensors:
        if len(t.shape) < 2:
            continue  # norms, biases, SSM scalars: always f32
        hist[t.tensor_type.name] = hist.get(t.tensor_type.name, 0) + 1
        nbytes += int(t.n_bytes)
    return {"matrix_types": dict(sorted(hist.items(), key=lambda kv: -kv[1])), "bytes": nbytes}


def cmd_gguf_types(a):
    print(json.dumps(gguf_types(a.gguf)))


def cmd_record(a):
    """One speed measurement as a JSON line of speed.jsonl."""
    rec = {"model": a.model, "round": a.round, "engine": a.engine, "width": a.width}
    if a.sluice_log:
        r = parse_sluice_bench(a.sluice_log)
        rec.update(r)
        rec["weights"] = r.get("weight_format", "")
    else:
        pp = json.load(open(a.llama_pp))
        tg = json.load(open(a.llama_tg))
        rec["prefill_tps"] = pp[0]["avg_ts"]
        rec["prefill_sd"] = pp[0]["stddev_ts"]
        rec["decode_tps"] = tg[0]["avg_ts"]
        rec["decode_sd"] = tg[0]["stddev_ts"]
        rec["model_bytes"] = tg[0]["model_size"]
        rec["weights"] = f"{tg[0].get('model_type', '')}, {tg[0]['model_size'] / 1e9:.2f} GB"
        rec["llama"] = {k: tg[0].get(k) for k in ("build_commit", "n_threads", "n_depth", "n_gen",
                                                  "n_batch", "n_ubatch", "type_k", "type_v",
                                                  "flash_attn", "use_mmap", "cpu_info")}
    with open(a.out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print("record:", json.dumps({k: rec.get(k) for k in ("model", "round", "engine", "decode_tps",
                                                         "prefill_tps", "bw_frac")}))


# ----------------------------------------------------------------------------- table

def fmt(v, d=1):
    return "" if v is None else f"{v:.{d}f}"


ORDER = [("bf16", "llama.cpp BF16"), ("bf16", "sluice none"), ("int8", "llama.cpp Q8_0"),
         ("int8", "sluice int8"), ("int4", "llama.cpp Q4_K_M"), ("int4", "sluice int4")]


def speed_table(model, rows, meta, ceiling):
    lines = [f"### {model}", "",
             "| width | engine | weights | decode tok/s @ctx 512 | prefill-512 tok/s | decode, all rounds | "
             f"prefill, all rounds | bytes/step | share of {ceiling:.1f} GB/s | sluice's own figure, all rounds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    best = {}
    # Bytes a decode step reads besides the weights (KV cache, recurrent state), from sluice's
    # count for this model (llama.cpp's f16 KV and f32 state are the same size).
    extra = [r["step_mb"] - r["weight_mb"] for r in rows if r.get("step_mb") and r.get("weight_mb")]
    extra_mb = statistics.median(extra) if extra else 0.0
    for key in ORDER:
        rs = sorted([r for r in rows if (r["width"], r["engine"]) == key], key=lambda r: r["round"])
        if not rs:
            continue
        dec = [r.get("decode_tps") for r in rs if r.get("decode_tps")]
        pre = [r.get("prefill_tps") for r in rs if r.get("prefill_tps")]
        best[key] = (max(dec) if dec else None, max(pre) if pre else None)
        b = max(rs, key=lambda r: r.get("decode_tps") or 0)
        step_mb, share, own = None, "", ""
        if b.get("step_mb"):
            step_mb = b["step_mb"]
            own = " / ".join(f"{r['bw_frac']:.0f} % of {r['read_gbps']:.0f}" for r in rs if r.get("bw_frac"))
        elif b.get("model_bytes") and meta.get("dense", {}).get(model):
            # llama.cpp reports no bandwidth. A dense model reads its whole file per token
            # (tied embeddings: the LM head), plus the KV cache and recurrent state.
            step_mb = b["model_bytes"] / 1e6 + extra_mb
        if step_mb and ceiling:
            share = f"{100.0 * step_mb * 1e6 * best[key][0] / (ceiling * 1e9):.0f} %"
        step = "" if step_mb is None else (f"{step_mb:.0f} MB" + ("" if b.get("step_mb") else " (est.)"))
        lines.append(f"| {key[0]} | {key[1]} | {b.get('weights', '')} | **{fmt(best[key][0])}** | "
                     f"**{fmt(best[key][1])}** | {' / '.join(fmt(x) for x in dec)} | "
                     f"{' / '.join(fmt(x) for x in pre)} | {step} | {share} | {own} |")
    lines += ["", "| width | sluice ÷ llama.cpp, decode | sluice ÷ llama.cpp, prefill |", "|---|---|---|"]
    for w, ll, sl in (("bf16", "llama.cpp BF16", "sluice none"), ("int8", "llama.cpp Q8_0", "sluice int8"),
                      ("int4", "llama.cpp Q4_K_M", "sluice int4")):
        s, l = best.get((w, sl)), best.get((w, ll))
        if s and l and s[0] and l[0] and s[1] and l[1]:
            lines.append(f"| {w} (vs {ll.split()[1]}) | {s[0] / l[0]:.2f}× | {s[1] / l[1]:.2f}× |")
    loads = meta.get("loads", {}).get(model)
    if loads:
        parts = [f"{k}: {v}" for k, v in loads.items() if k != "end"] + [f"end: {loads.get('end', '?')}"]
        lines += ["", "Load average (1/5/15 min) — " + "; ".join(parts) + "."]
    return lines + [""]


def cmd_table(a):
    res = a.results
    meta = json.load(open(os.path.join(res, "meta.json"))) if os.path.exists(os.path.join(res, "meta.json")) else {}
    lines = [l.rstrip("\n") for l in open(a.machine)]
    for k, v in meta.get("runs", {}).items():
        lines.append(f"- {k} run: {v}")
    sp = os.path.join(res, "speed.jsonl")
    speed = [json.loads(l) for l in open(sp)] if os.path.exists(sp) else []
    if speed:
        lines += ["", "## Speed: 2 threads, decode at context 512, prefill of one 512-token prompt", "",
                  f"Bold: the best of {meta.get('rounds', '?')} rounds; every round's figure follows. In a round "
                  "each width runs llama.cpp, then sluice, before the next width. llama-bench: the mean of "
                  f"its `-r {meta.get('llama_reps', '?')}` repetitions (after its warm-up run), prefill "
                  "`-p 512 -n 0`, decode `-p 0 -n 64 -d 512`, OpenMP's default wait policy. "
                  "sluice-bench-model: one 512-token prefill then 64 decode steps, `--kv_cache_dtype bf16` "
                  "(as sluiced serves), f32 matmul precision (sluiced's default).", ""]
        ceilings = [r["read_gbps"] for r in speed if r.get("read_gbps")]
        ceiling = max(ceilings) if ceilings else 0.0
        lines += [f"Bandwidth: the ceiling is the highest read bandwidth sluice-bench-model's probe measured "
                  f"in this run ({ceiling:.1f} GB/s, 2 threads; each process probes 3 times and takes the "
                  f"median, and the probes ranged {min(ceilings):.0f}–{ceiling:.0f} GB/s because neighbours "
                  "share the memory system). \"share\" = bytes/step × the best decode tok/s ÷ that ceiling. "
                  "bytes/step is sluice-bench-model's count (weights as stored, the distinct experts routed "
                  "to, KV cache, recurrent state); for llama.cpp on the dense model it is the GGUF's bytes "
                  "plus sluice's KV and state bytes (est.), and it is left out on the MoE (llama.cpp does "
                  "not say which experts it read). The last column is sluice-bench-model's own figure "
                  "against the probe of its own process.", ""] if ceilings else []
        for model in meta.get("models", sorted({r["model"] for r in speed})):
            rows = [r for r in speed if r["model"] == model]
            if rows:
                lines += speed_table(model, rows, meta, ceiling)
    qpath = os.path.join(res, "quality_llamacpp.json")
    if os.path.exists(qpath):
        q = json.load(open(qpath))
        lines += ["## Quality: the trained demo model without its GateSkip gates", ""]
        lines += [f"Held-out text: Twelfth Night (`build/demo-corpus/heldout.txt`), {meta.get('heldout_tokens', '?')} "
                  "tokens; the ids are identical from HF `tokenizers`, `sluice-tokenize` and llama.cpp's "
                  "tokenizer on the GGUF (checked). Protocol of `bench/budget_quality.cc`: the first "
                  f"{q['windows']} windows of {q['window']} tokens, each a fresh sequence, every "
                  f"position but the last scored ({q['rows'][0]['positions']} positions). KL = "
                  "KL(bf16 ‖ quantized) of the next-token distribution, each engine against its own bf16. "
                  "llama.cpp through libllama (llama-cpp-python's ctypes bindings, same build).", ""]
        lines += ["| engine | width | matrices as written | perplexity | mean KL (nats) | top-1 = bf16 |",
                  "|---|---|---|---|---|---|"]
        for r in q["rows"]:
            types_ = ", ".join(f"{k} {v}" for k, v in r.get("types", {}).get("matrix_types", {}).items())
            lines.append(f"| llama.cpp | {r['name']} | {types_} | {r['perplexity']:.3f} | {r['kl']:.5f} | "
                         f"{r['top1_agreement']:.4f} |")
        sq = os.path.join(res, "quality_sluice.json")
        if os.path.exists(sq):
            for r in json.load(open(sq))["rows"]:
                lines.append(f"| sluice | {r['name']} | {r.get('weights', '')} | {fmt(r.get('perplexity'), 3)} | "
                             f"{fmt(r.get('kl'), 5) or r.get('kl_note', '')} | {fmt(r.get('top1_agreement'), 4)} |")
        lines.append("")
    ppath = os.path.join(res, "quality_llama_perplexity.json")
    if os.path.exists(ppath):
        p = json.load(open(ppath))
        lines += ["llama.cpp's own `llama-perplexity` over the whole held-out text (its protocol: "
                  f"chunks of {p.get('n_ctx')} tokens, the second half of each chunk scored, "
                  f"{p.get('chunks')} chunks; `--kl-divergence-base` from the BF16 GGUF):", "",
                  "| width | perplexity | mean KLD | same top p |", "|---|---|---|---|"]
        for r in p["rows"]:
            lines.append(f"| {r['name']} | {fmt(r.get('perplexity'), 3)} | {fmt(r.get('kl'), 6)} | "
                         f"{fmt(r.get('top1_agreement'), 4)} |")
        lines.append("")
    notes = os.path.join(res, "notes.md")
    if os.path.exists(notes):
        lines += [l.rstrip("\n") for l in open(notes)]
    open(a.out, "w").write("\n".join(lines).rstrip() + "\n")
    print("wrote", a.out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stage")
    s.add_argument("--model", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--tokenizer")
    s.add_argument("--strip-gates", action="store_true")
    s = sub.add_parser("convert")
    s.add_argument("--llamacpp", required=True)
    s.add_argument("--model", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--outtype", default="bf16")
    s = sub.add_parser("tokens")
    s.add_argument("--tokenizer", required=True)
    s.add_argument("--text", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--sluice-tokenize")
    s.add_argument("--gguf")
    s.add_argument("--llamacpp-lib")
    s.add_argument("--llamacpp-py")
    s = sub.add_parser("quality")
    s.add_argument("--tokens", required=True)
    s.add_argument("--ref", required=True)
    s.add_argument("--model", action="append", default=[])
    s.add_argument("--llamacpp-lib", required=True)
    s.add_argument("--llamacpp-py", required=True)
    s.add_argument("--windows", type=int, default=24)
    s.add_argument("--window", type=int, default=256)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--json", required=True)
    s = sub.add_parser("ppl")
    s.add_argument("--log", required=True)
    s = sub.add_parser("sluice-bench")
    s.add_argument("--log", required=True)
    s = sub.add_parser("gguf-types")
    s.add_argument("--gguf", required=True)
    s = sub.add_parser("record")
    s.add_argument("--out", required=True)
    s.add_argument("--model", required=True)
    s.add_argument("--round", type=int, required=True)
    s.add_argument("--engine", required=True)
    s.add_argument("--width", required=True)
    s.add_argument("--sluice-log")
    s.add_argument("--llama-pp")
    s.add_argument("--llama-tg")
    s = sub.add_parser("table")
    s.add_argument("--results", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--machine", required=True)
    a = p.parse_args()
    if a.cmd == "stage":
        cmd_stage(a)
    elif a.cmd == "convert":
        cmd_convert(a)
    elif a.cmd == "tokens":
        cmd_tokens(a)
    elif a.cmd == "quality":
        cmd_quality(a)
    elif a.cmd == "ppl":
        cmd_parse(a, parse_perplexity)
    elif a.cmd == "sluice-bench":
        cmd_parse(a, parse_sluice_bench)
    elif a.cmd == "gguf-types":
        cmd_gguf_types(a)
    elif a.cmd == "record":
        cmd_record(a)
    elif a.cmd == "table":
        cmd_table(a)


if __name__ == "__main__":
    main()
