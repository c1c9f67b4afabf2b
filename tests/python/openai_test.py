"""The OpenAI-compatible HTTP server of the real sluiced, with the official `openai` client.

- /v1/completions and /v1/chat/completions, streamed and not, agree with each other and
  with the gRPC API on the same greedy request (text, token counts, logprobs);
  stream_options.include_usage; logprobs / top_logprobs; seeds; stop strings;
  max_completion_tokens; the sluice compute-budget extension reflected in usage.
- Chat uses a model directory made here: the demo model's files plus a tokenizer_config.json
  carrying the Qwen3 chat template (from ../shared/tokenizers/qwen3; a ChatML stand-in if
  that checkout is absent), so the real template renders, tools and enable_thinking
  included; gRPC's `messages` input renders the same prompt. The random-weight model never
  writes <think> or <tool_call> itself, so tag splitting is covered by the C++ unit test;
  here the reasoning parser's routing is checked end to end (--output_parser=qwen3, a
  template variant that opens <think> in the prompt).
- Errors in OpenAI's shape with the matching status: 400 (malformed JSON, wrong types,
  n=2), 401, 404 (unknown model), 413, 429, 503, 504; a malformed request does not disturb
  concurrent ones.
- A client that disconnects mid-stream cancels its sequence: running drops to 0 and every
  KV block is free again, long before the request would have ended.
- /health 200 while serving and 503 from SIGTERM on; /version; the drain over HTTP.
"""

import http.client
import json
import os
import signal
import tempfile
import threading
import time
import unittest

import openai

import sluice_testlib as tl

pb, pb_grpc = tl.stubs()
KEY = "sk-openai-test-0123456789"
MODEL_NAME = "tiny-chat"
QWEN3_CONFIG = os.path.join(tl.SOURCE_DIR, "..", "shared", "tokenizers", "qwen3", "tokenizer_config.json")
CHATML = ("{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content + "
          "'<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
          "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
          "{%- endif %}{%- endif %}")
GENERATION_PROMPT = "{{- '<|im_start|>assistant\\n' }}"
# Qwen3.5-style: the template opens the think block itself when asked (a kwarg of this test).
OPEN_THINK = GENERATION_PROMPT + "{%- if open_think is defined and open_think %}{{- '<think>\\n' }}{%- endif %}"


def chat_template():
    try:
        with open(QWEN3_CONFIG) as f:
            template = json.load(f)["chat_template"]
        source = "qwen3"
    except OSError:
        template, source = CHATML, "chatml"
    assert GENERATION_PROMPT in template
    return template.replace(GENERATION_PROMPT, OPEN_THINK), source


def make_chat_model():
    """The demo model plus a chat template (symlinks; tokenizer_config.json replaced)."""
    d = tempfile.mkdtemp(prefix="sluice-chat-model-")
    for name in os.listdir(tl.DEMO_MODEL):
        if name != "tokenizer_config.json":
            os.symlink(os.path.join(tl.DEMO_MODEL, name), os.path.join(d, name))
    with open(os.path.join(tl.DEMO_MODEL, "tokenizer_config.json")) as f:
        config = json.load(f)
    template, source = chat_template()
    config["chat_template"] = template
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    return d, source


def raw(port, method, path, body=None, headers=None, timeout=30):
    """(status, parsed JSON or text) over a fresh http.client connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read().decode("utf-8", "replace")
        try:
            return r.status, json.loads(data)
        except ValueError:
            return r.status, data
    finally:
        conn.close()


def auth(key=KEY):
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


def wait_idle(stub, metadata, timeout=10):
    """EngineStats once nothing runs or waits and every KV block is free (None on timeout)."""
    deadline = time.time() + timeout
    stats = None
    while time.time() < deadline:
        stats = stub.GetEngineStats(pb.GetEngineStatsRequest(), metadata=metadata, timeout=5)
        if stats.running == 0 and stats.waiting == 0 and stats.free_kv_blocks == stats.total_kv_blocks:
            return stats
        time.sleep(0.02)
    return None


def assert_error_shape(test, body, status_param=None):
    test.assertIsInstance(body, dict, body)
    test.assertEqual(set(body), {"error"}, body)
    err = body["error"]
    test.assertEqual(set(err), {"message", "type", "param", "code"}, err)
    test.assertIsInstance(err["message"], str)
    test.assertTrue(err["message"])
    if status_param is not None:
        test.assertEqual(err["param"], status_param, err)
    return err


class OpenAiTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.model_dir, cls.template_source = make_chat_model()
        keys = os.path.join(tempfile.mkdtemp(prefix="sluice-keys-"), "keys")
        with open(keys, "w") as f:
            f.write(KEY + "\n")
        cls.daemon = tl.Daemon(model_dir=cls.model_dir, args=[
            f"--api_keys_file={keys}", f"--served_model_name={MODEL_NAME}", "--output_parser=qwen3",
            "--http_max_body_bytes=65536", "--max_num_seqs=16"]).start()
        cls.port = cls.daemon.http_port
        cls.client = openai.OpenAI(base_url=f"http://127.0.0.1:{cls.port}/v1", api_key=KEY, max_retries=0, timeout=60)
        cls.channel = cls.daemon.channel()
        cls.stub = pb_grpc.GenerationStub(cls.channel)
        cls.md = (("authorization", f"Bearer {KEY}"),)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.channel.close()
        cls.daemon.stop()

    def grpc_generate(self, **kw):
        return self.stub.Generate(pb.GenerateRequest(**kw), metadata=self.md, timeout=60)

    def tokens_of(self, text, special=False):
        return list(self.stub.Tokenize(pb.TokenizeRequest(text=text.encode(), add_special_tokens=special),
                                       metadata=self.md, timeout=10).ids)

    # --- models, health, version, keys -------------------------------------------------

    def test_models_health_version(self):
        models = self.client.models.list()
        self.assertEqual([m.id for m in models.data], [MODEL_NAME])
        self.assertEqual(models.data[0].object, "model")
        self.assertEqual(models.data[0].owned_by, "sluice")
        status, body = raw(self.port, "GET", "/health")  # no key needed, like gRPC health
        self.assertEqual((status, body), (200, {"status": "SERVING"}))
        status, body = raw(self.port, "GET", "/version")
        self.assertEqual(status, 200)
        self.assertIn("version", body)
        self.assertIn("commit", body)

    def test_api_keys(self):
        before = tl.metric_value(self.daemon.metrics(), "sluice_request_rejected_total", reason="unauthenticated")
        bad = openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="wrong-key", max_retries=0)
        with self.assertRaises(openai.AuthenticationError) as e:
            bad.completions.create(model=MODEL_NAME, prompt="hi", max_tokens=2)
        self.assertEqual(e.exception.status_code, 401)
        self.assertEqual(e.exception.body["code"], "invalid_api_key")
        self.assertEqual(e.exception.body["message"], "invalid API key")
        with self.assertRaises(openai.AuthenticationError):
            bad.models.list()
        bad.close()
        # No key at all (the openai client refuses to send none): raw requests.
        for method, path in (("POST", "/v1/completions"), ("POST", "/v1/chat/completions"), ("GET", "/v1/models")):
            status, body = raw(self.port, method, path, json.dumps({"prompt": "x"}) if method == "POST" else None)
            self.assertEqual(status, 401, path)
            self.assertIn("Authorization: Bearer", assert_error_shape(self, body)["message"])
        # The same keys as gRPC: this one works there, and a wrong one fails there too.
        self.assertTrue(self.tokens_of("ok"))
        after = tl.metric_value(self.daemon.metrics(), "sluice_request_rejected_total", reason="unauthenticated")
        self.assertEqual(after - before, 5)

    # --- completions ---------------------------------------------------------------------

    def test_completion_matches_grpc(self):
        prompt = "The sluice gate opens"
        r = self.client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=12, temperature=0,
                                           extra_body={"ignore_eos": True})
        self.assertEqual(r.object, "text_completion")
        self.assertTrue(r.id.startswith("cmpl-"))
        self.assertEqual(r.model, MODEL_NAME)
        self.assertEqual(len(r.choices), 1)
        self.assertEqual(r.choices[0].finish_reason, "length")
        self.assertEqual(r.usage.completion_tokens, 12)
        self.assertEqual(r.usage.prompt_tokens, len(self.tokens_of(prompt, special=True)))
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + 12)
        g = self.grpc_generate(text=prompt.encode(), add_special_tokens=True,
                               stopping=pb.StoppingCriteria(max_tokens=12, ignore_eos=True))
        self.assertEqual(r.choices[0].text, g.text)
        self.assertEqual(r.usage.completion_tokens, len(g.token_ids))

    def test_completion_stream_and_usage(self):
        kw = dict(model=MODEL_NAME, prompt=[1, 2, 3], max_tokens=10, temperature=0, extra_body={"ignore_eos": True})
        whole = self.client.completions.create(**kw)
        chunks = list(self.client.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
        self.assertGreater(len(chunks), 2)
        text_chunks, usage_chunk = chunks[:-1], chunks[-1]
        self.assertEqual("".join(c.choices[0].text for c in text_chunks), whole.choices[0].text)
        self.assertTrue(all(c.usage is None for c in text_chunks))
        self.assertEqual([c.choices[0].finish_reason for c in text_chunks][-1], "length")
        self.assertTrue(all(c.choices[0].finish_reason is None for c in text_chunks[:-1]))
        self.assertEqual(usage_chunk.choices, [])
        self.assertEqual(usage_chunk.usage.completion_tokens, 10)
        self.assertEqual(usage_chunk.usage.prompt_tokens, 3)
        self.assertEqual(len({c.id for c in chunks}), 1)
        # Without include_usage there is no usage chunk.
        plain = list(self.client.completions.create(stream=True, **kw))
        self.assertTrue(all(c.usage is None and c.choices for c in plain))
        self.assertEqual("".join(c.choices[0].text for c in plain), whole.choices[0].text)

    def test_completion_logprobs(self):
        r = self.client.completions.create(model=MODEL_NAME, prompt=[4, 5, 6], max_tokens=6, temperature=0,
                                           logprobs=3, extra_body={"ignore_eos": True})
        lp = r.choices[0].logprobs
        self.assertEqual(len(lp.tokens), 6)
        self.assertEqual(len(lp.token_logprobs), 6)
        self.assertEqual(len(lp.top_logprobs), 6)
        self.assertEqual(lp.text_offset[0], 0)
        self.assertEqual(lp.text_offset, sorted(lp.text_offset))
        g = self.grpc_generate(tokens=pb.TokenIds(ids=[4, 5, 6]), logprobs=pb.LogprobsOptions(top_n=3),
                               stopping=pb.StoppingCriteria(max_tokens=6, ignore_eos=True))
        for mine, theirs in zip(lp.token_logprobs, g.logprobs):
            self.assertAlmostEqual(mine, theirs.logprob, places=5)
        for top in lp.top_logprobs:  # keyed by token text; byte tokens may share one
            self.assertTrue(1 <= len(top) <= 3)
            self.assertTrue(all(v <= 0 for v in top.values()))

    def test_seed_and_stop(self):
        kw = dict(model=MODEL_NAME, prompt=[7, 8, 9], max_tokens=16, temperature=1.0, extra_body={"ignore_eos": True})
        a = self.client.completions.create(seed=1234, **kw).choices[0].text
        b = self.client.completions.create(seed=1234, **kw).choices[0].text
        c = self.client.completions.create(seed=4321, **kw).choices[0].text
        self.assertEqual(a, b)
        self.assertNotEqual(a, c)
        greedy = self.client.completions.create(model=MODEL_NAME, prompt=[7, 8, 9], max_tokens=16, temperature=0,
                                                extra_body={"ignore_eos": True}).choices[0].text
        i = next(i for i in range(2, len(greedy) - 1) if "\ufffd" not in greedy[i:i + 2])
        stop = greedy[i:i + 2]
        r = self.client.completions.create(model=MODEL_NAME, prompt=[7, 8, 9], max_tokens=16, temperature=0,
                                           stop=[stop], extra_body={"ignore_eos": True})
        self.assertEqual(r.choices[0].text, greedy[:greedy.find(stop)])
        self.assertEqual(r.choices[0].finish_reason, "stop")

    def test_budget_extension_skip_layers(self):
        dense = self.client.completions.create(model=MODEL_NAME, prompt=[1, 2], max_tokens=4, temperature=0,
                                               extra_body={"ignore_eos": True})
        r = self.client.completions.create(model=MODEL_NAME, prompt=[1, 2], max_tokens=4, temperature=0,
                                           extra_body={"ignore_eos": True,
                                                       "sluice": {"budget": {"skip_layers": [[1, 2]]}}})
        s = r.usage.model_extra["sluice"]
        self.assertEqual(s["budget"], {"skip_layers": [[1, 2]]})
        self.assertEqual(s["budget_report"]["layers_skipped"], 2)
        self.assertLess(s["executed_flops"], s["dense_flops"])
        d = dense.usage.model_extra["sluice"]
        self.assertEqual(d["executed_flops"], d["dense_flops"])
        self.assertEqual(d["budget"], {})
        # The demo model has no residual gates: skip_ratio is refused naming the control.
        with self.assertRaises(openai.BadRequestError) as e:
            self.client.completions.create(model=MODEL_NAME, prompt=[1], max_tokens=2,
                                           extra_body={"sluice": {"budget": {"skip_ratio": 0.3}}})
        self.assertEqual(e.exception.body["param"], "sluice.budget.skip_ratio")
        self.assertIn("skip_layers", e.exception.body["message"])

    # --- chat ------------------------------------------------------------------------------

    def expected_prompt(self, user):
        return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"

    def test_chat_matches_grpc_messages(self):
        messages = [{"role": "user", "content": "Hello!"}]
        r = self.client.chat.completions.create(model=MODEL_NAME, messages=messages, max_completion_tokens=8,
                                                temperature=0, extra_body={"ignore_eos": True})
        self.assertEqual(r.object, "chat.completion")
        self.assertTrue(r.id.startswith("chatcmpl-"))
        m = r.choices[0].message
        self.assertEqual(m.role, "assistant")
        self.assertEqual(r.choices[0].finish_reason, "length")
        self.assertEqual(r.usage.completion_tokens, 8)
        self.assertEqual(r.usage.prompt_tokens, len(self.tokens_of(self.expected_prompt("Hello!"))))
        # The random model writes no <think>: the detecting parser files it all as content.
        self.assertIsNone(m.model_extra.get("reasoning_content"))
        g = self.grpc_generate(messages=pb.ChatInput(messages=[pb.ChatMessage(role="user", content="Hello!")]),
                               stopping=pb.StoppingCriteria(max_tokens=8, ignore_eos=True))
        self.assertEqual(m.content, g.text)
        self.assertEqual(g.usage.prompt_tokens, r.usage.prompt_tokens)
        # The same prompt as text, tokenized without special tokens, is the same request.
        t = self.grpc_generate(text=self.expected_prompt("Hello!").encode(),
                               stopping=pb.StoppingCriteria(max_tokens=8, ignore_eos=True))
        self.assertEqual(t.text, g.text)

    def test_chat_stream(self):
        kw = dict(model=MODEL_NAME, messages=[{"role": "system", "content": "Be brief."},
                                              {"role": "user", "content": "Count."}],
                  max_tokens=9, temperature=0, extra_body={"ignore_eos": True})
        whole = self.client.chat.completions.create(**kw)
        chunks = list(self.client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        self.assertEqual(chunks[0].object, "chat.completion.chunk")
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(content, whole.choices[0].message.content)
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
        self.assertEqual(finishes[-1], "length")
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(chunks[-1].usage.completion_tokens, 9)
        self.assertEqual(chunks[-1].usage.prompt_tokens, whole.usage.prompt_tokens)

    def test_chat_logprobs(self):
        r = self.client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "x"}],
                                                max_tokens=5, temperature=0, logprobs=True, top_logprobs=4,
                                                extra_body={"ignore_eos": True})
        content = r.choices[0].logprobs.content
        self.assertEqual(len(content), 5)
        for entry in content:
            self.assertEqual(len(entry.top_logprobs), 4)
            self.assertEqual(bytes(entry.bytes).decode("utf-8", "replace"), entry.token)
            # Greedy: the chosen token is the most likely one.
            self.assertAlmostEqual(entry.logprob, entry.top_logprobs[0].logprob, places=5)
            self.assertEqual([t.logprob for t in entry.top_logprobs],
                             sorted((t.logprob for t in entry.top_logprobs), reverse=True))
        streamed = [c for c in self.client.chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": "x"}], max_tokens=5, temperature=0,
            logprobs=True, top_logprobs=4, stream=True, extra_body={"ignore_eos": True}) if c.choices]
        stream_lp = [e for c in streamed if c.choices[0].logprobs for e in c.choices[0].logprobs.content]
        self.assertEqual([e.logprob for e in stream_lp], [e.logprob for e in content])
        with self.assertRaises(openai.BadRequestError) as e:
            self.client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "x"}],
                                                max_tokens=2, logprobs=True, top_logprobs=25)
        self.assertEqual(e.exception.body["param"], "top_logprobs")

    def test_chat_template_features(self):
        plain = self.client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}],
                                                    max_tokens=2)
        tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                                   "parameters": {"type": "object",
                                                                  "properties": {"city": {"type": "string"}}}}}]
        with_tools = self.client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}],
                                                         tools=tools, max_tokens=2)
        if self.template_source == "qwen3":  # the Qwen3 template writes the tools into the system turn
            self.assertGreater(with_tools.usage.prompt_tokens, plain.usage.prompt_tokens + 20)
        # A multi-turn history with a tool call and its answer renders too.
        history = [{"role": "user", "content": "Weather in Paris?"},
                   {"role": "assistant", "content": None, "tool_calls": [
                       {"id": "call_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                   {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
        r = self.client.chat.completions.create(model=MODEL_NAME, messages=history, tools=tools, max_tokens=3,
                                                extra_body={"ignore_eos": True})
        self.assertEqual(r.usage.completion_tokens, 3)
        self.assertIn(r.choices[0].finish_reason, ("length", "stop", "tool_calls", "invalid_tool_call"))
        # enable_thinking=false: the prompt ends in an empty think block (3 more pieces of text).
        off = self.client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}],
                                                  max_tokens=2, extra_body={"chat_template_kwargs": {
                                                      "enable_thinking": False}})
        self.assertEqual(off.usage.prompt_tokens,
                         len(self.tokens_of(self.expected_prompt("hi") + "<think>\n\n</think>\n\n")))

    def test_reasoning_routing(self):
        # The template opens <think> in the prompt: with no </think> generated (a truncated
        # turn, as vLLM files it), everything is reasoning and content is null.
        kw = dict(model=MODEL_NAME, messages=[{"role": "user", "content": "why?"}], max_tokens=6, temperature=0,
                  extra_body={"ignore_eos": True, "chat_template_kwargs": {"open_think": True}})
        r = self.client.chat.completions.create(**kw)
        m = r.choices[0].message
        self.assertIsNone(m.content)
        self.assertTrue(m.model_extra["reasoning_content"])
        chunks = [c for c in self.client.chat.completions.create(stream=True, **kw) if c.choices]
        reasoning = "".join(c.choices[0].delta.model_extra.get("reasoning_content") or "" for c in chunks)
        self.assertEqual(reasoning, m.model_extra["reasoning_content"])
        self.assertTrue(all(not c.choices[0].delta.content for c in chunks))
        # The same text as plain content when the template does not open the block.
        plain = self.client.chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": "why?"}], max_tokens=6, temperature=0,
            extra_body={"ignore_eos": True, "chat_template_kwargs": {"open_think": False}})
        self.assertIsInstance(plain.choices[0].message.content, str)
        self.assertIsNone(plain.choices[0].message.model_extra.get("reasoning_content"))

    # --- errors ----------------------------------------------------------------------------

    def test_errors(self):
        h = auth()
        cases = [
            ("/v1/completions", b"{\"prompt\": ", 400, None),
            ("/v1/completions", b"[1, 2]", 400, None),
            ("/v1/completions", json.dumps({"prompt": "x", "temperature": "hot"}).encode(), 400, "temperature"),
            ("/v1/completions", json.dumps({"prompt": "x", "max_tokens": "ten"}).encode(), 400, "max_tokens"),
            ("/v1/chat/completions", json.dumps({"messages": [{"role": 3, "content": "x"}]}).encode(), 400,
             "messages[0].role"),
            ("/v1/chat/completions", json.dumps({"messages": "hi"}).encode(), 400, "messages"),
            ("/v1/completions", json.dumps({"prompt": [99999]}).encode(), 400, "prompt"),
            ("/v1/completions", json.dumps({"prompt": "x", "model": "gpt-4"}).encode(), 404, "model"),
            ("/v1/completions", json.dumps({"prompt": "x" * 70000}).encode(), 413, None),
            ("/v1/nothing", b"{}", 404, None),
        ]
        for path, body, status, param in cases:
            got, answer = raw(self.port, "POST", path, body, h)
            self.assertEqual(got, status, (path, body[:80], answer))
            err = assert_error_shape(self, answer, param)
            if status == 404 and param == "model":
                self.assertEqual(err["code"], "model_not_found")
            if status == 413:
                self.assertEqual(err["code"], "request_too_large")
                self.assertIn("--http_max_body_bytes=65536", err["message"])
        with self.assertRaises(openai.BadRequestError) as e:
            self.client.completions.create(model=MODEL_NAME, prompt="x", n=2)
        self.assertEqual(e.exception.status_code, 400)
        self.assertEqual(e.exception.body["param"], "n")
        self.assertIn("n = 1", e.exception.body["message"])
        with self.assertRaises(openai.BadRequestError):
            self.client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "x"}], n=3)
        with self.assertRaises(openai.NotFoundError) as e:
            self.client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
        self.assertEqual(e.exception.body["code"], "model_not_found")
        # Limits come from the same flags as gRPC's: the message names the limit.
        with self.assertRaises(openai.BadRequestError) as e:
            self.client.completions.create(model=MODEL_NAME, prompt=[1], max_tokens=5000)
        self.assertEqual(e.exception.body["param"], "max_tokens")
        self.assertIn("context", e.exception.body["message"])

    def test_deadline_is_504(self):
        h = dict(auth(), **{"x-request-timeout": "0.05"})
        body = json.dumps({"prompt": [1, 2], "max_tokens": 2000, "ignore_eos": True}).encode()
        status, answer = raw(self.port, "POST", "/v1/completions", body, h)
        self.assertEqual(status, 504, answer)
        self.assertEqual(assert_error_shape(self, answer)["code"], "deadline_exceeded")
        status, answer = raw(self.port, "POST", "/v1/completions", body, dict(auth(), **{"x-request-timeout": "soon"}))
        self.assertEqual(status, 400)
        # Streamed: the status went out first, so the deadline is an error event the client raises.
        with self.assertRaises(openai.APIError) as e:
            for _ in self.client.completions.create(model=MODEL_NAME, prompt=[1, 2], max_tokens=2000, stream=True,
                                                    extra_headers={"x-request-timeout": "0.05"},
                                                    extra_body={"ignore_eos": True}):
                pass
        self.assertIn("deadline", str(e.exception).lower())
        self.assertIsNotNone(wait_idle(self.stub, self.md))

    def test_malformed_requests_do_not_disturb_others(self):
        kw = dict(model=MODEL_NAME, prompt=[3, 1, 4], max_tokens=64, temperature=0, extra_body={"ignore_eos": True})
        reference = self.client.completions.create(**kw).choices[0].text
        results, errors = [], []

        def good():
            try:
                client = openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=KEY, max_retries=0)
                text = "".join(c.choices[0].text for c in client.completions.create(stream=True, **kw))
                results.append(text)
                client.close()
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))

        threads = [threading.Thread(target=good) for _ in range(6)]
        for t in threads:
            t.start()
        bad = [b"{", b"\xff\xfe", json.dumps({"prompt": {"a": 1}}).encode(), b"{\"prompt\": \"" + b"y" * 70000 + b"\"}",
               json.dumps({"prompt": "x", "n": 5}).encode()]
        for _ in range(4):
            for body in bad:
                status, _ = raw(self.port, "POST", "/v1/completions", body, auth())
                self.assertIn(status, (400, 413))
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])
        self.assertEqual(results, [reference] * 6)

    def test_disconnect_cancels(self):
        m0 = self.daemon.metrics()
        abort0 = tl.metric_value(m0, "sluice_request_success_total", finished_reason="abort")
        stream = self.client.completions.create(model=MODEL_NAME, prompt=[1, 2, 3], max_tokens=2000, stream=True,
                                                extra_body={"ignore_eos": True})
        got = 0
        for chunk in stream:
            got += len(chunk.choices[0].text) if chunk.choices else 0
            if got >= 3:
                break
        stats = self.stub.GetEngineStats(pb.GetEngineStatsRequest(), metadata=self.md, timeout=5)
        self.assertEqual(stats.running, 1)
        self.assertLess(stats.free_kv_blocks, stats.total_kv_blocks)
        closed = time.time()
        stream.close()  # closes the connection mid-stream
        idle = wait_idle(self.stub, self.md, timeout=5)
        self.assertIsNotNone(idle, "the sequence kept running after its client went away")
        took = time.time() - closed
        self.assertLess(took, 1.0)
        deadline = time.time() + 5
        while time.time() < deadline:
            aborted = tl.metric_value(self.daemon.metrics(), "sluice_request_success_total", finished_reason="abort")
            if aborted == abort0 + 1:
                break
            time.sleep(0.05)
        self.assertEqual(aborted, abort0 + 1)

    def test_metrics_count_http_requests(self):
        before = self.daemon.metrics()
        self.client.completions.create(model=MODEL_NAME, prompt=[1], max_tokens=3, extra_body={"ignore_eos": True})
        after = self.daemon.metrics()
        for name, labels in [("sluice_rpc_started_total", {"method": "POST /v1/completions"}),
                             ("sluice_request_success_total", {"finished_reason": "length"}),
                             ("sluice_time_to_first_token_seconds_count", {})]:
            self.assertEqual(tl.metric_value(after, name, **labels) - tl.metric_value(before, name, **labels), 1, name)
        self.assertEqual(tl.metric_value(after, "sluice_generation_tokens_total")
                         - tl.metric_value(before, "sluice_generation_tokens_total"), 3)


class GateSkipBudgetTest(unittest.TestCase):
    """skip_ratio on a model with residual gates (a token prompt: the fixture has no tokenizer)."""

    def test_skip_ratio_in_usage(self):
        model = os.path.join(tl.TEST_DATA_DIR, "models", "qwen3_next_gateskip_f32")
        with tl.Daemon(model_dir=model, metrics=False) as d:
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{d.http_port}/v1", api_key="unused", max_retries=0)
            name = os.path.basename(model)
            dense = client.completions.create(model=name, prompt=[5, 6, 7, 8], max_tokens=6,
                                              extra_body={"ignore_eos": True})
            r = client.completions.create(model=name, prompt=[5, 6, 7, 8], max_tokens=6,
                                          extra_body={"ignore_eos": True, "sluice": {"budget": {"skip_ratio": 0.3}}})
            s = r.usage.model_extra["sluice"]
            self.assertEqual(s["budget"], {"skip_ratio": 0.3})
            self.assertGreater(s["budget_report"]["branches_skipped"], 0)
            self.assertLess(s["executed_flops"], s["dense_flops"])
            self.assertEqual(s["dense_flops"], dense.usage.model_extra["sluice"]["dense_flops"])
            self.assertEqual(r.usage.completion_tokens, 6)
            client.close()


class AdmissionAndDrainTest(unittest.TestCase):
    def test_queue_full_is_429(self):
        with tl.Daemon(args=["--max_num_seqs=1", "--max_queue=1"], metrics=False) as d:
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{d.http_port}/v1", api_key="x", max_retries=0)
            kw = dict(model="sluice-tiny", prompt=[1, 2], max_tokens=2000, stream=True, extra_body={"ignore_eos": True})
            running = client.completions.create(**kw)
            next(iter(running))
            queued = client.completions.create(**kw)  # headers come back before it runs
            with self.assertRaises(openai.RateLimitError) as e:
                client.completions.create(model="sluice-tiny", prompt=[1], max_tokens=2)
            self.assertEqual(e.exception.status_code, 429)
            self.assertIn("max_queue", e.exception.body["message"])
            running.close()
            queued.close()
            client.close()

    def test_health_and_drain(self):
        d = tl.Daemon(args=["--drain_grace_s=1", "--drain_timeout_s=20"], metrics=False).start()
        try:
            port = d.http_port
            self.assertEqual(raw(port, "GET", "/health")[0], 200)
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
            results = {}

            def long_stream():
                chunks = list(client.completions.create(model="sluice-tiny", prompt=[1, 2], max_tokens=1900,
                                                        stream=True, stream_options={"include_usage": True},
                                                        extra_body={"ignore_eos": True}))
                results["usage"] = chunks[-1].usage

            t = threading.Thread(target=long_stream)
            t.start()
            time.sleep(0.3)
            signaled = time.time()
            d.signal(signal.SIGTERM)
            deadline = time.time() + 2
            while time.time() < deadline and raw(port, "GET", "/health")[0] != 503:
                time.sleep(0.02)
            self.assertEqual(raw(port, "GET", "/health"), (503, {"status": "NOT_SERVING"}))
            self.assertLess(time.time() - signaled, 1.0)
            # During the grace requests are still served.
            ok = client.completions.create(model="sluice-tiny", prompt=[1], max_tokens=2, extra_body={"ignore_eos": True})
            self.assertEqual(ok.usage.completion_tokens, 2)
            # After it, the engine refuses new ones: 503 in OpenAI's shape.
            deadline = time.time() + 10
            status = None
            while time.time() < deadline:
                status, body = raw(port, "POST", "/v1/completions", json.dumps({"prompt": [1], "max_tokens": 2}))
                if status == 503:
                    break
                time.sleep(0.1)
            self.assertEqual(status, 503)
            self.assertEqual(assert_error_shape(self, body)["type"], "service_unavailable_error")
            t.join(30)
            self.assertEqual(results["usage"].completion_tokens, 1900)  # the in-flight stream finished
            self.assertEqual(d.proc.wait(30), 0)
            client.close()
        finally:
            d.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
