"""Operations and security of the real sluiced, with the official grpcio client.

- API keys gate every method of every service the server exposes (walked through its
  own reflection service, so a new RPC cannot be left open by accident); health is
  exempt; SIGHUP swaps keys without dropping an open stream; rejections are counted.
- TLS and mutual TLS on the gRPC port, HTTPS on /metrics.
- The drain: NOT_SERVING at once for both service names, still accepting during the
  grace, UNAVAILABLE after, in-flight requests finish, leftovers end UNAVAILABLE at the
  timeout, a second SIGTERM skips the grace, exit 0.
- Start-up failures exit non-zero with one line naming the flag and the value.
- Per-request limits answer INVALID_ARGUMENT naming the limit.
"""

import os
import signal
import socket
import subprocess
import tempfile
import time
import unittest

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from google.protobuf import descriptor_pb2

import sluice_testlib as tl

pb, pb_grpc = tl.stubs()
KEY_A = "sk-test-alpha-0123456789"
KEY_B = "sk-test-bravo-9876543210"


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def auth(key):
    return (("authorization", f"Bearer {key}"),)


def generate_request(max_tokens=4, **kw):
    return pb.GenerateRequest(tokens=pb.TokenIds(ids=[1, 2, 3]),
                              stopping=pb.StoppingCriteria(max_tokens=max_tokens, ignore_eos=True), **kw)


def list_methods(channel, metadata):
    """Every (full method path, client_streaming) the server's reflection service lists."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    services = []
    for resp in stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                          metadata=metadata, timeout=10):
        services = [s.name for s in resp.list_services_response.service]
    methods = []
    for service in services:
        req = reflection_pb2.ServerReflectionRequest(file_containing_symbol=service)
        files = []
        for resp in stub.ServerReflectionInfo(iter([req]), metadata=metadata, timeout=10):
            files = list(resp.file_descriptor_response.file_descriptor_proto)
        found = False
        for raw in files:
            fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
            for s in fd.service:
                full = f"{fd.package}.{s.name}" if fd.package else s.name
                if full != service:
                    continue
                found = True
                for m in s.method:
                    methods.append((f"/{service}/{m.name}", m.client_streaming))
        if not found and service == "grpc.health.v1.Health":
            # gRPC C++'s default health service is not built from a protobuf descriptor,
            # so reflection lists it without one; its two methods are the standard ones.
            methods += [("/grpc.health.v1.Health/Check", False), ("/grpc.health.v1.Health/Watch", False)]
            found = True
        assert found, f"reflection gave no descriptor for {service}"
    return services, methods


def call_raw(channel, path, metadata=None):
    """Calls `path` with an empty message; returns the status code."""
    call = channel.stream_stream(path)
    try:
        for _ in call(iter([b""]), metadata=metadata, timeout=10):
            pass
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        return e.code()


class AuthTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="sluice-auth-")
        cls.keys = write(os.path.join(cls.tmp, "keys"), f"# operators' keys\n{KEY_A}\n\n  {KEY_B}  \n")
        cls.daemon = tl.Daemon(args=[f"--api_keys_file={cls.keys}"]).start()

    @classmethod
    def tearDownClass(cls):
        assert cls.daemon.stop() == 0

    def test_every_method_of_every_service_needs_a_key(self):
        with self.daemon.channel() as ch:
            services, methods = list_methods(ch, auth(KEY_A))
            self.assertIn("sluice.v1.Generation", services)
            self.assertIn("grpc.health.v1.Health", services)
            self.assertTrue(any(s.startswith("grpc.reflection.") for s in services), services)
            self.assertGreaterEqual(len(methods), 8)
            before = tl.metric_value(self.daemon.metrics(), "sluice_request_rejected_total", reason="unauthenticated")
            refused = 0
            for path, _ in methods:
                for metadata in (None, auth("not-a-key"), (("authorization", KEY_A),), auth(KEY_A + "x")):
                    code = call_raw(ch, path, metadata)
                    if path.startswith("/grpc.health.v1.Health/"):
                        self.assertNotEqual(code, grpc.StatusCode.UNAUTHENTICATED, path)
                    else:
                        self.assertEqual(code, grpc.StatusCode.UNAUTHENTICATED, (path, metadata))
                        refused += 1
                # With a key the call gets past the gate (it may still be invalid).
                self.assertNotEqual(call_raw(ch, path, auth(KEY_B)), grpc.StatusCode.UNAUTHENTICATED, path)
            # An unknown method is gated too: nothing is reachable without a key.
            self.assertEqual(call_raw(ch, "/no.such.Service/Method"), grpc.StatusCode.UNAUTHENTICATED)
            refused += 1
            after = tl.metric_value(self.daemon.metrics(), "sluice_request_rejected_total", reason="unauthenticated")
            self.assertEqual(after - before, refused)

    def test_generate_with_a_key(self):
        with self.daemon.channel() as ch:
            stub = pb_grpc.GenerationStub(ch)
            resp = stub.Generate(generate_request(), metadata=auth(KEY_A), timeout=30)
            self.assertEqual(len(resp.token_ids), 4)
            with self.assertRaises(grpc.RpcError) as e:
                stub.Generate(generate_request(), timeout=30)
            self.assertEqual(e.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
            self.assertIn("authorization: Bearer", e.exception.details())
            self.assertEqual(self.daemon.health(), "SERVING")

    def test_key_is_never_logged(self):
        with self.daemon.channel() as ch:
            call_raw(ch, "/sluice.v1.Generation/GetModelInfo", auth("sk-leak-probe"))
        log = self.daemon.read_log()
        for secret in (KEY_A, KEY_B, "sk-leak-probe"):
            self.assertNotIn(secret, log)


class KeyReloadTest(unittest.TestCase):
    def test_sighup_swaps_keys_and_keeps_open_streams(self):
        tmp = tempfile.mkdtemp(prefix="sluice-reload-")
        keys = write(os.path.join(tmp, "keys"), KEY_A + "\n")
        with tl.Daemon(args=[f"--api_keys_file={keys}"]) as d, d.channel() as ch:
            stub = pb_grpc.GenerationStub(ch)
            stream = stub.GenerateStream(generate_request(max_tokens=400), metadata=auth(KEY_A), timeout=120)
            first = next(stream)
            self.assertTrue(first.token_ids)
            write(keys, KEY_B + "\n")
            d.signal(signal.SIGHUP)
            deadline = time.time() + 10
            while time.time() < deadline and call_raw(ch, "/sluice.v1.Generation/GetModelInfo", auth(KEY_B)) != grpc.StatusCode.OK:
                time.sleep(0.05)
            self.assertEqual(call_raw(ch, "/sluice.v1.Generation/GetModelInfo", auth(KEY_B)), grpc.StatusCode.OK)
            self.assertEqual(call_raw(ch, "/sluice.v1.Generation/GetModelInfo", auth(KEY_A)), grpc.StatusCode.UNAUTHENTICATED)
            # The stream opened with the old key runs to its end.
            tokens = len(first.token_ids) + sum(len(m.token_ids) for m in stream)
            self.assertEqual(tokens, 400)
            # A broken file keeps the keys in force.
            write(keys, "# nothing here\n")
            d.signal(signal.SIGHUP)
            time.sleep(0.5)
            self.assertEqual(call_raw(ch, "/sluice.v1.Generation/GetModelInfo", auth(KEY_B)), grpc.StatusCode.OK)
            self.assertIn("keeping the 1 keys in force", d.read_log())


def read(path):
    with open(path, "rb") as f:
        return f.read()


class TlsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pki = tl.make_pki(tempfile.mkdtemp(prefix="sluice-pki-"))

    def health_over_tls(self, d, **creds):
        credentials = grpc.ssl_channel_credentials(root_certificates=read(self.pki["ca.pem"]), **creds)
        with d.channel(credentials) as ch:
            return d.health(channel=ch)

    def start_tls(self, extra=()):
        d = tl.Daemon(args=[f"--tls_cert={self.pki['server.pem']}", f"--tls_key={self.pki['server.key']}", *extra])
        d.start(wait_serving=False)
        deadline = time.time() + 60
        while time.time() < deadline and self.health_over_tls(
                d, private_key=read(self.pki["client.key"]), certificate_chain=read(self.pki["client.pem"])) != "SERVING":
            time.sleep(0.1)
        return d

    def test_tls_serves_and_plaintext_is_refused(self):
        d = self.start_tls()
        try:
            self.assertEqual(self.health_over_tls(d), "SERVING")
            credentials = grpc.ssl_channel_credentials(root_certificates=read(self.pki["ca.pem"]))
            with d.channel(credentials) as ch:
                resp = pb_grpc.GenerationStub(ch).Generate(generate_request(), timeout=30)
                self.assertEqual(len(resp.token_ids), 4)
            self.assertIsNone(d.health())  # a plaintext client cannot talk to a TLS port
            # /metrics stays plaintext on loopback (see server/metrics.h).
            self.assertIn("sluice_num_requests_running", d.metrics_text())
        finally:
            self.assertEqual(d.stop(), 0)

    def test_mutual_tls_requires_a_client_certificate(self):
        d = self.start_tls([f"--tls_client_ca={self.pki['ca.pem']}"])
        try:
            self.assertIsNone(self.health_over_tls(d))
            self.assertEqual(self.health_over_tls(d, private_key=read(self.pki["client.key"]),
                                                  certificate_chain=read(self.pki["client.pem"])), "SERVING")
        finally:
            self.assertEqual(d.stop(), 0)


class DrainTest(unittest.TestCase):
    def test_grace_then_refuse_then_finish_in_flight(self):
        with tl.Daemon(args=["--drain_grace_s=2", "--drain_timeout_s=60"]) as d, d.channel() as ch:
            stub = pb_grpc.GenerationStub(ch)
            stream = stub.GenerateStream(generate_request(max_tokens=300), timeout=120)
            first = next(stream)
            d.signal(signal.SIGTERM)
            time.sleep(0.3)
            for service in ("", "sluice.v1.Generation"):
                self.assertEqual(d.health(service), "NOT_SERVING", service)
            # Inside the grace new work is still accepted...
            self.assertEqual(len(stub.Generate(generate_request(), timeout=30).token_ids), 4)
            time.sleep(2.2)
            # ...after it, refused with UNAVAILABLE.
            with self.assertRaises(grpc.RpcError) as e:
                stub.Generate(generate_request(), timeout=30)
            self.assertEqual(e.exception.code(), grpc.StatusCode.UNAVAILABLE)
            tokens = len(first.token_ids) + sum(len(m.token_ids) for m in stream)
            self.assertEqual(tokens, 300)
            self.assertEqual(d.proc.wait(60), 0)

    def test_second_sigterm_skips_the_grace_and_timeout_ends_leftovers(self):
        with tl.Daemon(args=["--drain_grace_s=120", "--drain_timeout_s=1", "--max_num_seqs=1"]) as d, d.channel() as ch:
            stub = pb_grpc.GenerationStub(ch)
            # Far more tokens than fit in the drain timeout.
            stream = stub.GenerateStream(generate_request(max_tokens=2000), timeout=120)
            next(stream)
            start = time.time()
            d.signal(signal.SIGTERM)
            time.sleep(0.3)
            d.signal(signal.SIGTERM)
            with self.assertRaises(grpc.RpcError) as e:
                for _ in stream:
                    pass
            self.assertEqual(e.exception.code(), grpc.StatusCode.UNAVAILABLE)
            self.assertIn("shut down", e.exception.details())
            self.assertEqual(d.proc.wait(30), 0)
            self.assertLess(time.time() - start, 20)


class StartupFailureTest(unittest.TestCase):
    def run_sluiced(self, *args):
        cmd = [os.path.join(tl.BIN_DIR, "sluiced"), "--listen=127.0.0.1:0", "--metrics_listen=", "--http_listen=", *args]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        lines = [l for l in p.stderr.splitlines() if l.startswith("sluiced:")]
        return p.returncode, lines

    def assertFailsNaming(self, flag_and_value, *args):
        rc, lines = self.run_sluiced(*args)
        self.assertNotEqual(rc, 0, lines)
        self.assertTrue(lines, "no error line")
        self.assertIn(flag_and_value, lines[-1])

    def test_failures_name_the_flag(self):
        tmp = tempfile.mkdtemp(prefix="sluice-start-")
        self.assertFailsNaming(f"--model={tmp}/missing", f"--model={tmp}/missing")
        self.assertFailsNaming(f"--model={tmp}", f"--model={tmp}")
        self.assertFailsNaming("--kv_cache_memory=1000000000000000", "--kv_cache_memory=1000000000000000")
        self.assertFailsNaming("kv_cache_memory", "--kv_cache_memory=4096")
        self.assertFailsNaming("--kv_cache_dtype=f16", "--kv_cache_dtype=f16")
        self.assertFailsNaming(f"--tls_cert={tmp}/none.pem", f"--tls_cert={tmp}/none.pem", f"--tls_key={tmp}/none.key")
        self.assertFailsNaming("--tls_cert and --tls_key", f"--tls_cert={tmp}/x.pem")
        self.assertFailsNaming(f"--api_keys_file={tmp}/nokeys", f"--api_keys_file={tmp}/nokeys")
        empty = write(os.path.join(tmp, "empty"), "# no keys\n")
        self.assertFailsNaming(f"--api_keys_file={empty}", f"--api_keys_file={empty}")
        self.assertFailsNaming("--expert_metrics", "--expert_metrics=top:0")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            port = s.getsockname()[1]
            self.assertFailsNaming(f"--listen=127.0.0.1:{port}", f"--listen=127.0.0.1:{port}")
            self.assertFailsNaming(f"--metrics_listen=127.0.0.1:{port}", f"--metrics_listen=127.0.0.1:{port}")

    def test_open_bind_without_tls_or_keys_warns(self):
        d = tl.Daemon(args=["--listen=0.0.0.0:0"], metrics=False)
        # The Daemon helper passes --listen=127.0.0.1:0 first; the later flag wins.
        with d:
            self.assertIn("warning: --listen=0.0.0.0:0", d.read_log())


class LimitsTest(unittest.TestCase):
    def test_each_limit_names_itself(self):
        args = ["--max_prompt_tokens=8", "--max_output_tokens=16", "--max_stop_strings=2", "--max_stop_string_bytes=4",
                "--max_logprobs=3", "--max_message_bytes=4096"]
        cases = [
            (pb.GenerateRequest(tokens=pb.TokenIds(ids=list(range(1, 10)))), "--max_prompt_tokens=8"),
            (generate_request(max_tokens=17), "--max_output_tokens=16"),
            (pb.GenerateRequest(text=b"hi", stopping=pb.StoppingCriteria(max_tokens=2, stop=["a", "b", "c"])),
             "--max_stop_strings=2"),
            (pb.GenerateRequest(text=b"hi", stopping=pb.StoppingCriteria(max_tokens=2, stop=["abcde"])),
             "--max_stop_string_bytes=4"),
            (generate_request(logprobs=pb.LogprobsOptions(top_n=4)), "--max_logprobs=3"),
        ]
        with tl.Daemon(args=args) as d, d.channel() as ch:
            stub = pb_grpc.GenerationStub(ch)
            for request, limit in cases:
                with self.assertRaises(grpc.RpcError) as e:
                    stub.Generate(request, timeout=30)
                self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT, limit)
                self.assertIn(limit, e.exception.details())
            with self.assertRaises(grpc.RpcError) as e:
                stub.Generate(pb.GenerateRequest(text=b"x" * 5000), timeout=30)
            self.assertEqual(e.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
            self.assertEqual(tl.metric_value(d.metrics(), "sluice_request_rejected_total", reason="invalid"), len(cases))


if __name__ == "__main__":
    unittest.main(verbosity=2)
