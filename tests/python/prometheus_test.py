#!/usr/bin/env python3
"""sluiced's metrics as a real Prometheus sees them, and the Grafana dashboard's queries.

Starts two sluiced on loopback and a real Prometheus (Debian's `prometheus`, 1 s scrape
interval) that scrapes both:

  job "tiny": the embedded demo model (dense Llama, tokenizer), default served name
              (the basename of --model: "sluice-tiny"), --api_keys_file,
              --max_num_seqs=1 --max_queue=1 so that queue_full and queued deadlines
              can be made deterministic;
  job "moe":  the Qwen3.5-MoE hybrid fixture (Gated DeltaNet state slots, 8 experts,
              top-2), --served_model_name, --expert_metrics=all.

It sends a known mix (finished by length and by stop, with and without compute budgets,
concurrent and sequential, unary and streaming; rejected as invalid, unauthenticated,
queue_full and deadline; cancelled while running and while queued), waits for a scrape
after the traffic and asks Prometheus with PromQL: counters and histogram counts must
equal what the client saw. It then evaluates every target of
deploy/grafana/sluice-dashboard.json against the live Prometheus (error or empty result
fails) and checks HELP/TYPE of every family on /metrics.

Every check is reported (ok / FAIL) and the test goes on after a failure, so a run
against a daemon that lacks part of the metrics lists exactly what is missing.
The contract is issue 11's: the metrics section of the README.
"""

import collections
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import sluice_testlib as t

TINY_JOB, MOE_JOB = "tiny", "moe"
TINY_NAME = os.path.basename(t.DEMO_MODEL)  # the default served name
MOE_NAME = "sluice-moe-test"
MOE_MODEL = os.path.join(t.TEST_DATA_DIR, "models", "qwen3_5_moe_f32")
KEYS = ["k-alpha-3f1c9e", "k-beta-77c0d2"]
DASHBOARD = os.path.join(t.SOURCE_DIR, "deploy", "grafana", "sluice-dashboard.json")
PROMETHEUS_YML = os.path.join(t.SOURCE_DIR, "deploy", "prometheus", "prometheus.yml")
SETTLE_S = 12  # how long counters may take to reach their values after the last request

REJECT_REASONS = ["queue_full", "draining", "invalid", "unauthenticated", "deadline", "unavailable"]
FINISH_REASONS = ["stop", "length", "abort"]
BUDGET_CONTROLS = ["skip_ratio", "experts_per_token", "attention_gate_floor", "skip_layers"]
# Per-request histograms: observed once per request finished with stop/length/abort.
PER_REQUEST_HISTOGRAMS = [
    "sluice_e2e_request_latency_seconds", "sluice_request_queue_time_seconds",
    "sluice_request_prefill_time_seconds", "sluice_request_decode_time_seconds",
    "sluice_request_prompt_tokens", "sluice_request_generation_tokens", "sluice_executed_compute_ratio",
]
STEP_HISTOGRAMS = ["sluice_iteration_tokens_total", "sluice_step_duration_seconds"]
GAUGES = ["sluice_num_requests_running", "sluice_num_requests_waiting", "sluice_kv_cache_usage_perc",
          "sluice_state_slots_usage_perc"]
FAMILIES = {  # exposed family name → TYPE
    **{g: "gauge" for g in GAUGES},
    **{c: "counter" for c in [
        "sluice_prompt_tokens_total", "sluice_generation_tokens_total", "sluice_request_success_total",
        "sluice_request_rejected_total", "sluice_num_preemptions_total", "sluice_budget_requests_total",
        "sluice_estimated_flops_total", "sluice_estimated_read_bytes_total", "sluice_rpc_started_total"]},
    **{h: "histogram" for h in PER_REQUEST_HISTOGRAMS + STEP_HISTOGRAMS +
       ["sluice_time_to_first_token_seconds", "sluice_inter_token_latency_seconds"]},
}
EXPERT_FAMILY = "sluice_expert_tokens_total"  # counter, only with --expert_metrics
INVALID_CODES = {"INVALID_ARGUMENT", "FAILED_PRECONDITION", "OUT_OF_RANGE"}


class Report:
    """Collects checks; the test fails at the end with the list of every failed one."""

    def __init__(self):
        self.failures = []
        self.passed = 0

    def check(self, ok, what, detail=""):
        if ok:
            self.passed += 1
            print(f"ok    {what}", flush=True)
        else:
            self.failures.append(f"{what}" + (f" -- {detail}" if detail else ""))
            print(f"FAIL  {what}" + (f" -- {detail}" if detail else ""), flush=True)
        return ok

    def section(self, title):
        print(f"\n== {title}", flush=True)


class Tally:
    """What one daemon's client side saw."""

    def __init__(self, job, default_k=None):
        self.job = job
        self.default_k = default_k
        self.success = collections.Counter()
        self.rejected = collections.Counter()
        self.budget = collections.Counter()
        self.rpcs = collections.Counter()
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.ttft = 0          # finished requests with at least one token
        self.itl = 0           # sum of (completion_tokens - 1)
        self.ratio_sum = 0.0   # sum of executed / dense FLOPs
        self.executed_flops = 0.0
        self.forward_tokens = 0    # sum of prompt + completion - 1: tokens the forward passes ran
        self.expert_slots = 0      # forward tokens x experts per token (MoE)

    def finished(self, usage, finish_reason, k=None):
        self.success[finish_reason] += 1
        self.prompt_tokens += usage.prompt_tokens
        self.generation_tokens += usage.completion_tokens
        if usage.completion_tokens > 0:
            self.ttft += 1
            self.itl += usage.completion_tokens - 1
        if usage.dense_flops > 0:
            self.ratio_sum += usage.executed_flops / usage.dense_flops
        self.executed_flops += usage.executed_flops
        forward = usage.prompt_tokens + max(usage.completion_tokens - 1, 0)
        self.forward_tokens += forward
        self.expert_slots += forward * (k or self.default_k or 0)

    def finished_total(self):
        return sum(self.success.values())


class Client:
    """Calls one daemon and tallies what came back."""

    def __init__(self, report, daemon, tally, pb, pbg, metadata=()):
        import grpc

        self.grpc = grpc
        self.report = report
        self.daemon = daemon
        self.tally = tally
        self.pb = pb
        self.channel = daemon.channel()
        self.stub = pbg.GenerationStub(self.channel)
        self.md = list(metadata)

    def finish_reason(self, value):
        pb = self.pb
        return {pb.FINISH_REASON_LENGTH: "length", pb.FINISH_REASON_STOP_TOKEN: "stop",
                pb.FINISH_REASON_STOP_STRING: "stop"}.get(value)

    def request(self, tokens=None, text=None, max_tokens=16, budget=None, stream=False, **kw):
        pb = self.pb
        r = pb.GenerateRequest(stopping=pb.StoppingCriteria(max_tokens=max_tokens,
                                                            ignore_eos=kw.pop("ignore_eos", False),
                                                            stop_token_ids=kw.pop("stop_token_ids", []),
                                                            stop=kw.pop("stop", [])),
                               sampling=pb.SamplingParams(**kw.pop("sampling", {})))
        if tokens is not None:
            r.tokens.ids.extend(tokens)
        if text is not None:
            r.text = text
        if budget is not None:
            r.budget.CopyFrom(budget)
        assert not kw, kw
        return r

    def _k(self, req):
        return req.budget.experts_per_token or None

    def _count_budget(self, req):
        b = req.budget
        if b.skip_ratio:
            self.tally.budget["skip_ratio"] += 1
        if b.experts_per_token:
            self.tally.budget["experts_per_token"] += 1
        if b.attention_gate_floor:
            self.tally.budget["attention_gate_floor"] += 1
        if len(b.skip_layers):
            self.tally.budget["skip_layers"] += 1

    def generate(self, req, what, md=None, timeout=60, expect=None, reason=None):
        """Unary Generate. expect: None (must finish) or a set of status code names, counted as `reason`."""
        self.tally.rpcs["Generate"] += 1
        try:
            resp = self.stub.Generate(req, metadata=self.md if md is None else md, timeout=timeout)
        except self.grpc.RpcError as e:
            return self._rejected(what, e.code().name, e.details(), expect, reason)
        return self._finished(what, resp.usage, resp.finish_reason, req, expect, list(resp.token_ids))

    def stream(self, req, what, md=None, timeout=60, expect=None, reason=None):
        """GenerateStream read to the end."""
        self.tally.rpcs["GenerateStream"] += 1
        last, ids = None, []
        try:
            for m in self.stub.GenerateStream(req, metadata=self.md if md is None else md, timeout=timeout):
                ids += list(m.token_ids)
                last = m
        except self.grpc.RpcError as e:
            return self._rejected(what, e.code().name, e.details(), expect, reason)
        if last is None:
            self.report.check(False, f"{self.tally.job}: {what}: stream ended OK without a message")
            return None
        return self._finished(what, last.usage, last.finish_reason, req, expect, ids)

    def _finished(self, what, usage, finish_reason, req, expect, ids):
        reason = self.finish_reason(finish_reason)
        if expect is not None:
            self.report.check(False, f"{self.tally.job}: {what} answers {sorted(expect)}", "it finished OK")
        if reason is None:
            self.report.check(False, f"{self.tally.job}: {what}: finish_reason set", f"got {finish_reason}")
            return ids
        self.tally.finished(usage, reason, self._k(req))
        self._count_budget(req)
        return ids

    def _rejected(self, what, code, details, expect, reason):
        if expect is None:
            self.report.check(False, f"{self.tally.job}: {what} finishes", f"{code}: {details}")
            return None
        if self.report.check(code in expect, f"{self.tally.job}: {what} answers {'/'.join(sorted(expect))}",
                             f"got {code}: {details}"):
            self.tally.rejected[reason] += 1
        return None

    def stats(self):
        return self.stub.GetEngineStats(self.pb.GetEngineStatsRequest(), metadata=self.md, timeout=10)

    def wait_stats(self, what, pred, timeout=15):
        deadline = time.time() + timeout
        s = None
        while time.time() < deadline:
            s = self.stats()
            if pred(s):
                return s
            time.sleep(0.02)
        self.report.check(False, f"{self.tally.job}: engine reaches: {what}", f"last stats: {s}".replace("\n", " "))
        return s


# ---------------------------------------------------------------------------------------
# PromQL expectations


class Expect:
    """One PromQL check: `expr` is reduced to one value (or an empty result)."""

    def __init__(self, what, expr, op, want=None, show=None):
        self.what, self.expr, self.op, self.want, self.show = what, expr, op, want, show

    def evaluate(self, prom):
        ok, detail = self._evaluate(prom)
        if not ok and self.show:
            try:
                detail += f"; {self.show} = {prom.query(self.show)}"
            except t.PrometheusError as e:
                detail += f"; {self.show}: {e}"
        return ok, detail

    def _evaluate(self, prom):
        try:
            result = prom.query(self.expr)
        except t.PrometheusError as e:
            return False, f"query error {e} in {self.expr}"
        if self.op == "empty":
            return not result, f"{self.expr} → {len(result)} series: {result[:8]}"
        if len(result) > 1:
            return False, f"{self.expr} → {len(result)} series (expected one): {result[:8]}"
        v = result[0][1] if result else None
        shown = f"{self.expr} = {'no series' if v is None else repr(v)}"
        if self.op == "absent_or_zero":
            return v is None or v == 0, f"{shown}, expected absent or 0"
        if v is None:
            return False, f"{shown}, expected {self.op} {self.want}"
        if self.op == "eq":
            return v == self.want, f"{shown}, expected {self.want}"
        if self.op == "approx":
            return abs(v - self.want) <= 1e-6 * max(abs(self.want), 1e-12), f"{shown}, expected {self.want} (rel 1e-6)"
        if self.op == "ge":
            return v >= self.want, f"{shown}, expected >= {self.want}"
        if self.op == "gt":
            return v > self.want, f"{shown}, expected > {self.want}"
        if self.op == "lt":
            return v < self.want, f"{shown}, expected < {self.want}"
        if self.op == "range":
            lo, hi = self.want
            return lo <= v <= hi, f"{shown}, expected in [{lo}, {hi}]"
        raise ValueError(self.op)


def settle(report, prom, expects, after, timeout=SETTLE_S):
    """Waits for a scrape of every target that began after `after`, then polls until every
    expectation holds or `timeout` passes, then reports each one."""
    try:
        prom.wait_scrape_after(after, timeout=30)
    except RuntimeError as e:
        report.check(False, "Prometheus scraped every target after the traffic", str(e))
    deadline = time.time() + timeout
    while True:
        results = [(e, *e.evaluate(prom)) for e in expects]
        if all(ok for _, ok, _ in results) or time.time() > deadline:
            break
        time.sleep(0.5)
    for e, ok, detail in results:
        report.check(ok, e.what, detail)


def sel(job, **labels):
    inner = ", ".join([f'job="{job}"'] + [f'{k}="{v}"' for k, v in labels.items()])
    return "{" + inner + "}"


def request_expects(tally, base, exact_tokens=True, stats=None):
    """Expectations every phase shares: outcomes by reason, per-request histogram counts.

    `base` is the daemon's /metrics before the traffic: engine-level series (tokens run,
    FLOPs) may already count the daemon's own warm-up step; request-level ones must not."""
    j = tally.job
    base_flops = t.metric_value(base, "sluice_estimated_flops_total")
    base_tokens = t.metric_value(base, "sluice_iteration_tokens_total_sum")
    ex = []
    for r in FINISH_REASONS:
        n = tally.success[r]
        expr = f"sum(sluice_request_success_total{sel(j, finished_reason=r)})"
        ex.append(Expect(f"{j}: sluice_request_success_total{{finished_reason=\"{r}\"}} == {n}", expr,
                         "eq" if n else "absent_or_zero", n))
    for r in REJECT_REASONS:
        n = tally.rejected[r]
        expr = f"sum(sluice_request_rejected_total{sel(j, reason=r)})"
        ex.append(Expect(f"{j}: sluice_request_rejected_total{{reason=\"{r}\"}} == {n}", expr,
                         "eq" if n else "absent_or_zero", n))
    done = tally.finished_total()
    for h in PER_REQUEST_HISTOGRAMS:
        ex.append(Expect(f"{j}: {h}_count == finished requests ({done})", f"sum({h}_count{sel(j)})", "eq", done))
        ex.append(Expect(f"{j}: {h}_bucket{{le=\"+Inf\"}} == finished requests ({done})",
                         f"sum({h}_bucket{sel(j, le='+Inf')})", "eq", done))
    if exact_tokens:
        ex += [
            Expect(f"{j}: sluice_prompt_tokens_total == sum of usage.prompt_tokens ({tally.prompt_tokens})",
                   f"sum(sluice_prompt_tokens_total{sel(j)})", "eq", tally.prompt_tokens),
            Expect(f"{j}: sluice_generation_tokens_total == sum of usage.completion_tokens ({tally.generation_tokens})",
                   f"sum(sluice_generation_tokens_total{sel(j)})", "eq", tally.generation_tokens),
            Expect(f"{j}: sluice_request_prompt_tokens_sum == sum of usage.prompt_tokens",
                   f"sum(sluice_request_prompt_tokens_sum{sel(j)})", "eq", tally.prompt_tokens),
            Expect(f"{j}: sluice_request_generation_tokens_sum == sum of usage.completion_tokens",
                   f"sum(sluice_request_generation_tokens_sum{sel(j)})", "eq", tally.generation_tokens),
            Expect(f"{j}: sluice_time_to_first_token_seconds_count == requests with a token ({tally.ttft})",
                   f"sum(sluice_time_to_first_token_seconds_count{sel(j)})", "eq", tally.ttft),
            Expect(f"{j}: sluice_inter_token_latency_seconds_count == sum of (completion_tokens - 1) ({tally.itl})",
                   f"sum(sluice_inter_token_latency_seconds_count{sel(j)})", "eq", tally.itl),
            Expect(f"{j}: sluice_executed_compute_ratio_sum == sum of executed/dense FLOPs ({tally.ratio_sum:.6f})",
                   f"sum(sluice_executed_compute_ratio_sum{sel(j)})", "approx", tally.ratio_sum),
            Expect(f"{j}: sluice_estimated_flops_total == before + sum of usage.executed_flops "
                   f"({base_flops:.6g} + {tally.executed_flops:.6g})",
                   f"sum(sluice_estimated_flops_total{sel(j)})", "approx", base_flops + tally.executed_flops),
            Expect(f"{j}: sluice_iteration_tokens_total_sum == before + tokens run (prompt + completion - 1 per "
                   f"request: {base_tokens:g} + {tally.forward_tokens})",
                   f"sum(sluice_iteration_tokens_total_sum{sel(j)})", "eq", base_tokens + tally.forward_tokens),
        ]
    for c in BUDGET_CONTROLS:
        n = tally.budget[c]
        ex.append(Expect(f"{j}: sluice_budget_requests_total{{control=\"{c}\"}} == {n}",
                         f"sum(sluice_budget_requests_total{sel(j, control=c)})", "eq" if n else "absent_or_zero", n))
    ex += [
        Expect(f"{j}: sluice_estimated_read_bytes_total > 0", f"sum(sluice_estimated_read_bytes_total{sel(j)})", "gt", 0),
        Expect(f"{j}: sluice_estimated_flops_total > 0", f"sum(sluice_estimated_flops_total{sel(j)})", "gt", 0),
    ]
    if stats is not None:
        for h in STEP_HISTOGRAMS:
            ex.append(Expect(f"{j}: {h}_count == engine steps ({stats.steps})", f"sum({h}_count{sel(j)})", "eq",
                             stats.steps))
            ex.append(Expect(f"{j}: {h}_bucket{{le=\"+Inf\"}} == engine steps ({stats.steps})",
                             f"sum({h}_bucket{sel(j, le='+Inf')})", "eq", stats.steps))
        ex.append(Expect(f"{j}: sluice_num_preemptions_total == GetEngineStats.preemptions ({stats.preemptions})",
                         f"sum(sluice_num_preemptions_total{sel(j)})", "eq", stats.preemptions))
    for g in GAUGES:
        ex.append(Expect(f"{j}: {g} back to 0", f"sum({g}{sel(j)})", "eq", 0))
    return ex


# ---------------------------------------------------------------------------------------
# the traffic


def pick_stop_token(ids):
    """A token that first occurs at index >= 2 of a greedy continuation (so a request that
    stops on it has produced at least two tokens before and stops there)."""
    for i in range(2, len(ids)):
        if ids[i] not in ids[:i]:
            return ids[i]
    return None


def tiny_phase1(report, c, pb, auth):
    c.generate(c.request(text=b"The sluice gate opens", max_tokens=8), "text Generate")
    c.stream(c.request(text=b"Water flows under the bridge", max_tokens=12), "text GenerateStream",
             md=[("authorization", f"Bearer {KEYS[1]}")] if auth else None)
    probe = c.generate(c.request(tokens=[1, 2, 3], max_tokens=20), "greedy probe") or []
    stop = pick_stop_token(probe)
    if report.check(stop is not None, "tiny: the greedy probe has a token to stop on", f"probe {probe}"):
        c.generate(c.request(tokens=[1, 2, 3], max_tokens=20, stop_token_ids=[stop]), "Generate with a stop token")
    c.generate(c.request(tokens=[4, 5, 6, 7], max_tokens=10, budget=pb.ComputeBudget(skip_layers=[pb.LayerSpan(first=1)])),
               "Generate skipping layer 1")
    c.stream(c.request(tokens=[8, 9], max_tokens=10,
                       budget=pb.ComputeBudget(skip_layers=[pb.LayerSpan(first=2, last=3)])),
             "GenerateStream skipping layers 2-3")
    bad = dict(expect=INVALID_CODES, reason="invalid")
    c.generate(c.request(tokens=[1, 2], sampling={"temperature": float("nan")}), "temperature NaN", **bad)
    c.generate(c.request(tokens=[1, 512]), "token id 512 (vocabulary 512)", **bad)
    c.generate(c.request(tokens=[1, 2], sampling={"top_p": 1.5}), "top_p 1.5", **bad)
    c.generate(c.request(tokens=[1, 2], budget=pb.ComputeBudget(experts_per_token=1)), "experts_per_token on a dense model",
               **bad)
    c.generate(c.request(text=b"\xff\xfe bad utf-8"), "invalid UTF-8 text", **bad)
    c.stream(c.request(tokens=[1, 2], sampling={"temperature": -1.0}), "GenerateStream temperature -1", **bad)
    if auth:
        unauth = dict(expect={"UNAUTHENTICATED"}, reason="unauthenticated")
        c.generate(c.request(tokens=[1, 2]), "Generate without a key", md=[], **unauth)
        c.generate(c.request(tokens=[1, 2]), "Generate with a wrong key", md=[("authorization", "Bearer nope")], **unauth)
        c.generate(c.request(tokens=[1, 2]), "Generate with a key but no 'Bearer '", md=[("authorization", KEYS[0])],
                   **unauth)
        c.stream(c.request(tokens=[1, 2]), "GenerateStream with a wrong key", md=[("authorization", "Bearer nope")],
                 **unauth)
        try:
            c.stub.Tokenize(pb.TokenizeRequest(text=b"hi"), timeout=10)
            report.check(False, "tiny: Tokenize without a key answers UNAUTHENTICATED", "it answered OK")
        except c.grpc.RpcError as e:
            if report.check(e.code().name == "UNAUTHENTICATED", "tiny: Tokenize without a key answers UNAUTHENTICATED",
                            f"got {e.code().name}"):
                c.tally.rejected["unauthenticated"] += 1
        report.check(c.daemon.health() == "SERVING", "tiny: health answers SERVING without a key")


def moe_phase1(report, c, pb):
    live = {}
    probe = c.generate(c.request(tokens=[10, 11, 12], max_tokens=20), "greedy probe") or []
    stop = pick_stop_token(probe)
    if report.check(stop is not None, "moe: the greedy probe has a token to stop on", f"probe {probe}"):
        c.generate(c.request(tokens=[10, 11, 12], max_tokens=20, stop_token_ids=[stop]), "Generate with a stop token")
    # Four at once, two of them with one expert per token.
    c.tally.rpcs["Generate"] += 4
    reqs = [c.request(tokens=[20, 21, 22, 23], max_tokens=24),
            c.request(tokens=[30, 31, 32], max_tokens=24, budget=pb.ComputeBudget(experts_per_token=1)),
            c.request(tokens=[40, 41], max_tokens=24, budget=pb.ComputeBudget(experts_per_token=1, attention_gate_floor=0.2)),
            c.request(tokens=list(range(50, 58)), max_tokens=24, ignore_eos=True)]
    futures = [c.stub.Generate.future(r, metadata=c.md, timeout=60) for r in reqs]
    for i, (r, f) in enumerate(zip(reqs, futures)):
        try:
            resp = f.result()
            c._finished(f"concurrent Generate {i}", resp.usage, resp.finish_reason, r, None, list(resp.token_ids))
        except c.grpc.RpcError as e:
            report.check(False, f"moe: concurrent Generate {i} finishes", f"{e.code().name}: {e.details()}")
    c.stream(c.request(tokens=[60, 61, 62], max_tokens=16, budget=pb.ComputeBudget(attention_gate_floor=0.3)),
             "GenerateStream with attention_gate_floor")
    # A long stream: the live gauges while it runs (read on /metrics after its first message).
    req = c.request(tokens=[70, 71, 72, 73, 74], max_tokens=240, ignore_eos=True)
    c.tally.rpcs["GenerateStream"] += 1
    try:
        it = c.stub.GenerateStream(req, metadata=c.md, timeout=60)
        last = next(it)
        live = c.daemon.metrics()
        for m in it:
            last = m
        c._finished("long GenerateStream", last.usage, last.finish_reason, req, None, [])
    except (c.grpc.RpcError, StopIteration) as e:
        report.check(False, "moe: long GenerateStream finishes", repr(e))
    bad = dict(expect=INVALID_CODES, reason="invalid")
    c.generate(c.request(text=b"no tokenizer here"), "text on a model without a tokenizer", **bad)
    c.generate(c.request(tokens=[1, 300]), "token id 300 (vocabulary 300)", **bad)
    c.generate(c.request(tokens=[1, 2], budget=pb.ComputeBudget(skip_ratio=0.5)), "skip_ratio without residual gates", **bad)
    c.generate(c.request(tokens=[1, 2], budget=pb.ComputeBudget(experts_per_token=3)), "experts_per_token 3 > k=2", **bad)
    c.generate(c.request(tokens=[1, 2, 3], max_tokens=300), "prompt + max_tokens over the 256-token context", **bad)
    c.stream(c.request(tokens=[1, 2], stop=["x"]), "GenerateStream stop string without a tokenizer", **bad)
    return live


def tiny_phase2(report, c, pb):
    """--max_num_seqs=1 --max_queue=1: one running, one queued, the next one is queue_full.
    Returns (lower bound of tokens generated by requests that did not report usage,
    prompt tokens of those that ran, live metrics while one ran and one queued)."""
    tally = c.tally
    extra_generated = extra_prompt = 0
    live = {}
    c.tally.rpcs["GenerateStream"] += 2
    s1_req = c.request(tokens=[1, 2, 3, 4, 5], max_tokens=2040, ignore_eos=True)
    s1 = c.stub.GenerateStream(s1_req, metadata=c.md, timeout=60)
    first = next(s1)
    extra_generated += len(first.token_ids)
    extra_prompt += 5
    c.wait_stats("one running", lambda s: s.running == 1)
    s2 = c.stub.GenerateStream(c.request(tokens=[6, 7], max_tokens=10), metadata=c.md, timeout=60)
    s = c.wait_stats("one running, one waiting", lambda s: s.running == 1 and s.waiting == 1)
    if s.waiting == 1:
        live = c.daemon.metrics()
    c.generate(c.request(tokens=[1, 2], max_tokens=4), "Generate with the queue full",
               expect={"RESOURCE_EXHAUSTED"}, reason="queue_full")
    if report.check(s2.cancel(), "tiny: the queued stream was still open when cancelled"):
        tally.success["abort"] += 1
    c.wait_stats("the cancelled queued request gone", lambda s: s.waiting == 0)
    c.generate(c.request(tokens=[3, 4], max_tokens=4), "Generate whose deadline passes while queued", timeout=0.4,
               expect={"DEADLINE_EXCEEDED"}, reason="deadline")
    if report.check(s1.cancel(), "tiny: the running stream was still open when cancelled",
                    "it ended first: raise max_tokens or slow the daemon"):
        tally.success["abort"] += 1
    c.wait_stats("idle after the cancels", lambda s: s.running == 0 and s.waiting == 0)
    c.generate(c.request(tokens=[5, 6], max_tokens=2040, ignore_eos=True), "Generate whose deadline passes while running",
               timeout=0.3, expect={"DEADLINE_EXCEEDED"}, reason="deadline")
    c.wait_stats("idle", lambda s: s.running == 0 and s.waiting == 0)
    c.tally.rpcs["GenerateStream"] += 1
    try:
        for m in c.stub.GenerateStream(c.request(tokens=[7, 8], max_tokens=2040, ignore_eos=True), metadata=c.md,
                                       timeout=0.3):
            extra_generated += len(m.token_ids)
        report.check(False, "tiny: GenerateStream whose deadline passes while running answers DEADLINE_EXCEEDED",
                     "it finished")
    except c.grpc.RpcError as e:
        if report.check(e.code().name == "DEADLINE_EXCEEDED",
                        "tiny: GenerateStream whose deadline passes while running answers DEADLINE_EXCEEDED",
                        f"got {e.code().name}"):
            tally.rejected["deadline"] += 1
    extra_prompt += 2 * (extra_generated > len(first.token_ids))
    c.wait_stats("idle at the end", lambda s: s.running == 0 and s.waiting == 0)
    return extra_generated, extra_prompt, live


# ---------------------------------------------------------------------------------------
# label, HELP and dashboard checks


def check_live(report, job, live, want):
    if not live:
        report.check(False, f"{job}: live gauges read on /metrics while requests ran", "not read (see above)")
        return
    for name, (op, v) in want.items():
        got = t.metric_value(live, name)
        present = any(n == name for n, _ in live)
        ok = present and (got == v if op == "eq" else got >= v if op == "ge" else got > v)
        report.check(ok, f"{job}: live {name} {'==' if op == 'eq' else '>=' if op == 'ge' else '>'} {v}",
                     f"{'missing' if not present else got}")


def check_help(report, job, text, families):
    helps, types = {}, {}
    seen = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            parts = line.split(" ", 3)
            helps[parts[2]] = parts[3].strip() if len(parts) > 3 else ""
        elif line.startswith("# TYPE "):
            parts = line.split()
            types[parts[2]] = parts[3] if len(parts) > 3 else ""
        elif line and not line.startswith("#"):
            seen.add(line.split("{")[0].split(" ")[0])
    for fam, kind in families.items():
        names = [fam, fam[:-len("_total")]] if fam.endswith("_total") and kind == "counter" else [fam]
        name = next((n for n in names if n in types), None)
        if name is None:
            report.check(False, f"{job}: /metrics has {fam} with TYPE {kind} and HELP text", "no # TYPE line")
            continue
        report.check(types[name] == kind and bool(helps.get(name)),
                     f"{job}: /metrics has {fam} with TYPE {kind} and HELP text",
                     f"TYPE {types[name]!r}, HELP {helps.get(name)!r}")
    undocumented = sorted(n for n in seen if n.startswith("sluice_") and not any(
        n == f or n in (f + "_bucket", f + "_sum", f + "_count", f + "_total") for f in helps))
    report.check(not undocumented, f"{job}: every sluice_* sample on /metrics belongs to a family with HELP",
                 ", ".join(undocumented))


def dashboard_targets(dash):
    """(panel title, refId, expr) of every target, rows' nested panels included."""
    out = []

    def walk(panels):
        for p in panels:
            for tg in p.get("targets", []):
                out.append((p.get("title", "?"), tg.get("refId", "?"), tg.get("expr", "")))
            walk(p.get("panels", []))

    walk(dash.get("panels", []))
    return out


def substitute(expr, model_regex, window):
    # Longest names first so that $__rate_interval is not read as $__rate + "_interval" etc.
    subs = [("${__rate_interval}", window), ("$__rate_interval", window), ("${__interval}", window),
            ("$__interval", window), ("${__range}", window), ("$__range", window),
            ("${model_name:regex}", model_regex), ("${model_name:pipe}", model_regex), ("${model_name}", model_regex),
            ("$model_name", model_regex)]
    for k, v in subs:
        expr = expr.replace(k, v)
    return expr


def check_dashboard_file(report):
    try:
        with open(DASHBOARD) as f:
            dash = json.load(f)
    except (OSError, ValueError) as e:
        report.check(False, f"{DASHBOARD} loads as JSON", str(e))
        return None
    report.check(dash.get("schemaVersion", 0) >= 36, "dashboard schemaVersion >= 36", str(dash.get("schemaVersion")))
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    ds = variables.get("datasource", {})
    report.check(ds.get("type") == "datasource" and ds.get("query") == "prometheus",
                 "dashboard has a Prometheus datasource variable 'datasource'", str(ds))
    mv = variables.get("model_name", {})
    report.check(mv.get("type") == "query" and mv.get("multi") and mv.get("includeAll"),
                 "dashboard has a multi-value query variable 'model_name'", str(mv)[:200])
    targets = dashboard_targets(dash)
    report.check(len(targets) > 0, "dashboard has targets")
    ids = [p.get("id") for p in dash.get("panels", [])]
    report.check(len(ids) == len(set(ids)), "dashboard panel ids are unique", str(ids))
    bad_ds = [p.get("title") for p in dash.get("panels", []) if p.get("targets") and
              (p.get("datasource", {}).get("uid") != "${datasource}" or
               any(tg.get("datasource", {}).get("uid") != "${datasource}" for tg in p["targets"]))]
    report.check(not bad_ds, "every dashboard panel and target uses ${datasource}", ", ".join(bad_ds))
    no_model = [f"{title}/{ref}" for title, ref, expr in targets if "$model_name" not in expr]
    report.check(not no_model, "every dashboard target filters on $model_name", ", ".join(no_model))
    exprs = "\n".join(e for _, _, e in targets)
    for fam in list(FAMILIES) + [EXPERT_FAMILY]:
        if fam in ("sluice_rpc_started_total",):
            continue
        report.check(fam in exprs, f"dashboard queries {fam}")
    return dash


def check_dashboard_queries(report, prom, dash, models):
    report.section("dashboard queries against the live Prometheus")
    window = f"{max(int(time.time() - prom.started_at) + 5, 10)}s"  # covers the whole test
    model_regex = "|".join(models)
    q = dash["templating"]["list"]
    mv = next((v for v in q if v.get("name") == "model_name"), {})
    definition = mv.get("definition", "")
    if definition.startswith("label_values(") and definition.endswith(")"):
        metric, _, label = definition[len("label_values("):-1].rpartition(",")
        try:
            values = prom.label_values(label.strip(), match=metric.strip())
            report.check(set(models) <= set(values), f"variable model_name: {definition} lists {models}", str(values))
        except t.PrometheusError as e:
            report.check(False, f"variable model_name: {definition}", str(e))
    else:
        report.check(False, "variable model_name is label_values(<metric>, model_name)", definition)
    for title, ref, expr in dashboard_targets(dash):
        promql = substitute(expr, model_regex, window)
        what = f"panel '{title}' {ref}"
        if "$" in promql:
            report.check(False, f"{what}: every variable substituted", promql)
            continue
        try:
            result = prom.query(promql)
        except t.PrometheusError as e:
            report.check(False, f"{what}: query runs", f"{e} in {promql}")
            continue
        finite = [v for _, v in result if not math.isnan(v)]
        report.check(bool(result) and bool(finite), f"{what}: non-empty, finite result",
                     f"{len(result)} series, all NaN" if result else f"empty: {promql}")


# ---------------------------------------------------------------------------------------


def main():
    report = Report()
    pb, pbg = t.stubs()
    flags = t.sluiced_flags()
    report.section("flags of this sluiced (the test leaves out any it lacks and fails)")
    have = {}
    for f in ["api_keys_file", "served_model_name", "expert_metrics", "drain_grace_s"]:
        have[f] = report.check(f in flags, f"sluiced has --{f}")

    promtool = os.path.join(os.path.dirname(t.PROMETHEUS_BIN), "promtool")
    if os.access(promtool, os.X_OK):
        out = subprocess.run([promtool, "check", "config", PROMETHEUS_YML], capture_output=True, text=True, timeout=60)
        report.check(out.returncode == 0, "promtool check config deploy/prometheus/prometheus.yml",
                     (out.stdout + out.stderr).strip())
    else:
        report.check(False, f"promtool next to {t.PROMETHEUS_BIN}", "not found (Debian's prometheus package has it)")
    dash = check_dashboard_file(report)

    work = tempfile.mkdtemp(prefix="sluice-prometheus-test-")  # removed by the ExitStack below
    keys_file = os.path.join(work, "api_keys")
    with open(keys_file, "w") as f:
        f.write(f"# keys of the Prometheus test\n\n{KEYS[0]}\n# another one\n{KEYS[1]}\n")
    common = ["--drain_grace_s=0"] if have["drain_grace_s"] else []  # a quick exit on SIGTERM
    tiny_args = common + ["--max_num_seqs=1", "--max_queue=1"]
    if have["api_keys_file"]:
        tiny_args.append(f"--api_keys_file={keys_file}")
    moe_args = list(common)
    if have["served_model_name"]:
        moe_args.append(f"--served_model_name={MOE_NAME}")
    if have["expert_metrics"]:
        moe_args.append("--expert_metrics=all")
    tiny = t.Daemon(t.DEMO_MODEL, tiny_args, die_with_parent=True)
    moe = t.Daemon(MOE_MODEL, moe_args, die_with_parent=True)

    with contextlib.ExitStack() as stack:
        def on_signal(signum, _frame):
            raise SystemExit(f"killed by signal {signum}")

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        for path in (work, tiny.dir, moe.dir):  # run last: the logs are printed before
            stack.callback(shutil.rmtree, path, True)
        failed_logs = []
        stack.callback(lambda: [sys.stderr.write(x) for x in failed_logs])
        for d in (tiny, moe):
            stack.callback(d.stop)
        try:
            run(report, pb, pbg, stack, tiny, moe, have, dash)
        except BaseException:
            report.failures.append("the test stopped on an exception (traceback below)")
            raise
        finally:
            if report.failures:
                for d, name in ((tiny, "tiny"), (moe, "moe")):
                    failed_logs.append(f"--- sluiced ({name}) log tail ---\n{d.read_log()[-3000:]}\n")

    print(f"\n{report.passed} checks passed, {len(report.failures)} failed")
    if report.failures:
        print("FAILED:\n  " + "\n  ".join(report.failures))
        return 1
    return 0


def run(report, pb, pbg, stack, tiny, moe, have, dash):
    for d in (tiny, moe):
        d.start()
    prom = t.Prometheus({TINY_JOB: [f"127.0.0.1:{tiny.metrics_port}"], MOE_JOB: [f"127.0.0.1:{moe.metrics_port}"]})
    stack.callback(shutil.rmtree, prom.dir, True)
    stack.callback(prom.stop)
    stack.callback(lambda: report.failures and sys.stderr.write(
        f"--- prometheus log tail ---\n{prom.read_log()[-3000:]}\n"))
    prom.start()
    try:
        prom.wait_targets_up(timeout=30)
        report.check(True, "Prometheus scrapes both daemons")
    except RuntimeError as e:
        report.check(False, "Prometheus scrapes both daemons", str(e))

    auth = have["api_keys_file"]
    md = [("authorization", f"Bearer {KEYS[0]}")] if auth else []
    moe_info = moe.channel()
    info = pbg.GenerationStub(moe_info).GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    moe_info.close()
    base = {TINY_JOB: tiny.metrics(), MOE_JOB: moe.metrics()}
    base_experts = {str(layer): t.metric_value(base[MOE_JOB], EXPERT_FAMILY, layer=str(layer))
                    for layer in range(info.num_layers)}
    tc = Client(report, tiny, Tally(TINY_JOB), pb, pbg, md)
    mc = Client(report, moe, Tally(MOE_JOB, default_k=info.experts_per_token), pb, pbg)

    report.section("phase 1: finished, invalid and unauthenticated requests")
    tiny_phase1(report, tc, pb, auth)
    moe_live = moe_phase1(report, mc, pb)
    t_end = time.time()
    tiny_stats, moe_stats = tc.stats(), mc.stats()
    check_live(report, MOE_JOB, moe_live, {"sluice_num_requests_running": ("ge", 1),
                                           "sluice_kv_cache_usage_perc": ("gt", 0),
                                           "sluice_state_slots_usage_perc": ("gt", 0)})
    moe_ex = request_expects(mc.tally, base[MOE_JOB], stats=moe_stats)
    for m in ["Generate", "GenerateStream"]:
        moe_ex.append(Expect(f"moe: sluice_rpc_started_total{{method=\"/sluice.v1.Generation/{m}\"}} == "
                             f"{mc.tally.rpcs[m]}", f"sum(sluice_rpc_started_total"
                             f"{sel(MOE_JOB, method='/sluice.v1.Generation/' + m)})", "eq", mc.tally.rpcs[m]))
    moe_ex += [
        Expect(f"moe: {EXPERT_FAMILY} has series for every layer (0..{info.num_layers - 1})",
               f"count(count by (layer) ({EXPERT_FAMILY}{sel(MOE_JOB)}))", "eq", info.num_layers),
        Expect(f"moe: {EXPERT_FAMILY} has no layer or expert label outside the model",
               f"count({EXPERT_FAMILY}{{job=\"{MOE_JOB}\", layer!~\"{'|'.join(map(str, range(info.num_layers)))}\"}}"
               f" or {EXPERT_FAMILY}{{job=\"{MOE_JOB}\", expert!~\"{'|'.join(map(str, range(info.num_experts)))}\"}})",
               "empty"),
        *[Expect(f"moe: {EXPERT_FAMILY}{{layer=\"{layer}\"}} summed over experts == before + tokens run x experts "
                 f"per token ({base_experts[layer]:g} + {mc.tally.expert_slots})",
                 f"sum({EXPERT_FAMILY}{sel(MOE_JOB, layer=layer)})", "eq", base_experts[layer] + mc.tally.expert_slots)
          for layer in map(str, range(info.num_layers))],
        Expect(f"tiny: no {EXPERT_FAMILY} on a dense model", f"{EXPERT_FAMILY}{sel(TINY_JOB)}", "empty"),
    ]
    settle(report, prom, request_expects(tc.tally, base[TINY_JOB], stats=tiny_stats) + moe_ex, t_end)
    tiny_phase1_tally = (tc.tally.prompt_tokens, tc.tally.generation_tokens, tc.tally.ttft, tc.tally.itl)

    report.section("phase 2: queue_full, deadlines, cancels (tiny)")
    extra_generated, extra_prompt, tiny_live = tiny_phase2(report, tc, pb)
    t_end = time.time()
    tiny_stats = tc.stats()
    check_live(report, TINY_JOB, tiny_live, {"sluice_num_requests_running": ("eq", 1),
                                             "sluice_num_requests_waiting": ("eq", 1),
                                             "sluice_kv_cache_usage_perc": ("gt", 0),
                                             "sluice_state_slots_usage_perc": ("eq", 0)})
    p0, g0, ttft0, itl0 = tiny_phase1_tally
    j = TINY_JOB
    ex = request_expects(tc.tally, base[TINY_JOB], exact_tokens=False, stats=tiny_stats) + [
        Expect(f"{j}: sluice_prompt_tokens_total >= phase 1 + prompts that ran ({p0 + extra_prompt})",
               f"sum(sluice_prompt_tokens_total{sel(j)})", "ge", p0 + extra_prompt),
        Expect(f"{j}: sluice_generation_tokens_total >= phase 1 + tokens streamed ({g0 + extra_generated})",
               f"sum(sluice_generation_tokens_total{sel(j)})", "ge", g0 + extra_generated),
        Expect(f"{j}: sluice_time_to_first_token_seconds_count: phase 1 + the cancelled running stream, "
               f"+ at most the 2 running deadlines", f"sum(sluice_time_to_first_token_seconds_count{sel(j)})",
               "range", (ttft0 + 1, ttft0 + 3)),
        Expect(f"{j}: sluice_inter_token_latency_seconds_count >= phase 1 ({itl0})",
               f"sum(sluice_inter_token_latency_seconds_count{sel(j)})", "ge", itl0),
        Expect(f"{j}: 0 <= sluice_executed_compute_ratio_sum <= its _count (each ratio in [0, 1])",
               f"sum(sluice_executed_compute_ratio_sum{sel(j)}) / sum(sluice_executed_compute_ratio_count{sel(j)})",
               "range", (0, 1)),
    ]
    settle(report, prom, ex, t_end)

    report.section("model_name on every series")
    for e in [
        Expect("no sluice_* series without model_name",
               'count by (__name__, job) ({__name__=~"sluice_.*", model_name=""})', "empty"),
        Expect(f"tiny: every sluice_* series has model_name=\"{TINY_NAME}\"",
               f'count by (__name__, model_name) ({{__name__=~"sluice_.*", job="{TINY_JOB}", model_name!="{TINY_NAME}"}})',
               "empty"),
        Expect(f"moe: every sluice_* series has model_name=\"{MOE_NAME}\"",
               f'count by (__name__, model_name) ({{__name__=~"sluice_.*", job="{MOE_JOB}", model_name!="{MOE_NAME}"}})',
               "empty"),
    ]:
        ok, detail = e.evaluate(prom)
        report.check(ok, e.what, detail)

    report.section("HELP and TYPE on /metrics")
    for d, job, families in ((tiny, TINY_JOB, FAMILIES), (moe, MOE_JOB, {**FAMILIES, EXPERT_FAMILY: "counter"})):
        if report.check(d.proc.poll() is None, f"{job}: sluiced still running at the end",
                        f"it exited with {d.proc.returncode} (log below)"):
            check_help(report, job, d.metrics_text(), families)

    if dash is not None:
        check_dashboard_queries(report, prom, dash, [TINY_NAME, MOE_NAME])


if __name__ == "__main__":
    sys.exit(main())
