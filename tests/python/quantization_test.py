"""sluiced --quantization against the real daemon: GetModelInfo reports the weight format,
a quantized model still generates, a bad width fails at start naming the choices, and a
checkpoint whose config.json has a quantization_config fails to load naming its method.
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

    def run_sluiced(self, *args):
        return subprocess.run([os.path.join(tl.BIN_DIR, "sluiced"), "--listen=127.0.0.1:0", "--metrics_listen=",
                               "--http_listen=", *args], capture_output=True, text=True, timeout=60)

    def test_unknown_width_fails_at_start(self):
        r = self.run_sluiced(f"--model={QWEN3_BF16}", "--quantization=int3")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("--quantization=int3: must be none, int8 or int4", r.stderr)

    def test_pre_quantized_checkpoint_is_refused_by_method(self):
        with tempfile.TemporaryDirectory() as tmp:
            model = os.path.join(tmp, "fp8")
            shutil.copytree(QWEN3_BF16, model)
            with open(os.path.join(model, "config.json")) as f:
                config = json.load(f)
            config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}
            with open(os.path.join(model, "config.json"), "w") as f:
                json.dump(config, f)
            r = self.run_sluiced(f"--model={model}")
            self.assertNotEqual(r.returncode, 0)
            self.assertIn('quant_method "fp8"', r.stderr)
            self.assertIn("not supported", r.stderr)


if __name__ == "__main__":
    unittest.main()
