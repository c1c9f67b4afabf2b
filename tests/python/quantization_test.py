"""sluiced --quantization against the real daemon: GetModelInfo reports the weight format,
a quantized model still generates, a bad width fails at start naming the choices, an
unsupported pre-quantized method fails to load naming it, and the FP8 and GPTQ fixtures load
as published, report their format and decode as transformers does.
"""

import json
import os
import shutil
import subprocess
import tempfile
import unittest

import sluice_testlib as tl

pb, pbg = tl.stubs()
QWEN3_BF16 = os.path.join(tl.TEST_DATA_DIR, "models", "qwen3_bf16")


def model_info(daemon):
    return pbg.GenerationStub(daemon.channel()).GetModelInfo(pb.GetModelInfoRequest(), timeout=10)


def generate_ids(daemon, ids, n):
    req = pb.GenerateRequest(tokens=pb.TokenIds(ids=ids), sampling=pb.SamplingParams(temperature=0),
                             stopping=pb.StoppingCriteria(max_tokens=n, ignore_eos=True))
    return list(pbg.GenerationStub(daemon.channel()).Generate(req, timeout=30).token_ids)


class QuantizationTest(unittest.TestCase):
    def test_default_reports_no_quantization(self):
        with tl.Daemon(model_dir=QWEN3_BF16, metrics=False) as d:
            info = model_info(d)
            self.assertEqual(info.quantization, "none")
            self.assertEqual(info.weight_format, "bfloat16")

    def test_int8_and_int4_report_their_format_and_generate(self):
        for flags, width, embeddings in ((["--quantization=int8"], "int8", "embedding int8"),
                                         (["--quantization=int8", "--quantize_embeddings=false"], "int8",
                                          "embedding and LM head bfloat16"),
                                         (["--quantization=int4"], "int4", "embedding int8")):
            with self.subTest(flags=flags), tl.Daemon(model_dir=QWEN3_BF16, args=flags, metrics=False) as d:
                info = model_info(d)
                self.assertEqual(info.quantization, width)
                self.assertTrue(info.weight_format.startswith(width), info.weight_format)
                self.assertIn(embeddings, info.weight_format)
                self.assertEqual(info.weight_dtype, "bfloat16")  # the checkpoint's own dtype
                out = generate_ids(d, [1, 2, 3, 4], 5)
                self.assertEqual(len(out), 5)
                self.assertTrue(all(0 <= t < info.vocab_size for t in out), out)

    def test_int4_group_size_and_int8_parts(self):
        flags = ["--quantization=int4", "--int4_group_size=32", "--int4_int8_parts=lm_head,attention_in"]
        with tl.Daemon(model_dir=QWEN3_BF16, args=flags, metrics=False) as d:
            info = model_info(d)
            self.assertEqual(info.quantization, "int4")
            self.assertIn("32 per group", info.weight_format)
            self.assertIn("LM head int8", info.weight_format)
            self.assertIn("int8: attention_in", info.weight_format)
            out = generate_ids(d, [1, 2, 3, 4], 5)
            self.assertEqual(len(out), 5)
            self.assertTrue(all(0 <= t < info.vocab_size for t in out), out)
        for bad, message in (("--int4_int8_parts=lm_head,mlp", 'projection part "mlp"'),
                             ("--int4_group_size=48", "--int4_group_size=48: must be 32, 64 or 128")):
            with self.subTest(flag=bad):
                r = self.run_sluiced(f"--model={QWEN3_BF16}", "--quantization=int4", bad)
                self.assertNotEqual(r.returncode, 0)
                self.assertIn(message, r.stderr)

    def run_sluiced(self, *args):
        return subprocess.run([os.path.join(tl.BIN_DIR, "sluiced"), "--listen=127.0.0.1:0", "--metrics_listen=",
                               "--http_listen=", *args], capture_output=True, text=True, timeout=60)

    def test_unknown_width_fails_at_start(self):
        r = self.run_sluiced(f"--model={QWEN3_BF16}", "--quantization=int3")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("--quantization=int3: must be none, int8 or int4", r.stderr)

    def test_pre_quantized_checkpoint_is_refused_by_method(self):
        # An unsupported method fails naming it; a supported one declared over bf16
        # tensors fails too (the tensors are not in its format): never read as bf16.
        for quantization, expected in (({"quant_method": "awq", "bits": 4}, ['quant_method "awq"', "not supported"]),
                                       ({"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]},
                                        ['quant_method "fp8"', "not an fp8 checkpoint"])):
            with self.subTest(method=quantization["quant_method"]), tempfile.TemporaryDirectory() as tmp:
                model = os.path.join(tmp, "model")
                shutil.copytree(QWEN3_BF16, model)
                with open(os.path.join(model, "config.json")) as f:
                    config = json.load(f)
                config["quantization_config"] = quantization
                with open(os.path.join(model, "config.json"), "w") as f:
                    json.dump(config, f)
                r = self.run_sluiced(f"--model={model}")
                self.assertNotEqual(r.returncode, 0)
                for text in expected:
                    self.assertIn(text, r.stderr)

    def test_pre_quantized_checkpoints_report_their_format_and_match_transformers(self):
        # FP8 (block scales) and GPTQ (act-order) fixtures, as published: GetModelInfo names
        # the format, and greedy decoding reproduces transformers' greedy continuation of
        # the dequantized weights (tests/fixtures/make_prequantized_fixtures.py).
        for name, prefix in (("qwen3_fp8", "fp8_block128"), ("qwen3_gptq_act_order", "gptq_int4_g64_act_order"),
                             ("qwen3_moe_fp8", "fp8_block128"), ("qwen3_moe_gptq", "gptq_int4_g32")):
            model_dir = os.path.join(tl.TEST_DATA_DIR, "models", name)
            with open(os.path.join(model_dir, "golden.json")) as f:
                golden = json.load(f)
            with self.subTest(model=name), tl.Daemon(model_dir=model_dir, metrics=False) as d:
                info = model_info(d)
                self.assertEqual(info.quantization, "none")
                self.assertTrue(info.weight_format.startswith(prefix), info.weight_format)
                for prompt in golden["prompts"][:2]:
                    self.assertEqual(generate_ids(d, prompt["ids"], len(prompt["greedy"])), prompt["greedy"])

    def test_quantization_flag_on_a_pre_quantized_checkpoint_fails_at_start(self):
        r = self.run_sluiced("--model=" + os.path.join(tl.TEST_DATA_DIR, "models", "qwen3_fp8"), "--quantization=int8")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("already quantized", r.stderr)


if __name__ == "__main__":
    unittest.main()
