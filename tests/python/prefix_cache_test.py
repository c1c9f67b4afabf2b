"""Prefix caching against the real daemon (gRPC, the OpenAI HTTP API and /metrics):
a re-sent prompt reports Usage.cached_tokens and gives the same tokens as the first time,
on the hybrid demo model (Gated DeltaNet snapshots) and on a dense model; a conversation's
next turn hits what the previous turn left; GetEngineStats and /metrics count the same
queries and hits; --enable_prefix_caching=false turns every hit off.
"""

import json
import os
import random
import unittest
import urllib.request

import sluice_testlib as tl

pb, pbg = tl.stubs()
DENSE = os.path.join(tl.TEST_DATA_DIR, "models", "qwen3_bf16")


def generate(daemon, ids, n):
    req = pb.GenerateRequest(tokens=pb.TokenIds(ids=ids), sampling=pb.SamplingParams(temperature=0),
                             stopping=pb.StoppingCriteria(max_tokens=n, ignore_eos=True))
    reply = pbg.GenerationStub(daemon.channel()).Generate(req, timeout=60)
    return list(reply.token_ids), reply.usage.cached_tokens


def stats(daemon):
    return pbg.GenerationStub(daemon.channel()).GetEngineStats(pb.GetEngineStatsRequest(), timeout=10)


def vocab(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    return config.get("text_config", config)["vocab_size"]


class PrefixCacheTest(unittest.TestCase):
    def check_model(self, model_dir, first_hit):
        rng = random.Random(3)
        prompt = [rng.randrange(vocab(model_dir)) for _ in range(150)]
        with tl.Daemon(model_dir=model_dir, args=["--kv_cache_memory=67108864"]) as d:
            s0 = stats(d)
            self.assertTrue(s0.prefix_caching)
            tokens1, cached1 = generate(d, prompt, 70)
            tokens2, cached2 = generate(d, prompt, 70)
            self.assertEqual(cached1, 0)
            self.assertEqual(cached2, first_hit)
            self.assertEqual(tokens1, tokens2, "a cached prefix changes no output")
            # The next turn: prompt + answer + a new user message hits past the prompt.
            turn2 = prompt + tokens1 + [rng.randrange(vocab(model_dir)) for _ in range(20)]
            _, cached3 = generate(d, turn2, 4)
            self.assertGreater(cached3, first_hit, "the next turn reuses the previous answer too")
            s = stats(d)
            self.assertEqual(s.prefix_cache_queries - s0.prefix_cache_queries, 150 + 150 + len(turn2))
            self.assertEqual(s.prefix_cache_hits - s0.prefix_cache_hits, cached2 + cached3)
            self.assertGreater(s.cached_kv_blocks, 0)
            metrics = tl.parse_metrics(d.metrics_text())
            self.assertEqual(tl.metric_value(metrics, "sluice_prefix_cache_queries_total"), s.prefix_cache_queries)
            self.assertEqual(tl.metric_value(metrics, "sluice_prefix_cache_hits_total"), s.prefix_cache_hits)
            self.assertEqual(tl.metric_value(metrics, "sluice_prefix_cache_blocks"), s.cached_kv_blocks)
            self.assertEqual(tl.metric_value(metrics, "sluice_prefix_cache_state_snapshots"), s.state_snapshots)
            # The OpenAI API reports the same as prompt_tokens_details.cached_tokens.
            body = json.dumps({"model": os.path.basename(model_dir), "prompt": prompt, "max_tokens": 2,
                               "temperature": 0}).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{d.http_port}/v1/completions", data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as r:
                usage = json.load(r)["usage"]
            self.assertEqual(usage["prompt_tokens_details"]["cached_tokens"], first_hit)
            return s

    def test_hybrid_demo_model_hits_its_snapshots(self):
        # Gated DeltaNet layers: a hit ends where a state snapshot was taken, on the
        # 64-token grid (the prefill's end, 150 rounded down: 128).
        s = self.check_model(os.path.join(tl.SOURCE_DIR, "deploy", "models", "sluice-demo"), 128)
        self.assertGreater(s.state_snapshots, 0)
        self.assertGreater(s.total_state_snapshots, 0)
        self.assertGreater(s.state_snapshot_bytes, 0)

    def test_dense_model_hits_every_full_block(self):
        s = self.check_model(DENSE, 144)
        self.assertEqual(s.total_state_snapshots, 0)

    def test_disabled_never_hits(self):
        prompt = list(range(5, 155))
        with tl.Daemon(model_dir=DENSE, args=["--enable_prefix_caching=false"], metrics=False) as d:
            generate(d, prompt, 2)
            _, cached = generate(d, prompt, 2)
            self.assertEqual(cached, 0)
            s = stats(d)
            self.assertFalse(s.prefix_caching)
            self.assertEqual(s.prefix_cache_hits, 0)
            self.assertEqual(s.cached_kv_blocks, 0)

    def test_bad_flag_values_fail_at_start(self):
        import subprocess
        r = subprocess.run([os.path.join(tl.BIN_DIR, "sluiced"), "--listen=127.0.0.1:0", "--metrics_listen=",
                            "--http_listen=", "--prefix_state_memory=-1"], capture_output=True, text=True, timeout=60)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("prefix_state_memory", r.stderr)


if __name__ == "__main__":
    unittest.main()
