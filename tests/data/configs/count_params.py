#!/usr/bin/env python3
"""Counts the parameters transformers instantiates for the configs in this folder.

Writes param_counts.json. Models are built on the meta device, so nothing is allocated.
Conventions (per token, "active"):
  active = every non-routed-expert parameter (embedding, lm_head, attention / Gated
           DeltaNet, norms, routers, dense MLPs, shared experts and their gates)
           + num_experts_per_tok routed experts in every MoE layer.
  active_without_embedding = active - the input embedding table (a lookup, not a
           matmul). For tied embeddings the shared matrix is still read by lm_head,
           so it is kept and the two numbers are equal.
  total_without_embeddings = total - embedding - lm_head (untied) or - embedding (tied);
           this is what model cards call "non-embedding" parameters.
Only the text decoder is counted for the multimodal Qwen3.5 checkpoints; the vision tower
is reported separately. transformers does not instantiate the MTP (multi-token
prediction) head, so it is in neither number (the hub files hold it under mtp.*).
Usage: python3 tests/data/configs/count_params.py
"""
import json
import os

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

transformers.logging.set_verbosity_error()
HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = {
    "qwen3_next_80b_a3b_instruct": "config.json",
    "qwen3_5_0_8b": "config.json",
    "qwen3_5_35b_a3b": "config.partial.json",
    "mixtral_8x7b_v0_1": "config.json",
}


def numel(params):
    return sum(p.numel() for p in params)


def count(name, filename):
    with open(os.path.join(HERE, name, filename)) as f:
        raw = json.load(f)
    config = AutoConfig.for_model(**raw)
    text = config.get_text_config()
    vision = None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(text)
        if hasattr(config, "vision_config"):
            from transformers import AutoModelForImageTextToText
            full = AutoModelForImageTextToText.from_config(config)
            vision = numel(full.model.visual.parameters())
    total = numel(model.parameters())  # parameters() yields a tied tensor once
    embed = model.get_input_embeddings().weight.numel()
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    lm_head = 0 if tied else model.get_output_embeddings().weight.numel()
    num_experts = getattr(text, "num_experts", None) or getattr(text, "num_local_experts", 0)
    top_k = getattr(text, "num_experts_per_tok", 0)
    routed = 0
    moe_layers = 0
    per_expert = None
    for mname, module in model.named_modules():
        if mname.endswith("mlp.experts") or mname.endswith("block_sparse_moe.experts"):
            n = numel(module.parameters(recurse=True))
            routed += n
            moe_layers += 1
            per_expert = n // num_experts
    active = total - routed + moe_layers * top_k * (per_expert or 0)
    result = {
        "total": total,
        "active": active,
        "active_without_embedding": active - (0 if tied else embed),
        "total_without_embeddings": total - embed - lm_head,
        "embedding": embed,
        "lm_head": lm_head,
        "tied_embeddings": tied,
        "routed_expert_params_per_expert_per_layer": per_expert,
        "moe_layers": moe_layers,
        "num_experts": num_experts,
        "num_experts_per_tok": top_k,
        "notes": ("transformers %s, %s on the meta device; active = all non-routed-expert "
                  "parameters (embedding and lm_head included, shared expert included) + "
                  "top-k routed experts; MTP head not instantiated by transformers and not "
                  "counted" % (transformers.__version__, type(model).__name__)),
    }
    if vision is not None:
        result["vision_tower"] = vision
        result["notes"] += "; text decoder only, vision tower given separately"
    if filename != "config.json":
        result["notes"] += "; computed from a PARTIAL config (see README.md)"
    return result


def main():
    out = {name: count(name, filename) for name, filename in MODELS.items()}
    with open(os.path.join(HERE, "param_counts.json"), "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
