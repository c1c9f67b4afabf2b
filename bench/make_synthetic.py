#!/usr/bin/env python3
"""Writes random-weight bf16 checkpoints with real shapes for the speed benchmarks.

  qwen3_5_0_8b      the published Qwen3.5-0.8B text decoder (tests/data/configs)
  qwen3_5_moe_2b8   a Qwen3.5-MoE scaled to ~2.8 B total / ~0.5 B active
  qwen3_5_dense_2b8 a dense Qwen3.5 of about the same total size (the MoE's peer)
  qwen3_0_6b        the published Qwen3-0.6B (dense softmax attention: the prefix-cache
                    benchmark's dense peer)

The weights are random (std 0.02), so outputs are meaningless; shapes, dtypes, tensor
names and memory traffic are the real ones. Files go to bench/synthetic/<name>/
(git-ignored). Needs torch, transformers and safetensors.

Usage: python3 bench/make_synthetic.py [--only NAME]
"""
import argparse
import json
import os

import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(HERE, "synthetic")


def qwen3_5_0_8b():
    with open(os.path.join(ROOT, "tests", "data", "configs", "qwen3_5_0_8b", "config.json")) as f:
        wrapper = json.load(f)
    text = dict(wrapper["text_config"])
    text["model_type"] = "qwen3_5_text"
    text["tie_word_embeddings"] = wrapper.get("tie_word_embeddings", text.get("tie_word_embeddings", True))
    return text


def qwen3_5_text(**overrides):
    """A scaled Qwen3.5 text decoder: the family's vocabulary, hybrid layout and RoPE."""
    config = {
        "model_type": "qwen3_5_text", "vocab_size": 248320,
        "full_attention_interval": 4, "num_attention_heads": 8, "num_key_value_heads": 2,
        "linear_key_head_dim": 128, "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4,
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0,
                            "partial_rotary_factor": 0.25},
    }
    config.update(overrides)
    return config


def qwen3_5_moe_2b8():
    return qwen3_5_text(
        model_type="qwen3_5_moe_text", hidden_size=1024, num_hidden_layers=16, head_dim=256,
        linear_num_key_heads=8, linear_num_value_heads=16, num_experts=128,
        num_experts_per_tok=4, moe_intermediate_size=384, shared_expert_intermediate_size=384)


def qwen3_5_dense_2b8():
    return qwen3_5_text(
        hidden_size=2048, num_hidden_layers=24, intermediate_size=9728, head_dim=256,
        linear_num_key_heads=16, linear_num_value_heads=16)


def qwen3_5_moe_2b7_k8():
    """An expert-heavier Qwen3.5-MoE: 2.7 B total, ~0.6 B active, top-8 of 64 experts.

    With Qwen3.5's 248K vocabulary the tied embedding/LM head alone reads 0.38 GB a token;
    in qwen3_5_moe_2b8 the routed experts are only ~15 % of the bytes a decode step reads,
    so no expert budget can speed it up much. Here they are about half.
    """
    return qwen3_5_text(
        model_type="qwen3_5_moe_text", hidden_size=768, num_hidden_layers=16, head_dim=128,
        linear_num_key_heads=8, linear_num_value_heads=16, num_experts=64,
        num_experts_per_tok=8, moe_intermediate_size=1024, shared_expert_intermediate_size=512)


def qwen3_0_6b():
    """Qwen/Qwen3-0.6B's config.json (its published values)."""
    return {
        "model_type": "qwen3", "vocab_size": 151936, "hidden_size": 1024, "intermediate_size": 3072,
        "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
        "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "tie_word_embeddings": True, "hidden_act": "silu", "attention_bias": False,
    }


MODELS = {"qwen3_5_0_8b": qwen3_5_0_8b, "qwen3_0_6b": qwen3_0_6b, "qwen3_5_moe_2b8": qwen3_5_moe_2b8,
          "qwen3_5_moe_2b7_k8": qwen3_5_moe_2b7_k8,
          "qwen3_5_dense_2b8": qwen3_5_dense_2b8}


def write(name, config_dict):
    out_dir = os.path.join(OUT, name)
    os.makedirs(out_dir, exist_ok=True)
    config = AutoConfig.for_model(**config_dict)
    config.dtype = "bfloat16"
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    total = 0
    for key, p in model.state_dict().items():
        if config.tie_word_embeddings and key == "lm_head.weight":
            continue
        shape = tuple(p.shape)
        if key.endswith("norm.weight"):
            # Qwen3.5's norms are zero-centred (1 + w) except the Gated DeltaNet's; Qwen3's
            # are plain weights.
            plain = "linear_attn.norm" in key or config_dict["model_type"] == "qwen3"
            t = torch.ones(shape) if plain else torch.zeros(shape)
        elif key.endswith("A_log"):
            t = torch.log(torch.empty(shape).uniform_(1, 16, generator=gen))
        elif key.endswith("dt_bias"):
            t = torch.ones(shape)
        else:
            t = torch.randn(shape, generator=gen) * 0.02
        tensors[key] = t.to(torch.bfloat16).contiguous()
        total += t.numel()
    # One file per ~2 GB so no single tensor dict gets huge in memory.
    shards, current, size = [], {}, 0
    for key, t in tensors.items():
        current[key] = t
        size += t.numel() * 2
        if size > 2 << 30:
            shards.append(current)
            current, size = {}, 0
    if current:
        shards.append(current)
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(out_dir, fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in shard})
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_parameters": total}, "weight_map": weight_map}, f)
    config.save_pretrained(out_dir)
    print(f"wrote {out_dir}: {total / 1e9:.3f} B parameters")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default=None)
    args = parser.parse_args()
    for name, make in MODELS.items():
        if args.only and args.only != name:
            continue
        write(name, make())


if __name__ == "__main__":
    main()
