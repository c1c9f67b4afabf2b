#!/usr/bin/env python3
"""Adds random GateSkip residual gates to a synthetic checkpoint made by make_synthetic.py.

Writes bench/synthetic/<name>_gated/: the source's config.json, symlinks to its shards,
gates.safetensors with one vector gate per branch (tests/data/models/GATESKIP.md names:
layers.{i}.{linear_attn|self_attn}.residual_gate.{weight,bias}, layers.{i}.mlp.residual_gate.*)
and a merged model.safetensors.index.json. The gates are random but structured like the
fixture's: every unit shares a direction v, so token importances spread out. bf16.

Usage: python3 bench/add_residual_gates.py [--source qwen3_5_0_8b]
"""
import argparse
import json
import math
import os

import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "synthetic")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", default="qwen3_5_0_8b")
    args = parser.parse_args()
    src = os.path.join(OUT, args.source)
    dst = os.path.join(OUT, args.source + "_gated")
    os.makedirs(dst, exist_ok=True)
    with open(os.path.join(src, "config.json")) as f:
        config = json.load(f)
    text = config.get("text_config", config)
    h, n = text["hidden_size"], text["num_hidden_layers"]
    layer_types = text.get("layer_types") or [
        "full_attention" if (i + 1) % text.get("full_attention_interval", 4) == 0 else "linear_attention"
        for i in range(n)]
    with open(os.path.join(src, "model.safetensors.index.json")) as f:
        index = json.load(f)
    prefix = "model.language_model." if any(k.startswith("model.language_model.") for k in index["weight_map"]) else "model."
    gen = torch.Generator().manual_seed(7)
    gates = {}
    for i in range(n):
        mixer = "linear_attn" if layer_types[i] == "linear_attention" else "self_attn"
        for name in (f"{prefix}layers.{i}.{mixer}.residual_gate", f"{prefix}layers.{i}.mlp.residual_gate"):
            v = torch.randn(h, generator=gen) * (1.5 / math.sqrt(h))
            w = v[None, :].repeat(h, 1) + 0.05 * torch.randn(h, h, generator=gen) / math.sqrt(h) * 8
            gates[name + ".weight"] = w.to(torch.bfloat16).contiguous()
            gates[name + ".bias"] = (0.5 * torch.randn(h, generator=gen)).to(torch.bfloat16)
    save_file(gates, os.path.join(dst, "gates.safetensors"), metadata={"format": "pt"})
    for fname in set(index["weight_map"].values()):
        link = os.path.join(dst, fname)
        if not os.path.lexists(link):
            os.symlink(os.path.join(src, fname), link)
    index["weight_map"].update({k: "gates.safetensors" for k in gates})
    with open(os.path.join(dst, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    print(f"wrote {dst}: {len(gates)} gate tensors")


if __name__ == "__main__":
    main()
