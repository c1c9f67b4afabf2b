#!/usr/bin/env python3
"""Soak test of the real sluiced on loopback (issue 11).

64 worker threads drive a sluiced serving the hybrid fixture tests/data/models/qwen3_5_moe_f32
(Gated DeltaNet + gated attention + MoE, so KV blocks *and* recurrent-state slots are used)
for --seconds (default 20; `make soak` runs 120). Each worker loops over random actions:
streams and unary generates, streams and unaries cancelled at a random point, calls with a
short deadline, oversize inputs (over --max_prompt_tokens / --max_output_tokens /
--max_stop_strings / --max_stop_string_bytes / --max_logprobs: INVALID_ARGUMENT, over
--max_message_bytes: RESOURCE_EXHAUSTED from the transport), invalid compute budgets, a few
metadata RPCs, and about 10 % calls with a bad or missing API key (UNAUTHENTICATED). Each
action has its set of allowed status codes; any other status is a failure.

A monitor thread checks health every 0.5 s with no API key (health is exempt) and samples
the daemon's RSS every second. At the end the test waits (bounded) for the engine to go
idle and checks, from GetEngineStats and /metrics, that nothing runs or waits and every KV
block and state slot is free; that the rejection counters agree with what the clients saw;
that RSS stayed within 10 % of its value at the end of the warm-up; then SIGTERMs the
daemon and requires exit 0. It prints a summary (and --report writes it as JSON) and exits
non-zero on any failure. Everything is bounded: the run by --seconds and --max-calls, every
call by a deadline, every wait by a timeout; the daemon is killed if this process dies.
"""

import argparse
import collections
import heapq
import json
import os
import random
import secrets
import signal
import sys
import tempfile
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluice_testlib as tl  # noqa: E402

import grpc  # noqa: E402  (from the venv)
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

pb, pbg = tl.stubs()
Code = grpc.StatusCode

MODEL = os.path.join(tl.TEST_DATA_DIR, "models", "qwen3_5_moe_f32")
WORKERS = 64
CHANNELS = 4  # 16 workers per connection: well under --max_streams_per_connection
BAD_KEY_FRACTION = 0.10

# The limits the daemon is started with (issue-11 flags), chosen inside the model's context
# of 256 tokens so that only the new flag can refuse the requests that exceed them.
LIMITS = dict(max_prompt_tokens=160, max_output_tokens=64, max_stop_strings=4,
              max_stop_string_bytes=64, max_logprobs=5, max_message_bytes=65536)
# What the daemon enforces without those flags (used only with --existing-flags-only).
OLD_LIMITS = dict(max_prompt_tokens=255, max_output_tokens=255, max_stop_strings=16,
                  max_stop_string_bytes=1024, max_logprobs=20, max_message_bytes=65536)
# Valid requests: prompts of 1..100 tokens, 1..64 new tokens (inside both sets of limits).
VALID_MAX_PROMPT = 100
VALID_MAX_OUTPUT = 64
ENGINE_FLAGS = [
    "--threads=2",
    # 64 streams against 16 running sequences: the rest queue. ~1 500 tokens of KV for 16
    # sequences of up to 160 + 64 tokens: long ones get preempted and recomputed.
    "--max_num_seqs=16",
    "--kv_cache_memory=1700000",
    # Few distinct step sizes (1..64 rows; longer prompts go in chunks): the CPU linear layers
    # cache one oneDNN matmul per row count (kernels/cpu/linear_cpu.cc, up to 256 each), and
    # with 512 that cache keeps filling for minutes, RSS climbing 15-25 % from 5 s to 20 s.
    # With 64 it is full within the warm-up, so growth after it means a leak.
    "--max_num_batched_tokens=64",
    "--max_queue=1024",
]
ISSUE11_FLAGS = ["api_keys_file", "max_prompt_tokens", "max_output_tokens", "max_stop_strings",
                 "max_stop_string_bytes", "max_logprobs", "max_streams_per_connection", "drain_grace_s"]

INVALID_CODES = {Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION, Code.OUT_OF_RANGE}
GENERATE_METHODS = {"Generate", "GenerateStream"}
NORMAL_TIMEOUT_S = 60.0


# ---------------------------------------------------------------------------------------------
# Bookkeeping


class Ledger:
    """Everything the workers saw, under one lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.by_action = collections.Counter()  # (action, code name) -> calls
        self.generate_codes = collections.Counter()  # code name -> good-key Generate/Stream calls
        self.bad_key_calls = 0
        self.calls = 0
        self.unexpected = collections.Counter()  # (action, variant, method, code, message) -> n
        self.errors = []  # harness exceptions and inconsistent responses
        self.ttft = []  # successful "stream" actions
        self.stream_e2e = []
        self.unary_e2e = []
        self.tokens_out = 0

    def record(self, action, variant, method, code, message, allowed, bad_key):
        name = code.name if code is not None else "NONE"
        with self.lock:
            self.calls += 1
            self.by_action[(action, name)] += 1
            if bad_key:
                self.bad_key_calls += 1
            elif method in GENERATE_METHODS:
                self.generate_codes[name] += 1
            if code not in allowed:
                msg = (message or "")[:200]
                self.unexpected[(action, variant, method, name, msg)] += 1

    def error(self, text):
        with self.lock:
            if len(self.errors) < 50:
                self.errors.append(text)


class Canceller:
    """One thread that cancels calls at chosen times (cheaper than a timer thread per call)."""

    def __init__(self):
        self.cv = threading.Condition()
        self.heap = []
        self.seq = 0
        self.stopped = False
        self.thread = threading.Thread(target=self._run, name="canceller", daemon=True)
        self.thread.start()

    def at(self, when, call):
        with self.cv:
            self.seq += 1
            heapq.heappush(self.heap, (when, self.seq, call))
            self.cv.notify()

    def _run(self):
        with self.cv:
            while not self.stopped:
                now = time.monotonic()
                while self.heap and self.heap[0][0] <= now:
                    _, _, call = heapq.heappop(self.heap)
                    call.cancel()
                wait = (self.heap[0][0] - now) if self.heap else 0.5
                self.cv.wait(min(max(wait, 0.0), 0.5))

    def stop(self):
        with self.cv:
            self.stopped = True
            for _, _, call in self.heap:
                call.cancel()
            self.heap.clear()
            self.cv.notify()
        self.thread.join(5)


def percentile(values, q):
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(q / 100.0 * len(s) + 0.5)) - 1))  # nearest rank
    return s[k]


# ---------------------------------------------------------------------------------------------
# The load


class Load:
    def __init__(self, daemon, keys, limits, info, auth, ledger, canceller, end_time, max_calls):
        self.daemon = daemon
        self.keys = keys
        self.limits = limits
        self.info = info
        self.auth = auth
        self.ledger = ledger
        self.canceller = canceller
        self.end_time = end_time
        self.max_calls = max_calls
        self.stop = threading.Event()
        opts = [("grpc.use_local_subchannel_pool", 1)]  # one TCP connection per channel
        self.channels = [daemon.channel(options=opts) for _ in range(CHANNELS)]
        self.vocab = info.vocab_size
        self.context = info.max_model_len
        self.k = info.experts_per_token
        self.controls = set(info.supported_budget_controls)
        actions = [  # (weight, action)
            (30, self.a_stream), (12, self.a_unary), (9, self.a_cancel_stream), (4, self.a_cancel_unary),
            (9, self.a_deadline), (4, self.a_oversize_prompt), (3, self.a_oversize_output),
            (3, self.a_oversize_stops), (2, self.a_oversize_logprobs), (3, self.a_oversize_message),
            (8, self.a_invalid_budget), (3, self.a_info),
        ]
        self.weights = [w for w, _ in actions]
        self.actions = [a for _, a in actions]

    # -- helpers -------------------------------------------------------------------------------

    def good_md(self, rng):
        return (("authorization", f"Bearer {rng.choice(self.keys)}"),)

    def prompt(self, rng, n):
        return pb.GenerateRequest(tokens=pb.TokenIds(ids=[rng.randrange(self.vocab) for _ in range(n)]))

    def valid_request(self, rng, max_prompt=None, max_tokens=None):
        lim = self.limits
        n = rng.randint(1, max_prompt or min(VALID_MAX_PROMPT, lim["max_prompt_tokens"]))
        req = self.prompt(rng, n)
        req.stopping.max_tokens = max_tokens or rng.randint(1, min(VALID_MAX_OUTPUT, lim["max_output_tokens"]))
        if rng.random() < 0.5:
            req.stopping.ignore_eos = True
        if rng.random() < 0.1:
            req.stopping.stop_token_ids.append(rng.randrange(self.vocab))
        if rng.random() < 0.5:
            req.sampling.temperature = rng.choice([0.7, 1.0])
            req.sampling.top_p = rng.choice([0.9, 1.0])
            req.sampling.seed = rng.randrange(1 << 32)
        if rng.random() < 0.2:
            req.logprobs.top_n = rng.randint(0, lim["max_logprobs"])
        if rng.random() < 0.3:
            self.valid_budget(rng, req.budget)
        req.priority = rng.choice([0, 0, 0, 1, -1])
        req.request_id = f"soak-{rng.randrange(1 << 30)}"
        return req

    def valid_budget(self, rng, b):
        if "experts_per_token" in self.controls and self.k > 0:
            b.experts_per_token = rng.randint(1, self.k)
        if "attention_gate_floor" in self.controls and rng.random() < 0.5:
            b.attention_gate_floor = rng.choice([0.1, 0.3])
        if "skip_layers" in self.controls and rng.random() < 0.3:
            b.skip_layers.add(first=rng.randrange(1, max(2, self.info.num_layers)))

    def run_stream(self, stub, req, md, timeout, cancel_after_msgs=None, cancel_at=None):
        """(code, details, ttft_s, e2e_s, tokens, last message)."""
        t0 = time.monotonic()
        ttft = None
        tokens = 0
        last = None
        call = stub.GenerateStream(req, metadata=md, timeout=timeout)
        if cancel_at is not None:
            self.canceller.at(t0 + cancel_at, call)
        msgs = 0
        try:
            for msg in call:
                msgs += 1
                if msg.token_ids and ttft is None:
                    ttft = time.monotonic() - t0
                tokens += len(msg.token_ids)
                last = msg
                if cancel_after_msgs is not None and msgs >= cancel_after_msgs:
                    call.cancel()
            return Code.OK, "", ttft, time.monotonic() - t0, tokens, last
        except grpc.RpcError as e:
            return e.code(), e.details(), ttft, time.monotonic() - t0, tokens, last

    def run_unary(self, stub, req, md, timeout, cancel_at=None):
        """(code, details, e2e_s, response)."""
        t0 = time.monotonic()
        if cancel_at is None:
            try:
                resp = stub.Generate(req, metadata=md, timeout=timeout)
                return Code.OK, "", time.monotonic() - t0, resp
            except grpc.RpcError as e:
                return e.code(), e.details(), time.monotonic() - t0, None
        fut = stub.Generate.future(req, metadata=md, timeout=timeout)
        self.canceller.at(t0 + cancel_at, fut)
        try:
            resp = fut.result(timeout=timeout + 5)
            return Code.OK, "", time.monotonic() - t0, resp
        except grpc.FutureCancelledError:
            return Code.CANCELLED, "cancelled by the client", time.monotonic() - t0, None
        except grpc.RpcError as e:
            return e.code(), e.details(), time.monotonic() - t0, None

    def generate_either(self, rng, stub, req, md, timeout=NORMAL_TIMEOUT_S):
        """A refused request on a random one of the two generate RPCs: (method, code, details)."""
        if rng.random() < 0.5:
            code, details, *_ = self.run_stream(stub, req, md, timeout)
            return "GenerateStream", code, details
        code, details, *_ = self.run_unary(stub, req, md, timeout)
        return "Generate", code, details

    def check_result(self, action, req, tokens, last, unary_resp=None):
        """An OK generate must be self-consistent; anything else is a daemon bug."""
        usage = unary_resp.usage if unary_resp is not None else (last.usage if last is not None else None)
        reason = unary_resp.finish_reason if unary_resp is not None else (last.finish_reason if last else 0)
        if unary_resp is not None:
            tokens = len(unary_resp.token_ids)
        problems = []
        if reason == pb.FINISH_REASON_UNSPECIFIED:
            problems.append("no finish_reason on the last message")
        if usage is None or usage.completion_tokens != tokens:
            problems.append(f"usage.completion_tokens {usage.completion_tokens if usage else None} != {tokens} received")
        if usage is not None and usage.prompt_tokens != len(req.tokens.ids):
            problems.append(f"usage.prompt_tokens {usage.prompt_tokens} != {len(req.tokens.ids)} sent")
        if tokens > req.stopping.max_tokens:
            problems.append(f"{tokens} tokens > max_tokens {req.stopping.max_tokens}")
        if reason == pb.FINISH_REASON_LENGTH and tokens != req.stopping.max_tokens:
            problems.append(f"finish LENGTH after {tokens} of max_tokens {req.stopping.max_tokens}")
        if problems:
            self.ledger.error(f"{action}: inconsistent OK response: {'; '.join(problems)}")

    # -- actions: each returns (variant, method, code, details, allowed codes) -----------------

    def a_stream(self, rng, stub, md):
        req = self.valid_request(rng)
        code, details, ttft, e2e, tokens, last = self.run_stream(stub, req, md, NORMAL_TIMEOUT_S)
        if code == Code.OK:
            self.check_result("stream", req, tokens, last)
            with self.ledger.lock:
                self.ledger.stream_e2e.append(e2e)
                self.ledger.tokens_out += tokens
                if ttft is not None:
                    self.ledger.ttft.append(ttft)
        return "valid", "GenerateStream", code, details, {Code.OK}

    def a_unary(self, rng, stub, md):
        req = self.valid_request(rng)
        code, details, e2e, resp = self.run_unary(stub, req, md, NORMAL_TIMEOUT_S)
        if code == Code.OK:
            self.check_result("unary", req, 0, None, unary_resp=resp)
            with self.ledger.lock:
                self.ledger.unary_e2e.append(e2e)
                self.ledger.tokens_out += len(resp.token_ids)
        return "valid", "Generate", code, details, {Code.OK}

    def a_cancel_stream(self, rng, stub, md):
        req = self.valid_request(rng, max_tokens=rng.randint(8, VALID_MAX_OUTPUT))
        if rng.random() < 0.5:
            variant, kw = "after_messages", dict(cancel_after_msgs=rng.randint(1, 6))
        else:
            variant, kw = "at_time", dict(cancel_at=rng.uniform(0.0, 0.5))
        code, details, *_ = self.run_stream(stub, req, md, NORMAL_TIMEOUT_S, **kw)
        return variant, "GenerateStream", code, details, {Code.OK, Code.CANCELLED}

    def a_cancel_unary(self, rng, stub, md):
        req = self.valid_request(rng)
        code, details, *_ = self.run_unary(stub, req, md, NORMAL_TIMEOUT_S, cancel_at=rng.uniform(0.0, 0.5))
        return "at_time", "Generate", code, details, {Code.OK, Code.CANCELLED}

    def a_deadline(self, rng, stub, md):
        req = self.valid_request(rng)
        timeout = rng.uniform(0.005, 0.3)
        if rng.random() < 0.5:
            code, details, *_ = self.run_stream(stub, req, md, timeout)
            method = "GenerateStream"
        else:
            code, details, *_ = self.run_unary(stub, req, md, timeout)
            method = "Generate"
        return "short", method, code, details, {Code.OK, Code.DEADLINE_EXCEEDED}

    def a_oversize_prompt(self, rng, stub, md):
        lim = self.limits["max_prompt_tokens"]
        if lim < self.context - 1 and rng.random() < 0.75:
            # Over the flag but inside the context: only --max_prompt_tokens refuses it.
            variant, n = "over_max_prompt_tokens", rng.randint(lim + 1, self.context - 9)
        else:
            variant, n = "over_context", rng.randint(self.context, self.context + 100)
        req = self.prompt(rng, n)
        req.stopping.max_tokens = rng.randint(1, 8)
        method, code, details = self.generate_either(rng, stub, req, md)
        return variant, method, code, details, {Code.INVALID_ARGUMENT}

    def a_oversize_output(self, rng, stub, md):
        lim = self.limits["max_output_tokens"]
        req = self.prompt(rng, rng.randint(1, 16))
        if lim < self.context - 17 and rng.random() < 0.75:
            variant = "over_max_output_tokens"
            req.stopping.max_tokens = rng.randint(lim + 1, self.context - 17)
        else:
            variant = "over_context"
            req.stopping.max_tokens = rng.randint(self.context, self.context + 100)
        method, code, details = self.generate_either(rng, stub, req, md)
        return variant, method, code, details, {Code.INVALID_ARGUMENT}

    def a_oversize_stops(self, rng, stub, md):
        req = self.valid_request(rng)
        if rng.random() < 0.5:
            variant = "too_many_stop_strings"
            for i in range(self.limits["max_stop_strings"] + rng.randint(1, 4)):
                req.stopping.stop.append(f"stop{i}")
        else:
            variant = "stop_string_too_long"
            req.stopping.stop.append("s" * (self.limits["max_stop_string_bytes"] + rng.randint(1, 100)))
        method, code, details = self.generate_either(rng, stub, req, md)
        # A model without a tokenizer (this fixture) may refuse stop strings as such.
        allowed = {Code.INVALID_ARGUMENT} if self.info.has_tokenizer else {Code.INVALID_ARGUMENT,
                                                                             Code.FAILED_PRECONDITION}
        return variant, method, code, details, allowed

    def a_oversize_logprobs(self, rng, stub, md):
        req = self.valid_request(rng)
        req.logprobs.top_n = self.limits["max_logprobs"] + rng.randint(1, 10)
        method, code, details = self.generate_either(rng, stub, req, md)
        return "over_max_logprobs", method, code, details, {Code.INVALID_ARGUMENT}

    def a_oversize_message(self, rng, stub, md):
        over = self.limits["max_message_bytes"] + rng.randint(1, 20000)
        if rng.random() < 0.5:
            variant = "tokens_over_max_message_bytes"
            req = pb.GenerateRequest(tokens=pb.TokenIds(ids=[rng.randrange(self.vocab)] * over))
            req.stopping.max_tokens = 1
        else:
            variant = "stop_over_max_message_bytes"
            req = self.valid_request(rng)
            req.stopping.stop.append("x" * over)
        method, code, details = self.generate_either(rng, stub, req, md)
        return variant, method, code, details, {Code.RESOURCE_EXHAUSTED}

    def invalid_budgets(self):
        """(variant, setter, expected code) for every budget this model must refuse."""
        out = [
            ("skip_ratio_1.5", lambda b: setattr(b, "skip_ratio", 1.5), Code.INVALID_ARGUMENT),
            ("skip_ratio_negative", lambda b: setattr(b, "skip_ratio", -0.25), Code.INVALID_ARGUMENT),
            ("attention_gate_floor_1", lambda b: setattr(b, "attention_gate_floor", 1.0), Code.INVALID_ARGUMENT),
            ("skip_layers_out_of_range", lambda b: b.skip_layers.add(first=self.info.num_layers + 3),
             Code.INVALID_ARGUMENT),
        ]
        if self.info.num_experts > 0:
            out.append(("experts_per_token_above_k",
                        lambda b: setattr(b, "experts_per_token", self.k + 1 + random.randrange(4)),
                        Code.INVALID_ARGUMENT))
        else:
            out.append(("experts_per_token_dense", lambda b: setattr(b, "experts_per_token", 1),
                        Code.FAILED_PRECONDITION))
        if "skip_ratio" not in self.controls:
            out.append(("skip_ratio_unsupported", lambda b: setattr(b, "skip_ratio", 0.3), Code.FAILED_PRECONDITION))
        if "attention_gate_floor" not in self.controls:
            out.append(("attention_gate_floor_unsupported", lambda b: setattr(b, "attention_gate_floor", 0.3),
                        Code.FAILED_PRECONDITION))
        return out

    def a_invalid_budget(self, rng, stub, md):
        variant, setter, expected = rng.choice(self._invalid_budgets)
        req = self.valid_request(rng)
        req.ClearField("budget")
        setter(req.budget)
        method, code, details = self.generate_either(rng, stub, req, md)
        return variant, method, code, details, {expected}

    def a_info(self, rng, stub, md):
        which = rng.choice(["GetModelInfo", "GetEngineStats", "Tokenize", "Detokenize"])
        tok_ok = Code.OK if self.info.has_tokenizer else Code.FAILED_PRECONDITION
        try:
            if which == "GetModelInfo":
                stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=md, timeout=30)
            elif which == "GetEngineStats":
                stub.GetEngineStats(pb.GetEngineStatsRequest(), metadata=md, timeout=30)
            elif which == "Tokenize":
                stub.Tokenize(pb.TokenizeRequest(text=b"soak test"), metadata=md, timeout=30)
            else:
                stub.Detokenize(pb.DetokenizeRequest(ids=[1, 2, 3]), metadata=md, timeout=30)
            code, details = Code.OK, ""
        except grpc.RpcError as e:
            code, details = e.code(), e.details()
        allowed = {tok_ok} if which in ("Tokenize", "Detokenize") else {Code.OK}
        return "good_key", which, code, details, allowed

    def bad_key_metadata(self, rng):
        good = rng.choice(self.keys)
        return rng.choice([
            ("missing", ()),
            ("unknown_key", (("authorization", f"Bearer sk-unknown-{secrets.token_hex(8)}"),)),
            ("key_plus_char", (("authorization", f"Bearer {good}x"),)),
            ("key_prefix", (("authorization", f"Bearer {good[:-1]}"),)),
            ("commented_out_key", (("authorization", f"Bearer {COMMENTED_KEY}"),)),
            ("empty_bearer", (("authorization", "Bearer "),)),
            ("no_scheme", (("authorization", good),)),
            ("basic_scheme", (("authorization", f"Basic {good}"),)),
        ])

    def a_bad_key(self, rng, stub):
        variant, md = self.bad_key_metadata(rng)
        which = rng.choice(["GenerateStream", "GenerateStream", "Generate", "Generate", "GetEngineStats",
                            "GetModelInfo", "Tokenize", "Detokenize"])
        if which in GENERATE_METHODS:
            req = self.valid_request(rng)  # valid: only the key is wrong
            if which == "GenerateStream":
                code, details, *_ = self.run_stream(stub, req, md, NORMAL_TIMEOUT_S)
            else:
                code, details, *_ = self.run_unary(stub, req, md, NORMAL_TIMEOUT_S)
        else:
            try:
                if which == "GetEngineStats":
                    stub.GetEngineStats(pb.GetEngineStatsRequest(), metadata=md, timeout=30)
                elif which == "GetModelInfo":
                    stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=md, timeout=30)
                elif which == "Tokenize":
                    stub.Tokenize(pb.TokenizeRequest(text=b"soak"), metadata=md, timeout=30)
                else:
                    stub.Detokenize(pb.DetokenizeRequest(ids=[1]), metadata=md, timeout=30)
                code, details = Code.OK, ""
            except grpc.RpcError as e:
                code, details = e.code(), e.details()
        return variant, which, code, details, {Code.UNAUTHENTICATED}

    # -- the loop ------------------------------------------------------------------------------

    def worker(self, index):
        rng = random.Random(index * 7919 + int(time.time()))
        stub = pbg.GenerationStub(self.channels[index % CHANNELS])
        while not self.stop.is_set() and time.monotonic() < self.end_time:
            with self.ledger.lock:
                if self.ledger.calls >= self.max_calls:
                    return
            bad = self.auth and rng.random() < BAD_KEY_FRACTION
            try:
                if bad:
                    action = "bad_key"
                    variant, method, code, details, allowed = self.a_bad_key(rng, stub)
                else:
                    fn = rng.choices(self.actions, weights=self.weights)[0]
                    action = fn.__name__[2:]
                    variant, method, code, details, allowed = fn(rng, stub, self.good_md(rng))
            except Exception:  # a harness bug: keep going, fail at the end
                self.ledger.error(f"worker {index}: {traceback.format_exc(limit=4)}")
                time.sleep(0.05)
                continue
            self.ledger.record(action, variant, method, code, details, allowed, bad)

    def close(self):
        for ch in self.channels:
            ch.close()


COMMENTED_KEY = "sk-soak-commented-" + secrets.token_hex(8)


# ---------------------------------------------------------------------------------------------
# Monitor: health every 0.5 s (no key), RSS and engine stats every second


class Monitor:
    def __init__(self, daemon, md, start_time):
        self.daemon = daemon
        self.md = md
        self.start_time = start_time
        self.stop = threading.Event()
        self.health_checks = 0
        self.health_failures = []  # (t, what)
        self.rss = []  # (t, bytes)
        self.threads = []  # (t, threads of the daemon): context for RSS steps
        self.peak_running = 0
        self.peak_waiting = 0
        self.stats_failures = []
        self.died = None
        self.health_channel = daemon.channel(options=[("grpc.use_local_subchannel_pool", 1)])
        self.stats_channel = daemon.channel(options=[("grpc.use_local_subchannel_pool", 1)])
        self.thread = threading.Thread(target=self._run, name="monitor", daemon=True)

    def _run(self):
        health = health_pb2_grpc.HealthStub(self.health_channel)
        stats = pbg.GenerationStub(self.stats_channel)
        tick = 0
        next_at = time.monotonic()
        while not self.stop.is_set():
            t = time.monotonic() - self.start_time
            if self.daemon.proc.poll() is not None:
                self.died = f"sluiced exited with {self.daemon.proc.returncode} at t={t:.1f}s"
                return
            try:
                resp = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
                if status != "SERVING":
                    self.health_failures.append((t, status))
            except grpc.RpcError as e:
                self.health_failures.append((t, f"{e.code().name}: {e.details()}"))
            self.health_checks += 1
            if tick % 2 == 0:
                try:
                    self.rss.append((t, tl.rss_bytes(self.daemon.proc.pid)))
                    self.threads.append((t, thread_count(self.daemon.proc.pid)))
                except (OSError, RuntimeError) as e:
                    self.died = f"cannot read the daemon's RSS at t={t:.1f}s: {e}"
                    return
                try:
                    s = stats.GetEngineStats(pb.GetEngineStatsRequest(), metadata=self.md, timeout=5)
                    self.peak_running = max(self.peak_running, s.running)
                    self.peak_waiting = max(self.peak_waiting, s.waiting)
                except grpc.RpcError as e:
                    if len(self.stats_failures) < 5:
                        self.stats_failures.append(f"t={t:.1f}s {e.code().name}: {e.details()}")
            tick += 1
            next_at += 0.5
            self.stop.wait(max(0.0, next_at - time.monotonic()))

    def close(self):
        self.stop.set()
        self.thread.join(10)
        self.health_channel.close()
        self.stats_channel.close()


# ---------------------------------------------------------------------------------------------


def thread_count(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return None


def metric(samples, name, **labels):
    """Sum of the samples of `name` with `labels`, or None when /metrics has no such series."""
    want = set(labels.items())
    hits = [v for (n, l), v in samples.items() if n == name and want <= set(l)]
    return sum(hits) if hits else None


def start_daemon(args, key_file, limits, existing_only):
    flags = ENGINE_FLAGS + [f"--max_message_bytes={limits['max_message_bytes']}"]
    if not existing_only:
        flags += [f"--api_keys_file={key_file}"] + [f"--{k}={limits[k]}" for k in
                                                    ("max_prompt_tokens", "max_output_tokens", "max_stop_strings",
                                                     "max_stop_string_bytes", "max_logprobs")]
        flags += ["--max_streams_per_connection=32", "--drain_grace_s=1"]
    binary = os.path.join(tl.BIN_DIR, "sluiced")
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"no sluiced at {binary}: build it first (make build)")
    daemon = tl.Daemon(MODEL, args=flags, die_with_parent=True)  # SIGKILLed if this process dies
    try:
        daemon.start(wait_serving=False, timeout=120)
    except RuntimeError as e:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()
        log = daemon.read_log()
        missing = [f for f in ISSUE11_FLAGS if f"'{f}'" in log and "nknown" in log]
        if missing:
            raise RuntimeError("sluiced does not know the issue-11 flag(s) " +
                               ", ".join(f"--{f}" for f in missing) + f"; its log:\n{log}") from None
        raise RuntimeError(f"sluiced did not start: {e}") from None
    deadline = time.time() + 120
    last = None
    while time.time() < deadline:
        if daemon.proc.poll() is not None:
            raise RuntimeError(f"sluiced exited with {daemon.proc.returncode}:\n{daemon.read_log()}")
        ch = daemon.channel()
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            last = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
            if last == "SERVING":
                return daemon
        except grpc.RpcError as e:
            last = f"{e.code().name}: {e.details()}"
            if e.code() == Code.UNAUTHENTICATED:
                daemon.stop(10)
                raise RuntimeError("grpc.health.v1.Health/Check without an API key got UNAUTHENTICATED: "
                                   "health must be exempt from --api_keys_file") from None
        finally:
            ch.close()
        time.sleep(0.1)
    daemon.stop(10)
    raise RuntimeError(f"sluiced did not become SERVING within 120 s (last health: {last}):\n{daemon.read_log()}")


def wait_quiescent(stub, md, timeout_s):
    """Polls GetEngineStats until nothing runs or waits and all blocks and slots are free."""
    deadline = time.monotonic() + timeout_s
    s = None
    while time.monotonic() < deadline:
        s = stub.GetEngineStats(pb.GetEngineStatsRequest(), metadata=md, timeout=10)
        if (s.running == 0 and s.waiting == 0 and s.free_kv_blocks == s.total_kv_blocks
                and s.free_state_slots == s.total_state_slots):
            return s, True
        time.sleep(0.2)
    return s, False


def wait_metrics_idle(daemon, timeout_s):
    """Scrapes /metrics until the four gauges read 0 (they may lag a scrape period)."""
    deadline = time.monotonic() + timeout_s
    samples = {}
    names = ("sluice_num_requests_running", "sluice_num_requests_waiting", "sluice_kv_cache_usage_perc",
             "sluice_state_slots_usage_perc")
    while True:
        samples = daemon.metrics()
        if all(metric(samples, n) == 0 for n in names) or time.monotonic() >= deadline:
            return samples
        time.sleep(0.25)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="load duration (default 20)")
    ap.add_argument("--max-calls", type=int, default=1_000_000, help="stop after this many calls")
    ap.add_argument("--report", help="write the figures as JSON here")
    ap.add_argument("--warmup", type=float, default=None,
                    help="seconds before the RSS reference sample (default: 25 %% of --seconds, at least 5)")
    ap.add_argument("--existing-flags-only", action="store_true",
                    help="harness check against a sluiced without the issue-11 flags: no --api_keys_file, "
                         "no bad-key calls, old limits, new-metric checks skipped; never a pass (exit 3)")
    opts = ap.parse_args()
    existing_only = opts.existing_flags_only
    limits = OLD_LIMITS if existing_only else LIMITS
    failures = []
    skipped = []

    work = tempfile.mkdtemp(prefix="sluice-soak-")
    keys = ["sk-soak-a-" + secrets.token_hex(16), "sk-soak-b-" + secrets.token_hex(16)]
    key_file = os.path.join(work, "api_keys")
    with open(key_file, "w") as f:
        f.write(f"# soak test keys\n{keys[0]}\n\n# {COMMENTED_KEY}\n{keys[1]}\n")
    os.chmod(key_file, 0o600)
    md = (("authorization", f"Bearer {keys[0]}"),)

    daemon = None
    report = {"seconds": opts.seconds, "workers": WORKERS, "model": MODEL, "flags": None}
    try:
        try:
            daemon = start_daemon(opts, key_file, limits, existing_only)
        except RuntimeError as e:
            failures.append(str(e))
            raise _Abort()
        report["flags"] = [a for a in daemon.extra]
        ch = daemon.channel()
        stub = pbg.GenerationStub(ch)
        try:
            info = stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=md, timeout=10)
        except grpc.RpcError as e:
            failures.append(f"GetModelInfo with a key from --api_keys_file failed: {e.code().name}: {e.details()}")
            raise _Abort()
        if not existing_only:
            try:
                stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
                failures.append("GetModelInfo without an API key succeeded: --api_keys_file is not enforced")
            except grpc.RpcError as e:
                if e.code() != Code.UNAUTHENTICATED:
                    failures.append(f"GetModelInfo without an API key: {e.code().name} (want UNAUTHENTICATED)")
        s0 = stub.GetEngineStats(pb.GetEngineStatsRequest(), metadata=md, timeout=10)
        if s0.total_state_slots == 0:
            failures.append(f"{MODEL} reports no state slots: the soak must exercise recurrent state")
        rss_start = tl.rss_bytes(daemon.proc.pid)
        pre_unauth = 0 if existing_only else 1  # the keyless GetModelInfo just above

        ledger = Ledger()
        canceller = Canceller()
        t_start = time.monotonic()
        end_time = t_start + opts.seconds
        monitor = Monitor(daemon, md, t_start)
        load = Load(daemon, keys, limits, info, not existing_only, ledger, canceller, end_time, opts.max_calls)
        load._invalid_budgets = load.invalid_budgets()
        monitor.thread.start()
        threads = [threading.Thread(target=load.worker, args=(i,), name=f"worker-{i}", daemon=True)
                   for i in range(WORKERS)]
        for t in threads:
            t.start()
        # Bounded: stop early if the daemon dies; every call has a deadline of at most 60 s.
        while time.monotonic() < end_time and monitor.died is None and any(t.is_alive() for t in threads):
            time.sleep(0.2)
        load.stop.set()
        join_deadline = time.monotonic() + NORMAL_TIMEOUT_S + 30
        for t in threads:
            t.join(max(0.0, join_deadline - time.monotonic()))
        stuck = [t.name for t in threads if t.is_alive()]
        t_load = time.monotonic() - t_start
        if stuck:
            failures.append(f"{len(stuck)} worker(s) still in a call {NORMAL_TIMEOUT_S + 30:.0f} s after the end: "
                            f"{', '.join(stuck[:8])}")
        canceller.stop()
        load.close()

        # Quiescence, then the books.
        s_end, idle = None, False
        if monitor.died is None:
            try:
                s_end, idle = wait_quiescent(stub, md, 30)
            except grpc.RpcError as e:
                failures.append(f"GetEngineStats after the load: {e.code().name}: {e.details()}")
        monitor.close()
        rss_end = tl.rss_bytes(daemon.proc.pid) if daemon.proc.poll() is None else None
        if rss_end is not None:
            monitor.rss.append((time.monotonic() - t_start, rss_end))
        if monitor.died:
            failures.append(monitor.died)
        if s_end is not None and not idle:
            failures.append(f"engine not idle 30 s after the load: running={s_end.running} waiting={s_end.waiting} "
                            f"free_kv_blocks={s_end.free_kv_blocks}/{s_end.total_kv_blocks} "
                            f"free_state_slots={s_end.free_state_slots}/{s_end.total_state_slots}")

        samples = {}
        if daemon.proc.poll() is None:
            try:
                samples = wait_metrics_idle(daemon, 10)
            except OSError as e:
                failures.append(f"cannot scrape /metrics after the load: {e}")

        # --- checks ---
        if ledger.unexpected:
            n = sum(ledger.unexpected.values())
            lines = [f"  {c}x {a}/{v} {m} -> {code}: {msg}" for (a, v, m, code, msg), c in
                     ledger.unexpected.most_common(25)]
            failures.append(f"{n} call(s) with an unexpected status:\n" + "\n".join(lines))
        for e in ledger.errors:
            failures.append(e)
        if monitor.health_failures:
            fl = monitor.health_failures
            failures.append(f"health not SERVING in {len(fl)} of {monitor.health_checks} checks; first: " +
                            "; ".join(f"t={t:.1f}s {w}" for t, w in fl[:5]))
        if monitor.health_checks < max(1, int(t_load)):
            failures.append(f"only {monitor.health_checks} health checks in {t_load:.0f} s (want one per 0.5 s)")
        for sf in monitor.stats_failures:
            failures.append(f"GetEngineStats during the load: {sf}")
        if monitor.peak_waiting == 0:
            failures.append("no request ever waited (GetEngineStats.waiting stayed 0): the soak did not "
                            "exercise queueing; lower --max_num_seqs")

        # The warm-up must cover the per-thread workspaces (grouped experts, quantized GEMMs)
        # growing to the largest batch the mix produces: they reach it at ~10-12 s here, and
        # RSS is flat after (50 s run: 68.8 MiB at 12 s, 71.5 max, 71.0 at the end).
        warmup = opts.warmup if opts.warmup is not None else max(10.0, 0.25 * opts.seconds)
        after = [r for t, r in monitor.rss if t >= warmup]
        rss_warm = after[0] if after else None
        rss_max_after = max(after) if after else None
        if rss_warm is None:
            failures.append(f"no RSS sample after the warm-up of {warmup:.0f} s")
        elif rss_max_after > 1.10 * rss_warm:
            failures.append(f"RSS grew {100.0 * (rss_max_after / rss_warm - 1):.1f} % after the warm-up "
                            f"({rss_warm / 2**20:.1f} MiB at {warmup:.0f} s -> max {rss_max_after / 2**20:.1f} MiB); "
                            "want within 10 %")

        gen = ledger.generate_codes
        client_ok = gen["OK"]
        client_cancelled = gen["CANCELLED"]
        client_deadline = gen["DEADLINE_EXCEEDED"]
        client_invalid = sum(gen[c.name] for c in INVALID_CODES)
        reasons = ("queue_full", "draining", "invalid", "unauthenticated", "deadline", "unavailable")
        rejected = {r: metric(samples, "sluice_request_rejected_total", reason=r) for r in reasons}
        success = {r: metric(samples, "sluice_request_success_total", finished_reason=r)
                   for r in ("stop", "length", "abort")}
        gauges = {n: metric(samples, n) for n in ("sluice_num_requests_running", "sluice_num_requests_waiting",
                                                  "sluice_kv_cache_usage_perc", "sluice_state_slots_usage_perc")}
        if samples and not existing_only:
            # Gauges always exist; a counter series may appear only once it counted, so an
            # absent one reads 0 and fails only where the clients saw calls it should count.
            for n, v in gauges.items():
                if v is None:
                    failures.append(f"/metrics has no {n} (issue-11 gauge)")
                elif v != 0:
                    failures.append(f"/metrics {n} = {v} after the load, want 0")

            def shown(v):
                return "absent" if v is None else f"{v:.0f}"

            def num(v):
                return v or 0.0

            want_unauth = ledger.bad_key_calls + pre_unauth
            if num(rejected["unauthenticated"]) != want_unauth:
                failures.append(f'sluice_request_rejected_total{{reason="unauthenticated"}} = '
                                f'{shown(rejected["unauthenticated"])}, but the test made {want_unauth} bad-key calls')
            if num(rejected["invalid"]) != client_invalid:
                failures.append(f'sluice_request_rejected_total{{reason="invalid"}} = {shown(rejected["invalid"])}, '
                                f"but {client_invalid} good-key Generate/GenerateStream calls got "
                                "INVALID_ARGUMENT/FAILED_PRECONDITION/OUT_OF_RANGE")
            for r in ("queue_full", "draining", "unavailable"):
                if num(rejected[r]):
                    failures.append(f'sluice_request_rejected_total{{reason="{r}"}} = {shown(rejected[r])}, want 0 '
                                    "before SIGTERM with --max_queue 1024")
            if num(rejected["deadline"]) > client_deadline:
                failures.append(f'sluice_request_rejected_total{{reason="deadline"}} = {shown(rejected["deadline"])} '
                                f"> {client_deadline} calls that ended DEADLINE_EXCEEDED at the client")
            served = num(success["stop"]) + num(success["length"])
            done = served + num(success["abort"]) + num(rejected["deadline"])
            if served < client_ok:
                failures.append(f"sluice_request_success_total stop+length = {served:.0f} "
                                f"(stop {shown(success['stop'])}, length {shown(success['length'])}) < {client_ok} "
                                "generates that ended OK at the client")
            if done > client_ok + client_cancelled + client_deadline:
                failures.append(f"success stop+length+abort + rejected deadline = {done:.0f} > {client_ok} OK + "
                                f"{client_cancelled} CANCELLED + {client_deadline} DEADLINE_EXCEEDED generates")
            e2e_count = metric(samples, "sluice_e2e_request_latency_seconds_count")
            total_success = sum(num(v) for v in success.values())
            if e2e_count is None:
                failures.append("/metrics has no sluice_e2e_request_latency_seconds histogram")
            elif e2e_count != total_success:
                failures.append(f"sluice_e2e_request_latency_seconds_count = {e2e_count:.0f}, want "
                                f"sum(sluice_request_success_total) = {total_success:.0f}")
            pre = metric(samples, "sluice_num_preemptions_total")
            if s_end is not None and num(pre) != s_end.preemptions:
                failures.append(f"sluice_num_preemptions_total = {shown(pre)} but GetEngineStats.preemptions = "
                                f"{s_end.preemptions}")
        elif existing_only:
            skipped.append("auth (no --api_keys_file, no bad-key calls) and every issue-11 /metrics check")

        for line in daemon.read_log().splitlines():
            if "signal" in line:  # the daemon logs the signals it takes; this test has sent none yet
                failures.append(f"sluiced got a signal from outside this test during the run: {line.strip()}")

        # SIGTERM: a clean drain of an idle daemon exits 0. (An open client connection would hold
        # the server's shutdown until its deadline, so close ours first.)
        ch.close()
        t_stop = time.monotonic()
        rc = daemon.stop(timeout=60)
        report["shutdown_s"] = round(time.monotonic() - t_stop, 2)
        if rc != 0:
            failures.append(f"sluiced exited with {rc} after SIGTERM, want 0")

        # --- figures ---
        def ms(v):
            return None if v is None else round(v * 1000.0, 1)

        report.update({
            "load_s": round(t_load, 1),
            "calls": ledger.calls,
            "calls_by_action_status": {f"{a} {c}": n for (a, c), n in sorted(ledger.by_action.items())},
            "bad_key_calls": ledger.bad_key_calls,
            "bad_key_fraction": round(ledger.bad_key_calls / ledger.calls, 3) if ledger.calls else None,
            "generate_status_at_client": dict(gen),
            "served_ok_at_client": client_ok,
            "tokens_received": ledger.tokens_out,
            "metrics_served": {k: v for k, v in success.items()},
            "metrics_rejected_by_reason": rejected,
            "latency_ms": {
                "stream_ttft_p50": ms(percentile(ledger.ttft, 50)), "stream_ttft_p99": ms(percentile(ledger.ttft, 99)),
                "stream_e2e_p50": ms(percentile(ledger.stream_e2e, 50)),
                "stream_e2e_p99": ms(percentile(ledger.stream_e2e, 99)),
                "unary_e2e_p50": ms(percentile(ledger.unary_e2e, 50)),
                "unary_e2e_p99": ms(percentile(ledger.unary_e2e, 99)),
                "successful_streams": len(ledger.stream_e2e), "successful_unaries": len(ledger.unary_e2e),
            },
            "rss_mib": {
                "start": round(rss_start / 2**20, 1),
                "after_warmup": round(rss_warm / 2**20, 1) if rss_warm else None,
                "max_after_warmup": round(rss_max_after / 2**20, 1) if rss_max_after else None,
                "end": round(rss_end / 2**20, 1) if rss_end else None,
                "warmup_s": warmup,
            },
            "engine": None if s_end is None else {
                "steps": s_end.steps, "preemptions": s_end.preemptions, "finished": s_end.finished,
                "total_kv_blocks": s_end.total_kv_blocks, "free_kv_blocks": s_end.free_kv_blocks,
                "total_state_slots": s_end.total_state_slots, "free_state_slots": s_end.free_state_slots,
                "peak_running": monitor.peak_running, "peak_waiting": monitor.peak_waiting,
            },
            "health_checks": monitor.health_checks,
            "health_failures": len(monitor.health_failures),
            "rss_samples": [(round(t, 1), round(r / 2**20, 2)) for t, r in monitor.rss],
            "thread_samples": [(round(t, 1), n) for t, n in monitor.threads],
        })
        notes = []
        if s_end is not None and s_end.preemptions == 0:
            notes.append("no preemption happened in this run (KV is sized for some; the load was too light)")
        if client_deadline and rejected["deadline"] is not None and rejected["deadline"] < 0.5 * client_deadline:
            notes.append(f'sluice_request_rejected_total{{reason="deadline"}} counted {rejected["deadline"]:.0f} of the '
                         f"{client_deadline} generates that ended DEADLINE_EXCEEDED at the client (the others "
                         "never reached the engine, finished just in time, or were counted as abort)")
        report["notes"] = notes
        print_summary(report)
        for n in notes:
            print(f"note: {n}")
    except _Abort:
        pass
    except Exception:
        failures.append(f"harness error:\n{traceback.format_exc()}")
    finally:
        if daemon is not None and daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()
        if daemon is not None and failures:
            sys.stderr.write(f"--- sluiced log (tail) ---\n{daemon.read_log()[-6000:]}\n")

    report["failures"] = failures
    report["skipped"] = skipped
    if opts.report:
        with open(opts.report, "w") as f:
            json.dump(report, f, indent=2, default=str)
        print(f"report: {opts.report}")
    if failures:
        print(f"\nFAIL: {len(failures)} failure(s)")
        for fl in failures:
            print(f"- {fl}")
        return 1
    if skipped:
        print(f"\nNOT A PASS: skipped {'; '.join(skipped)}")
        return 3
    print("\nPASS")
    return 0


class _Abort(Exception):
    pass


def print_summary(r):
    print(f"\nsoak: {r['workers']} streams for {r['load_s']} s against {os.path.basename(r['model'])}; "
          f"{r['calls']} calls, {r['bad_key_calls']} with a bad key ({r['bad_key_fraction']})")
    print(f"\n{'action':<22}{'status':<22}{'calls':>8}")
    for k, n in r["calls_by_action_status"].items():
        a, c = k.split(" ", 1)
        print(f"{a:<22}{c:<22}{n:>8}")
    print(f"\nserved (OK generates at the client): {r['served_ok_at_client']}; tokens received: {r['tokens_received']}")
    print("served by /metrics finished_reason: " +
          ", ".join(f"{k}={'-' if v is None else int(v)}" for k, v in r["metrics_served"].items()))
    print("rejected by /metrics reason:        " +
          ", ".join(f"{k}={'-' if v is None else int(v)}" for k, v in r["metrics_rejected_by_reason"].items()))
    lat = r["latency_ms"]
    print(f"\nlatency ms      p50      p99   (n)")
    print(f"stream TTFT {lat['stream_ttft_p50']!s:>8} {lat['stream_ttft_p99']!s:>8}   ({lat['successful_streams']})")
    print(f"stream e2e  {lat['stream_e2e_p50']!s:>8} {lat['stream_e2e_p99']!s:>8}   ({lat['successful_streams']})")
    print(f"unary e2e   {lat['unary_e2e_p50']!s:>8} {lat['unary_e2e_p99']!s:>8}   ({lat['successful_unaries']})")
    rss = r["rss_mib"]
    print(f"\nRSS MiB: start {rss['start']}, after warm-up ({rss['warmup_s']:.0f} s) {rss['after_warmup']}, "
          f"max after warm-up {rss['max_after_warmup']}, end {rss['end']}")
    e = r["engine"]
    if e:
        print(f"engine: {e['steps']} steps, {e['preemptions']} preemptions, {e['finished']} finished, peak running "
              f"{e['peak_running']}, peak waiting {e['peak_waiting']}, KV blocks free {e['free_kv_blocks']}/"
              f"{e['total_kv_blocks']}, state slots free {e['free_state_slots']}/{e['total_state_slots']}")
    print(f"health: {r['health_checks']} checks, {r['health_failures']} not SERVING; "
          f"SIGTERM to exit: {r.get('shutdown_s')} s")


if __name__ == "__main__":
    sys.exit(main())
