#!/usr/bin/env python3
"""Writes the committed seed corpora of the fuzz targets in tests/fuzz.

    build/venv/bin/python tests/fuzz/make_seeds.py

needs grpcio-tools and protobuf (the venv scripts/setup-venv.sh makes has both). It
rewrites generate_request_seeds/, safetensors_header_seeds/ and model_config_seeds/
from scratch, except the files named regression_*: those are inputs a fuzzer once
failed on, kept as they were found.

- generate_request_seeds/: serialized sluice.v1.GenerateRequest messages covering
  text, token and chat (`messages`) input, every sampling, stopping, budget and
  logprobs field, with values on both sides of each limit the server and the engine
  check.
- safetensors_header_seeds/: well-formed files the malformed corpus in
  tests/data/safetensors lacks (every dtype, metadata, zero-size and scalar tensors,
  padded headers, unsorted and duplicate entries) plus the header of the demo model.
- model_config_seeds/: one config.json of each fixture family and each published
  config under tests/data, the demo model's, and hand-made variants for the branches
  those do not reach (RoPE scaling, wrappers, MoE layouts, unsupported features).
"""
import json
import os
import pathlib
import shutil
import struct
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def reset(dirname):
    d = HERE / dirname
    d.mkdir(exist_ok=True)
    for f in d.iterdir():
        if not f.name.startswith("regression_"):
            f.unlink()
    return d


def load_proto_module():
    out = tempfile.mkdtemp(prefix="sluice_seeds_")
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}",
                    f"--python_out={out}", str(ROOT / "proto/sluice/v1/generation.proto")],
                   check=True)
    sys.path.insert(0, out)
    from sluice.v1 import generation_pb2  # noqa: E402
    return generation_pb2


def request_seeds():
    pb = load_proto_module()
    d = reset("generate_request_seeds")
    seeds = {}

    def req(**kw):
        r = pb.GenerateRequest()
        for k, v in kw.items():
            if k == "text":
                r.text = v
            elif k == "tokens":
                r.tokens.ids.extend(v)
            elif k in ("sampling", "stopping", "budget", "logprobs"):
                getattr(r, k).SetInParent()
                for fk, fv in v.items():
                    if fk == "skip_layers":
                        for span in fv:
                            s = r.budget.skip_layers.add()
                            s.first = span[0]
                            if len(span) > 1:
                                s.last = span[1]
                    elif isinstance(fv, list):
                        getattr(getattr(r, k), fk).extend(fv)
                    else:
                        setattr(getattr(r, k), fk, fv)
            else:
                setattr(r, k, v)
        return r

    seeds["text_plain"] = req(text=b"Hello, world! The quick brown fox", stopping={"max_tokens": 16})
    seeds["text_special_tokens"] = req(text=b"<|endoftext|>Once upon a time<|endoftext|>",
                                       add_special_tokens=True, request_id="req-1")
    seeds["text_unicode"] = req(text="你好 🦙 café\n\t  x".encode(), stopping={"max_tokens": 4})
    seeds["text_invalid_utf8"] = req(text=b"caf\xc3\x28 \xff\xfe", stopping={"max_tokens": 4})
    seeds["text_empty"] = req(text=b"")
    seeds["text_stop_strings"] = req(text=b"List three fruits:",
                                     stopping={"max_tokens": 32, "min_tokens": 2,
                                               "stop": ["\n\n", "END", "x" * 1024],
                                               "stop_token_ids": [0], "ignore_eos": True})
    seeds["text_stop_string_too_long"] = req(text=b"a", stopping={"stop": ["y" * 1025]})
    seeds["text_stop_string_empty"] = req(text=b"a", stopping={"stop": [""]})
    seeds["tokens_greedy"] = req(tokens=list(range(1, 11)), stopping={"max_tokens": 8, "ignore_eos": True})
    seeds["tokens_sampling_full"] = req(
        tokens=[5, 6, 7, 5, 5],
        sampling={"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05,
                  "repetition_penalty": 1.1, "presence_penalty": 0.5, "frequency_penalty": -0.5,
                  "seed": 42},
        stopping={"max_tokens": 8})
    seeds["tokens_sampling_edges"] = req(
        tokens=[1], sampling={"temperature": 2.0, "top_k": 2147483647, "top_p": 1.0,
                              "min_p": 0.999, "repetition_penalty": 1e-30,
                              "presence_penalty": 2.0, "frequency_penalty": -2.0,
                              "seed": 2**64 - 1})
    seeds["tokens_sampling_bad"] = req(
        tokens=[1], sampling={"temperature": float("nan"), "top_k": -1, "top_p": 1.5,
                              "min_p": 1.0, "repetition_penalty": -1.0, "presence_penalty": 3.0,
                              "frequency_penalty": float("inf")})
    seeds["tokens_stopping"] = req(tokens=[3, 4], stopping={"max_tokens": 32, "min_tokens": 2,
                                                            "stop_token_ids": [0, 7, 299, 511]})
    seeds["tokens_out_of_vocab"] = req(tokens=[-1, 300, 512, 2**31 - 1],
                                       stopping={"stop_token_ids": [-5, 512]})
    seeds["limits_context_edge"] = req(tokens=[5] * 2000, stopping={"max_tokens": 48})
    seeds["limits_huge"] = req(tokens=[1, 2], stopping={"max_tokens": 2**31, "min_tokens": 2**32 - 1})
    seeds["limits_min_over_max"] = req(tokens=[1, 2], stopping={"max_tokens": 4, "min_tokens": 5})
    seeds["budget_all_controls"] = req(
        tokens=[10, 20, 30], budget={"skip_ratio": 0.5, "experts_per_token": 1,
                                     "attention_gate_floor": 0.2, "skip_layers": [(1, 2)]},
        stopping={"max_tokens": 4})
    seeds["budget_skip_layers"] = req(tokens=[10], budget={"skip_layers": [(0,), (3, 1), (2, 3)]})
    seeds["budget_out_of_range"] = req(
        tokens=[10], budget={"skip_ratio": 0.95, "experts_per_token": 9, "attention_gate_floor": 1.0,
                             "skip_layers": [(4, 10), (2**32 - 1,)]})
    seeds["budget_negative_casts"] = req(
        tokens=[10], budget={"experts_per_token": 2**32 - 1, "skip_layers": [(2**31, 2**31 + 1)]})
    seeds["logprobs_top5"] = req(tokens=[1, 2, 3], sampling={"temperature": 1.0, "seed": 7},
                                 logprobs={"top_n": 5}, stopping={"max_tokens": 2})
    seeds["logprobs_top0"] = req(tokens=[1], logprobs={"top_n": 0})
    seeds["logprobs_too_many"] = req(tokens=[1], logprobs={"top_n": 21})
    seeds["priority_request_id"] = req(tokens=[1], priority=-5, request_id="client-42/\u00e9")
    seeds["no_input"] = req(sampling={"temperature": 0.5})
    if hasattr(pb, "ChatInput"):  # the `messages` input (GenerateRequest field 10)
        def chat(turns, tools="", kwargs="", add_generation_prompt=None, **kw):
            r = req(**kw)
            r.messages.SetInParent()
            for t in turns:
                m = r.messages.messages.add()
                for k, v in t.items():
                    if k == "tool_calls":
                        for name, args in v:
                            c = m.tool_calls.add()
                            c.id = "call_" + name
                            c.function.name = name
                            c.function.arguments = args
                    else:
                        setattr(m, k, v)
            r.messages.tools = tools
            r.messages.chat_template_kwargs = kwargs
            if add_generation_prompt is not None:
                r.messages.add_generation_prompt = add_generation_prompt
            return r

        seeds["chat_basic"] = chat([{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "Hi! Who are you?"}],
                                   stopping={"max_tokens": 8})
        seeds["chat_tools"] = chat(
            [{"role": "user", "content": "Weather in Paris?"},
             {"role": "assistant", "tool_calls": [("get_weather", '{"city": "Paris"}')]},
             {"role": "tool", "content": '{"temp": 21}', "tool_call_id": "call_get_weather",
              "name": "get_weather"}],
            tools='[{"type": "function", "function": {"name": "get_weather", "parameters": '
                  '{"type": "object", "properties": {"city": {"type": "string"}}}}}]',
            kwargs='{"enable_thinking": false}', stopping={"max_tokens": 16, "stop": ["</tool_call>"]})
        seeds["chat_reasoning"] = chat(
            [{"role": "user", "content": "2+2?"},
             {"role": "assistant", "content": "4", "reasoning_content": "Add them."},
             {"role": "user", "content": "\u00e9\u4f60 again"}], add_generation_prompt=False,
            sampling={"temperature": 0.7, "seed": 3}, logprobs={"top_n": 2})
        seeds["chat_bad_json"] = chat([{"role": "user", "content": "x"}], tools="not json",
                                      kwargs="[1]")
        seeds["chat_bad_roles"] = chat([{"role": ""}, {"role": "user"}])
        seeds["chat_no_messages"] = chat([])
    for name, r in seeds.items():
        (d / f"{name}.pb").write_bytes(r.SerializeToString())
    # A valid request followed by an unknown field (number 99, varint): parsers skip it.
    (d / "unknown_field.pb").write_bytes(seeds["tokens_greedy"].SerializeToString() + b"\x98\x06\x01")
    return len(seeds) + 1


def safetensors_file(header, data=b"", pad_to=None):
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad_to:
        text += b" " * (-len(text) % pad_to)
    return struct.pack("<Q", len(text)) + text + data


def safetensors_seeds():
    d = reset("safetensors_header_seeds")
    files = {
        "every_dtype": safetensors_file(
            {"__metadata__": {"format": "pt", "note": "x"},
             "f32": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
             "bf16": {"dtype": "BF16", "shape": [1, 2], "data_offsets": [8, 12]},
             "f16": {"dtype": "F16", "shape": [2, 1], "data_offsets": [12, 16]},
             "i32": {"dtype": "I32", "shape": [1], "data_offsets": [16, 20]}},
            bytes(range(20))),
        "zero_size_and_scalar": safetensors_file(
            {"empty": {"dtype": "F32", "shape": [0, 5], "data_offsets": [0, 0]},
             "scalar": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]},
             "huge_but_empty": {"dtype": "BF16", "shape": [0, 4611686018427387904, 4],
                                "data_offsets": [4, 4]}},
            b"\x00\x00\x80\x3f"),
        "padded_header": safetensors_file(
            {"w": {"dtype": "F16", "shape": [3], "data_offsets": [0, 6]}}, b"\x01" * 6, pad_to=8),
        "unsorted_entries": safetensors_file(
            {"z": {"dtype": "I32", "shape": [1], "data_offsets": [8, 12]},
             "a": {"dtype": "I32", "shape": [2], "data_offsets": [0, 8]}}, bytes(12)),
        "metadata_only": safetensors_file({"__metadata__": {}}),
        "metadata_not_string": safetensors_file({"__metadata__": {"n": 1}}),
        "dtype_unsupported_f64": safetensors_file(
            {"x": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}}, bytes(8)),
        "deep_nesting": struct.pack("<Q", 402) + b"{\"x\":" + b"[" * 198 + b"]" * 198 + b"}",
    }
    # A duplicated name: JSON parsers keep one of the two (nlohmann: the last).
    dup = (b'{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
           b'"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}')
    files["duplicate_name"] = struct.pack("<Q", len(dup)) + dup + bytes(8)
    # The demo model's real header, data section cut off (so it ends in "truncated").
    with open(ROOT / "deploy/models/sluice-tiny/model.safetensors", "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        files["sluice_tiny_header_only"] = struct.pack("<Q", n) + f.read(n)
    for name, content in files.items():
        (d / f"{name}.safetensors").write_bytes(content)
    return len(files)


def config_seeds():
    d = reset("model_config_seeds")
    n = 0
    for fam in ["llama_f32", "mixtral_f32", "olmoe_f32", "qwen3_f32", "qwen3_moe_f32", "qwen3_next_f32",
                "qwen3_5_f32", "qwen3_5_moe_f32", "qwen3_5_vl_wrapper_f32"]:
        shutil.copyfile(ROOT / "tests/data/models" / fam / "config.json", d / f"fixture_{fam}.json")
        n += 1
    for published in sorted((ROOT / "tests/data/configs").glob("*/config*.json")):
        shutil.copyfile(published, d / f"published_{published.parent.name}.json")
        n += 1
    shutil.copyfile(ROOT / "deploy/models/sluice-tiny/config.json", d / "sluice_tiny.json")
    n += 1
    llama = json.loads((ROOT / "tests/data/models/llama_f32/config.json").read_text())
    variants = {
        "llama3_rope_scaling": dict(llama, rope_theta=500000.0, bos_token_id=128000,
                                    eos_token_id=[128001, 128008, 128009], torch_dtype="bfloat16",
                                    rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                  "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                  "original_max_position_embeddings": 8192}),
        "linear_rope_clip_qkv": dict(llama, rope_scaling={"type": "linear", "factor": 2.0},
                                     clip_qkv=8.0, partial_rotary_factor=0.5, head_dim=16),
        "unsupported_features": dict(llama, rope_scaling={"rope_type": "yarn", "factor": 4.0},
                                     attention_bias=True, use_sliding_window=True),
        "minimal_llama": {"model_type": "llama", "vocab_size": 1, "hidden_size": 2,
                          "intermediate_size": 1, "num_hidden_layers": 1, "num_attention_heads": 1},
    }
    moe = json.loads((ROOT / "tests/data/models/qwen3_moe_f32/config.json").read_text())
    variants["qwen3_moe_sparse_step"] = dict(moe, decoder_sparse_step=2, mlp_only_layers=[0, 3],
                                             num_local_experts=moe.get("num_experts"))
    nxt = json.loads((ROOT / "tests/data/models/qwen3_next_f32/config.json").read_text())
    nxt.pop("layer_types", None)
    variants["qwen3_next_interval"] = dict(nxt, full_attention_interval=2, num_hidden_layers=6)
    mixtral = json.loads((ROOT / "tests/data/models/mixtral_f32/config.json").read_text())
    variants["mixtral_sliding_window"] = dict(mixtral, sliding_window=64)
    for name, cfg in variants.items():
        (d / f"variant_{name}.json").write_text(json.dumps(cfg, indent=1) + "\n")
    return n + len(variants)


def main():
    counts = {"generate_request_seeds": request_seeds(), "safetensors_header_seeds": safetensors_seeds(),
              "model_config_seeds": config_seeds()}
    for k, v in counts.items():
        print(f"{k}: {v} files")


if __name__ == "__main__":
    main()
