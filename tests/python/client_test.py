"""sluice-client (clients/python) against the real sluiced.

The package is the one scripts/setup-venv.sh installed into the venv from the repo, so
its stubs were generated from proto/ at install time; the first tests check they match
the proto/ of this checkout. Then, sync and asyncio alike: generate, stream, tokenize,
detokenize, model_info, engine_stats and health on the embedded demo llama; stream deltas
that add up to the unary result for the same seed; compute budgets reported in usage;
one typed exception per status the daemon answers (INVALID_ARGUMENT, FAILED_PRECONDITION,
RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, CANCELLED, UNAVAILABLE, NOT_FOUND, UNAUTHENTICATED);
API keys; TLS and mutual TLS with a CA made by openssl; the hybrid MoE fixture (token ids
only, no tokenizer).
"""

import asyncio
import dataclasses
import inspect
import os
import re
import subprocess
import tempfile
import time
import unittest

import grpc
from google.protobuf import descriptor_pb2

import sluice_client as sc
from sluice_client import errors
import sluice_testlib as tl

MOE_MODEL = os.path.join(tl.TEST_DATA_DIR, "models", "qwen3_5_moe_f32")
PROMPT = "Once upon a time"
KEY = "sk-client-test-0123456789abcdef"
LONG = dict(tokens=[1, 2, 3], max_tokens=2000, ignore_eos=True)  # ~15 s of decode on the demo model

demo = None  # the demo daemon every plain test shares


def setUpModule():
    global demo
    demo = tl.Daemon(metrics=False, die_with_parent=True).start()


def tearDownModule():
    assert demo.stop() == 0


def wait_idle(client, timeout=15):
    """Until the engine runs and queues nothing; returns the last EngineStats."""
    deadline = time.time() + timeout
    while True:
        stats = client.engine_stats()
        if (stats.running == 0 and stats.waiting == 0) or time.time() > deadline:
            return stats
        time.sleep(0.05)


class PackageTest(unittest.TestCase):
    """The installed package: stubs generated from this checkout's proto/, a dataclass
    field for every proto field, one exception class per status code."""

    def test_stubs_are_generated_from_this_proto(self):
        from grpc_tools import protoc

        pb2 = sc.generation_pb2
        self.assertTrue(pb2.__file__.endswith(os.path.join("sluice_client", "_proto", "sluice", "v1",
                                                           "generation_pb2.py")), pb2.__file__)
        # Installed (site-packages), not imported from the source tree.
        self.assertFalse(os.path.abspath(pb2.__file__).startswith(os.path.join(tl.SOURCE_DIR, "clients")),
                         pb2.__file__)
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "set.pb")
            proto_root = os.path.join(tl.SOURCE_DIR, "proto")
            self.assertEqual(protoc.main(["protoc", f"-I{proto_root}", f"--descriptor_set_out={out}",
                                          os.path.join(proto_root, "sluice", "v1", "generation.proto")]), 0)
            with open(out, "rb") as f:
                fresh = descriptor_pb2.FileDescriptorSet.FromString(f.read()).file[0]
        installed = descriptor_pb2.FileDescriptorProto.FromString(pb2.DESCRIPTOR.serialized_pb)
        for fd in (fresh, installed):  # generated code leaves out the derived json names
            for msg in fd.message_type:
                for fld in msg.field:
                    fld.ClearField("json_name")
        self.assertEqual(installed.name, "sluice/v1/generation.proto")
        self.assertEqual(installed, fresh, "the installed stubs are stale: run scripts/setup-venv.sh")
        self.assertTrue(hasattr(sc.generation_pb2_grpc, "GenerationStub"))

    def test_every_proto_field_has_a_counterpart(self):
        pb = sc.generation_pb2

        def names(msg):
            return {f.name for f in msg.DESCRIPTOR.fields}

        def fields(cls):
            return {f.name for f in dataclasses.fields(cls)}

        self.assertEqual(fields(sc.ModelInfo), names(pb.ModelInfo))
        self.assertEqual(fields(sc.EngineStats), names(pb.EngineStats))
        self.assertEqual(fields(sc.Usage), names(pb.Usage))
        self.assertEqual(fields(sc.BudgetReport), names(pb.BudgetReport))
        self.assertEqual(fields(sc.Budget), names(pb.ComputeBudget))
        self.assertEqual(fields(sc.TokenLogprob), names(pb.TokenLogprob))
        self.assertEqual(fields(sc.GenerateResult), names(pb.GenerateResponse))
        self.assertEqual(fields(sc.StreamDelta), names(pb.GenerateStreamResponse))
        # generate()'s keywords: every sampling and stopping field, with the proto's defaults
        # (top_p and repetition_penalty: "unset or 0 means 1").
        want = names(pb.SamplingParams) | names(pb.StoppingCriteria) | {"budget", "priority", "logprobs",
                                                                         "add_special_tokens", "request_id"}
        for fn in (sc.Client.generate, sc.Client.stream, sc.AsyncClient.generate, sc.AsyncClient.stream):
            params = inspect.signature(fn).parameters
            self.assertLessEqual(want, set(params), fn)
            self.assertEqual(params["top_p"].default, 1.0)
            self.assertEqual(params["repetition_penalty"].default, 1.0)
            self.assertIsNone(params["seed"].default)
            self.assertIsNone(params["timeout"].default)
            for name in want - {"top_p", "repetition_penalty", "seed", "budget", "logprobs", "stop",
                                "stop_token_ids"}:
                self.assertFalse(params[name].default, (fn, name))
                self.assertEqual(params[name].kind, inspect.Parameter.KEYWORD_ONLY, (fn, name))

    def test_one_exception_class_per_status_code(self):
        seen = set()
        for code in grpc.StatusCode:
            if code == grpc.StatusCode.OK:
                continue
            cls = errors.error_class(code)
            self.assertIsNot(cls, sc.SluiceError, code)
            self.assertTrue(issubclass(cls, sc.SluiceError))
            self.assertEqual(cls.code, code)
            self.assertNotIn(cls, seen)
            seen.add(cls)
            self.assertIs(getattr(sc, cls.__name__), cls)
        # The codes proto/sluice/v1/generation.proto's header documents, and UNAUTHENTICATED
        # (API keys), each have the class the task names.
        with open(os.path.join(tl.SOURCE_DIR, "proto", "sluice", "v1", "generation.proto")) as f:
            block = f.read().split("Status codes")[1].split("\n//\n")[0]
        documented = set(re.findall(r"^//\s+([A-Z][A-Z_]+)\s", block, re.MULTILINE)) - {"OK"}
        self.assertGreaterEqual(len(documented), 8, documented)
        expected = {"INVALID_ARGUMENT": sc.InvalidArgumentError, "UNIMPLEMENTED": sc.UnimplementedError,
                    "FAILED_PRECONDITION": sc.FailedPreconditionError,
                    "RESOURCE_EXHAUSTED": sc.ResourceExhaustedError, "UNAVAILABLE": sc.UnavailableError,
                    "DEADLINE_EXCEEDED": sc.DeadlineExceededError, "CANCELLED": sc.CancelledError,
                    "INTERNAL": sc.InternalError, "UNAUTHENTICATED": sc.UnauthenticatedError}
        for name in documented | {"UNAUTHENTICATED"}:
            self.assertIs(errors.error_class(grpc.StatusCode[name]), expected[name], name)


class SyncTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.client = sc.Client(demo.address, timeout=60)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()

    def test_health_info_and_stats(self):
        c = self.client
        self.assertEqual(c.health(), "SERVING")
        self.assertEqual(c.health("sluice.v1.Generation"), "SERVING")
        with self.assertRaises(sc.NotFoundError):
            c.health("no.such.Service")
        info = c.model_info()
        self.assertIsInstance(info, sc.ModelInfo)
        self.assertEqual((info.model_type, info.architecture), ("llama", "LlamaForCausalLM"))
        self.assertEqual(info.vocab_size, 512)
        self.assertEqual(info.layer_types, ["full_attention"] * info.num_layers)
        self.assertEqual(info.supported_budget_controls, ["skip_layers"])
        self.assertTrue(info.has_tokenizer)
        self.assertEqual(info.model_path, tl.DEMO_MODEL)
        before = c.engine_stats()
        self.assertIsInstance(before, sc.EngineStats)
        self.assertGreater(before.total_kv_blocks, 0)
        c.generate(tokens=[5, 6], max_tokens=3, ignore_eos=True)
        after = wait_idle(c)
        self.assertEqual(after.finished, before.finished + 1)
        self.assertGreater(after.steps, before.steps)
        self.assertEqual(after.free_kv_blocks, after.total_kv_blocks)

    def test_tokenize_detokenize(self):
        c = self.client
        ids = c.tokenize("Hello world")
        self.assertTrue(ids and all(0 <= i < 512 for i in ids), ids)
        self.assertEqual(c.detokenize(ids), "Hello world")
        self.assertEqual(c.tokenize(b"Hello world"), ids)
        self.assertEqual(c.detokenize([]), "")
        with self.assertRaises(sc.InvalidArgumentError):
            c.tokenize(b"\xff\xfe")
        with self.assertRaises(sc.InvalidArgumentError):
            c.detokenize([100000])

    def test_generate(self):
        c = self.client
        r = c.generate(PROMPT, max_tokens=12, ignore_eos=True, request_id="req-1")
        self.assertIsInstance(r, sc.GenerateResult)
        self.assertEqual(len(r.token_ids), 12)
        self.assertEqual(r.finish_reason, "length")
        self.assertEqual(r.request_id, "req-1")
        self.assertEqual(r.text, c.detokenize(r.token_ids))
        self.assertEqual(r.usage.prompt_tokens, len(c.tokenize(PROMPT)))
        self.assertEqual(r.usage.completion_tokens, 12)
        self.assertGreater(r.usage.dense_flops, 0)
        self.assertEqual(r.usage.executed_flops, r.usage.dense_flops)
        self.assertEqual(r.logprobs, [])
        # Greedy is deterministic, and text input is its tokens.
        self.assertEqual(c.generate(tokens=c.tokenize(PROMPT), max_tokens=12, ignore_eos=True).token_ids, r.token_ids)
        # Sampling follows the seed.
        a = c.generate(PROMPT, max_tokens=12, ignore_eos=True, temperature=1.0, seed=11)
        b = c.generate(PROMPT, max_tokens=12, ignore_eos=True, temperature=1.0, seed=11)
        d = c.generate(PROMPT, max_tokens=12, ignore_eos=True, temperature=1.0, seed=12)
        self.assertEqual(a, b)
        self.assertNotEqual(a.token_ids, d.token_ids)

    def test_stopping(self):
        c = self.client
        full = c.generate(PROMPT, max_tokens=16, ignore_eos=True)
        ids = full.token_ids
        k = next(i for i in range(2, 16) if ids[i] not in ids[:i])
        r = c.generate(PROMPT, max_tokens=16, ignore_eos=True, stop_token_ids=[ids[k]])
        self.assertEqual(r.finish_reason, "stop_token")
        self.assertEqual(r.token_ids, ids[:k + 1])
        # min_tokens holds the stop id off.
        r = c.generate(PROMPT, max_tokens=16, ignore_eos=True, stop_token_ids=[ids[0]], min_tokens=4)
        self.assertGreaterEqual(len(r.token_ids), 4)
        stop = next(full.text[i:i + 3] for i in range(3, len(full.text) - 3) if full.text[i:i + 3].isalpha())
        r = c.generate(PROMPT, max_tokens=16, ignore_eos=True, stop=[stop])
        self.assertEqual(r.finish_reason, "stop_string")
        self.assertEqual(r.text, full.text[:full.text.index(stop)])
        self.assertEqual(c.generate(PROMPT, max_tokens=16, ignore_eos=True, stop=stop).text, r.text)

    def test_logprobs(self):
        r = self.client.generate(PROMPT, max_tokens=6, ignore_eos=True, logprobs=3)
        self.assertEqual([lp.token_id for lp in r.logprobs], r.token_ids)
        for lp in r.logprobs:
            self.assertIsInstance(lp, sc.TokenLogprob)
            self.assertLessEqual(lp.logprob, 0.0)
            self.assertEqual(len(lp.top), 3)
            self.assertEqual(lp.top[0].logprob, max(t.logprob for t in lp.top))
            self.assertEqual(lp.top[0].token_id, lp.token_id)  # greedy picks the top one
        only = self.client.generate(PROMPT, max_tokens=6, ignore_eos=True, logprobs=0)
        self.assertEqual(len(only.logprobs), 6)
        self.assertTrue(all(lp.top == [] for lp in only.logprobs))

    def test_stream_adds_up_to_generate(self):
        c = self.client
        kw = dict(max_tokens=24, ignore_eos=True, temperature=0.9, top_k=50, seed=7, logprobs=1, request_id="s")
        unary = c.generate(PROMPT, **kw)
        deltas = list(c.stream(PROMPT, **kw))
        self.assertGreaterEqual(len(deltas), 2)
        self.assertTrue(all(isinstance(d, sc.StreamDelta) for d in deltas))
        self.assertEqual("".join(d.text for d in deltas), unary.text)
        self.assertEqual([t for d in deltas for t in d.token_ids], unary.token_ids)
        self.assertEqual([lp for d in deltas for lp in d.logprobs], unary.logprobs)
        for d in deltas[:-1]:
            self.assertIsNone(d.finish_reason)
            self.assertIsNone(d.usage)
        self.assertEqual(deltas[-1].finish_reason, "length")
        self.assertEqual(deltas[-1].usage, unary.usage)
        self.assertTrue(all(d.request_id == "s" for d in deltas))

    def test_budget_is_reported(self):
        c = self.client
        dense = c.generate(PROMPT, max_tokens=8, ignore_eos=True)
        empty = c.generate(PROMPT, max_tokens=8, ignore_eos=True, budget=sc.Budget())
        self.assertEqual(empty.token_ids, dense.token_ids)  # an empty budget is dense compute
        self.assertEqual(empty.usage.executed_flops, dense.usage.dense_flops)
        r = c.generate(PROMPT, max_tokens=8, ignore_eos=True, budget=sc.Budget(skip_layers=[(1, 2)]))
        self.assertEqual(r.usage.budget.layers_skipped, 2)
        self.assertLess(r.usage.executed_flops, r.usage.dense_flops)
        self.assertEqual(r.usage.dense_flops, dense.usage.dense_flops)
        one = c.generate(PROMPT, max_tokens=8, ignore_eos=True, budget=sc.Budget(skip_layers=[3]))
        self.assertEqual(one.usage.budget.layers_skipped, 1)
        self.assertGreater(one.usage.executed_flops, r.usage.executed_flops)
        last = list(c.stream(PROMPT, max_tokens=8, ignore_eos=True, budget=sc.Budget(skip_layers=[(1, 2)])))[-1]
        self.assertEqual(last.usage, r.usage)

    def test_typed_errors(self):
        c = self.client
        with self.assertRaises(sc.InvalidArgumentError) as e:
            c.generate(tokens=[1, 100000], max_tokens=2)
        self.assertEqual(e.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("vocabulary", e.exception.details)
        self.assertIsInstance(e.exception.__cause__, grpc.RpcError)
        for kw in (dict(temperature=-1.0), dict(top_p=1.5), dict(top_k=-1), dict(logprobs=50)):
            with self.assertRaises(sc.InvalidArgumentError, msg=kw):
                c.generate(PROMPT, max_tokens=2, **kw)
        with self.assertRaises(sc.InvalidArgumentError):
            c.generate(max_tokens=2)  # no input at all
        with self.assertRaises(sc.InvalidArgumentError):
            c.generate(b"\xc3\x28", max_tokens=2)  # invalid UTF-8 reaches the daemon
        with self.assertRaises(ValueError):
            c.generate(PROMPT, tokens=[1])
        for budget, control in ((sc.Budget(skip_ratio=0.5), "skip_ratio"),
                                (sc.Budget(experts_per_token=1), "experts_per_token")):
            with self.assertRaises(sc.FailedPreconditionError) as e:
                c.generate(PROMPT, max_tokens=2, budget=budget)
            self.assertIn(control, e.exception.details)
            self.assertIn("skip_layers", e.exception.details)  # what the model supports
        with self.assertRaises(sc.ResourceExhaustedError):
            c.generate("x" * (5 << 20), max_tokens=1)  # over the daemon's 4 MiB message limit
        # Streams raise the same classes from the iteration.
        with self.assertRaises(sc.InvalidArgumentError):
            list(c.stream(tokens=[100000], max_tokens=2))
        with self.assertRaises(sc.FailedPreconditionError):
            for _ in c.stream(PROMPT, max_tokens=2, budget=sc.Budget(skip_ratio=0.5)):
                pass
        self.assertEqual(c.health(), "SERVING")

    def test_deadlines(self):
        c = self.client
        t = time.time()
        with self.assertRaises(sc.DeadlineExceededError) as e:
            c.generate(**LONG, timeout=0.3)
        self.assertLess(time.time() - t, 5)
        self.assertEqual(e.exception.code, grpc.StatusCode.DEADLINE_EXCEEDED)
        with self.assertRaises(sc.DeadlineExceededError):
            for _ in c.stream(**LONG, timeout=0.3):
                pass
        stats = wait_idle(c)  # the daemon dropped both
        self.assertEqual((stats.running, stats.waiting), (0, 0))
        # The client's default deadline, and a per-call one that overrides it.
        with sc.Client(demo.address, timeout=0.3) as short:
            with self.assertRaises(sc.DeadlineExceededError):
                short.generate(**LONG)
            self.assertEqual(len(short.generate(**dict(LONG, max_tokens=4), timeout=30).token_ids), 4)
        wait_idle(c)

    def test_cancel_stops_the_request(self):
        c = self.client
        s = c.stream(**LONG)
        first = [next(s), next(s)]
        self.assertTrue(all(d.token_ids for d in first))
        self.assertEqual(c.engine_stats().running, 1)
        self.assertTrue(s.cancel())
        with self.assertRaises(sc.CancelledError):
            next(s)
        stats = wait_idle(c, timeout=5)
        self.assertEqual(stats.running, 0)
        # Leaving a `with` block cancels too.
        with c.stream(**LONG) as s2:
            next(s2)
        self.assertEqual(wait_idle(c, timeout=5).running, 0)

    def test_unreachable_is_unavailable(self):
        with sc.Client(f"127.0.0.1:{tl.free_port()}", timeout=10) as c:
            with self.assertRaises(sc.UnavailableError):
                c.generate(PROMPT, max_tokens=1)
            with self.assertRaises(sc.UnavailableError):
                c.health()
            with self.assertRaises(sc.UnavailableError):
                list(c.stream(PROMPT, max_tokens=1))


class AsyncTest(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self):
        self.client = sc.AsyncClient(demo.address, timeout=60)
        self.sync = sc.Client(demo.address, timeout=60)

    async def asyncTearDown(self):
        await self.client.close()
        self.sync.close()

    async def test_every_method(self):
        a = self.client
        self.assertEqual(await a.health(), "SERVING")
        self.assertEqual(await a.health("sluice.v1.Generation"), "SERVING")
        self.assertEqual(await a.model_info(), self.sync.model_info())
        stats = await a.engine_stats()
        self.assertIsInstance(stats, sc.EngineStats)
        self.assertGreater(stats.total_kv_blocks, 0)
        ids = await a.tokenize(PROMPT)
        self.assertEqual(ids, self.sync.tokenize(PROMPT))
        self.assertEqual(await a.detokenize(ids), PROMPT)
        kw = dict(max_tokens=16, ignore_eos=True, temperature=0.8, seed=5, logprobs=2,
                  budget=sc.Budget(skip_layers=[(0, 1)]))
        r = await a.generate(PROMPT, **kw)
        self.assertEqual(r, self.sync.generate(PROMPT, **kw))
        self.assertEqual(r.usage.budget.layers_skipped, 2)
        deltas = [d async for d in a.stream(PROMPT, **kw)]
        self.assertEqual("".join(d.text for d in deltas), r.text)
        self.assertEqual([t for d in deltas for t in d.token_ids], r.token_ids)
        self.assertTrue(all(d.finish_reason is None and d.usage is None for d in deltas[:-1]))
        self.assertEqual((deltas[-1].finish_reason, deltas[-1].usage), ("length", r.usage))
        # Deltas that queue while a write is in flight are merged into one message, so how
        # the tokens split into messages depends on timing; what they add up to does not.
        again = list(self.sync.stream(PROMPT, **kw))
        self.assertEqual([t for d in again for t in d.token_ids], r.token_ids)
        self.assertEqual([lp for d in again for lp in d.logprobs], [lp for d in deltas for lp in d.logprobs])
        self.assertEqual("".join(d.text for d in again), r.text)
        self.assertEqual(again[-1].usage, deltas[-1].usage)

    async def test_concurrent_requests_follow_their_seeds(self):
        seeds = list(range(20, 26))
        kw = dict(max_tokens=12, ignore_eos=True, temperature=1.0)
        together = await asyncio.gather(*(self.client.generate(PROMPT, seed=s, **kw) for s in seeds))
        alone = [self.sync.generate(PROMPT, seed=s, **kw) for s in seeds]
        self.assertEqual([r.token_ids for r in together], [r.token_ids for r in alone])
        self.assertGreater(len({tuple(r.token_ids) for r in together}), 1)

    async def test_typed_errors(self):
        a = self.client
        with self.assertRaises(sc.InvalidArgumentError) as e:
            await a.generate(tokens=[100000], max_tokens=2)
        self.assertIn("vocabulary", e.exception.details)
        with self.assertRaises(sc.FailedPreconditionError):
            await a.generate(PROMPT, max_tokens=2, budget=sc.Budget(skip_ratio=0.5))
        with self.assertRaises(sc.InvalidArgumentError):
            async for _ in a.stream(tokens=[100000], max_tokens=2):
                pass
        with self.assertRaises(sc.NotFoundError):
            await a.health("no.such.Service")
        with self.assertRaises(sc.DeadlineExceededError):
            await a.generate(**LONG, timeout=0.3)
        with self.assertRaises(sc.DeadlineExceededError):
            async for _ in a.stream(**LONG, timeout=0.3):
                pass
        self.assertEqual(wait_idle(self.sync).running, 0)

    async def test_cancel(self):
        s = self.client.stream(**LONG)
        await s.__anext__()
        self.assertEqual((await self.client.engine_stats()).running, 1)
        self.assertTrue(s.cancel())
        with self.assertRaises(sc.CancelledError):
            await s.__anext__()
        async with self.client.stream(**LONG) as s2:
            async for _ in s2:
                break
        self.assertEqual(wait_idle(self.sync, timeout=5).running, 0)

        # Cancelling the task that iterates is asyncio's cancellation, and still frees the request.
        async def consume():
            async with self.client.stream(**LONG) as s3:
                async for _ in s3:
                    pass

        task = asyncio.ensure_future(consume())
        while (await self.client.engine_stats()).running == 0 and not task.done():
            await asyncio.sleep(0.01)
        task.cancel()
        with self.assertRaises(asyncio.CancelledError):
            await task
        self.assertEqual(wait_idle(self.sync, timeout=5).running, 0)

    async def test_unreachable_is_unavailable(self):
        async with sc.AsyncClient(f"127.0.0.1:{tl.free_port()}", timeout=10) as a:
            with self.assertRaises(sc.UnavailableError):
                await a.generate(PROMPT, max_tokens=1)


class ApiKeyTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="sluice-client-keys-")
        keys = os.path.join(cls.tmp, "keys")
        with open(keys, "w") as f:
            f.write(f"# test key\n{KEY}\n")
        cls.daemon = tl.Daemon(args=[f"--api_keys_file={keys}"], metrics=False, die_with_parent=True).start()

    @classmethod
    def tearDownClass(cls):
        assert cls.daemon.stop() == 0

    def setUp(self):
        self.saved = os.environ.pop("SLUICE_API_KEY", None)

    def tearDown(self):
        os.environ.pop("SLUICE_API_KEY", None)
        if self.saved is not None:
            os.environ["SLUICE_API_KEY"] = self.saved

    def test_wrong_or_missing_key_is_unauthenticated(self):
        for key in (None, "", "sk-wrong", KEY + "x"):
            with sc.Client(self.daemon.address, api_key=key) as c:
                for call in (lambda: c.generate(tokens=[1], max_tokens=1), c.model_info, c.engine_stats,
                             lambda: c.tokenize("hi"), lambda: list(c.stream(tokens=[1], max_tokens=1))):
                    with self.assertRaises(sc.UnauthenticatedError, msg=key) as e:
                        call()
                    self.assertEqual(e.exception.code, grpc.StatusCode.UNAUTHENTICATED)
                self.assertEqual(c.health(), "SERVING")  # health is exempt

    def test_right_key(self):
        with sc.Client(self.daemon.address, api_key=KEY) as c:
            self.assertEqual(len(c.generate(PROMPT, max_tokens=3, ignore_eos=True).token_ids), 3)
            self.assertGreaterEqual(len(list(c.stream(PROMPT, max_tokens=3, ignore_eos=True))), 2)
            self.assertEqual(c.model_info().model_type, "llama")
        os.environ["SLUICE_API_KEY"] = KEY  # the default
        with sc.Client(self.daemon.address) as c:
            self.assertEqual(c.model_info().model_type, "llama")
        with sc.Client(self.daemon.address, api_key="") as c:  # "" sends none, whatever the environment
            with self.assertRaises(sc.UnauthenticatedError):
                c.model_info()

    def test_async(self):
        async def run():
            async with sc.AsyncClient(self.daemon.address, api_key="sk-wrong") as bad:
                with self.assertRaises(sc.UnauthenticatedError):
                    await bad.generate(tokens=[1], max_tokens=1)
                with self.assertRaises(sc.UnauthenticatedError):
                    async for _ in bad.stream(tokens=[1], max_tokens=1):
                        pass
            async with sc.AsyncClient(self.daemon.address, api_key=KEY) as good:
                return await good.generate(tokens=[1], max_tokens=2, ignore_eos=True)

        self.assertEqual(len(asyncio.run(run()).token_ids), 2)


class TlsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pki = tl.make_pki(tempfile.mkdtemp(prefix="sluice-client-pki-"))
        cls.ca = cls.pki["ca.pem"]
        tls = [f"--tls_cert={cls.pki['server.pem']}", f"--tls_key={cls.pki['server.key']}"]
        cls.daemon = cls.start(tls)
        cls.mutual = cls.start(tls + [f"--tls_client_ca={cls.ca}"])

    @classmethod
    def start(cls, args):
        d = tl.Daemon(args=args, metrics=False, die_with_parent=True).start(wait_serving=False)
        deadline = time.time() + 60
        with sc.Client(d.address, root_certificates=cls.ca, client_certificate=cls.pki["client.pem"],
                       client_key=cls.pki["client.key"], timeout=5) as c:
            while True:
                try:
                    if c.health() == "SERVING":
                        return d
                except sc.UnavailableError:
                    pass
                if time.time() > deadline:
                    raise RuntimeError(f"TLS sluiced did not become SERVING:\n{d.read_log()}")
                time.sleep(0.1)

    @classmethod
    def tearDownClass(cls):
        assert cls.daemon.stop() == 0
        assert cls.mutual.stop() == 0

    def test_tls(self):
        with open(self.ca, "rb") as f:
            ca_bytes = f.read()
        for root in (self.ca, ca_bytes):
            with sc.Client(self.daemon.address, tls=True, root_certificates=root) as c:
                self.assertEqual(c.health(), "SERVING")
                r = c.generate(PROMPT, max_tokens=4, ignore_eos=True)
                self.assertEqual(len(r.token_ids), 4)
                self.assertEqual("".join(d.text for d in c.stream(PROMPT, max_tokens=4, ignore_eos=True)), r.text)
        # Plaintext to a TLS port, and TLS that does not trust the server's CA, both fail.
        with sc.Client(self.daemon.address, timeout=5) as c:
            with self.assertRaises(sc.UnavailableError):
                c.model_info()
        with sc.Client(self.daemon.address, tls=True, timeout=5) as c:  # the system's roots
            with self.assertRaises(sc.UnavailableError):
                c.model_info()

        async def run():
            async with sc.AsyncClient(self.daemon.address, root_certificates=self.ca) as a:
                return await a.generate(PROMPT, max_tokens=4, ignore_eos=True)

        self.assertEqual(asyncio.run(run()).token_ids, r.token_ids)

    def test_mutual_tls(self):
        with sc.Client(self.mutual.address, root_certificates=self.ca, timeout=5) as c:
            with self.assertRaises(sc.UnavailableError):
                c.model_info()  # no client certificate
        with sc.Client(self.mutual.address, root_certificates=self.ca, client_certificate=self.pki["client.pem"],
                       client_key=self.pki["client.key"]) as c:
            self.assertEqual(c.model_info().model_type, "llama")
        with self.assertRaises(ValueError):
            sc.Client(self.mutual.address, root_certificates=self.ca, client_certificate=self.pki["client.pem"])


class MoeFixtureTest(unittest.TestCase):
    """The tiny hybrid MoE fixture: token ids only, MoE and gated-attention budgets."""

    @classmethod
    def setUpClass(cls):
        cls.daemon = tl.Daemon(model_dir=MOE_MODEL, metrics=False, die_with_parent=True).start()
        cls.client = sc.Client(cls.daemon.address, timeout=60)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        assert cls.daemon.stop() == 0

    def test_info_and_budgets(self):
        c = self.client
        info = c.model_info()
        self.assertEqual(info.architecture, "Qwen3_5MoeForCausalLM")
        self.assertFalse(info.has_tokenizer)
        self.assertIn("linear_attention", info.layer_types)
        self.assertGreater(info.num_experts, info.experts_per_token)
        self.assertLess(info.active_parameters, info.total_parameters)
        self.assertIn("experts_per_token", info.supported_budget_controls)
        dense = c.generate(tokens=[1, 2, 3], max_tokens=6, ignore_eos=True)
        self.assertEqual(len(dense.token_ids), 6)
        self.assertTrue(all(0 <= t < info.vocab_size for t in dense.token_ids))
        r = c.generate(tokens=[1, 2, 3], max_tokens=6, ignore_eos=True, budget=sc.Budget(experts_per_token=1))
        self.assertEqual(r.usage.budget.mean_experts_per_token, 1.0)
        self.assertLess(r.usage.executed_flops, dense.usage.executed_flops)
        deltas = list(c.stream(tokens=[1, 2, 3], max_tokens=6, ignore_eos=True, budget=sc.Budget(experts_per_token=1)))
        self.assertEqual([t for d in deltas for t in d.token_ids], r.token_ids)
        self.assertEqual(deltas[-1].usage, r.usage)
        with self.assertRaises(sc.FailedPreconditionError):
            c.generate(tokens=[1], max_tokens=2, budget=sc.Budget(skip_ratio=0.3))  # no residual gates
        with self.assertRaises(sc.InvalidArgumentError):
            c.generate(tokens=[1], max_tokens=2, budget=sc.Budget(experts_per_token=info.experts_per_token + 1))

    def test_no_tokenizer(self):
        for call in (lambda: self.client.generate("hi", max_tokens=1), lambda: self.client.tokenize("hi"),
                     lambda: self.client.detokenize([1, 2])):
            with self.assertRaises(sc.FailedPreconditionError) as e:
                call()
            self.assertIn("tokenizer", e.exception.details)


if __name__ == "__main__":
    unittest.main(verbosity=2)
