"""Shared helpers for the Python tests that drive the real sluiced over loopback.

The tests run in the virtual environment scripts/setup-venv.sh creates (grpcio,
grpcio-tools, grpcio-health-checking). CTest passes the locations through the
environment: SLUICE_BIN_DIR (built binaries), SLUICE_SOURCE_DIR (the checkout) and
SLUICE_TEST_DATA_DIR (tests/data).
"""

import faulthandler
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

SOURCE_DIR = os.environ.get("SLUICE_SOURCE_DIR", os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
BIN_DIR = os.environ.get("SLUICE_BIN_DIR", os.path.join(SOURCE_DIR, "build", "release", "bin"))
TEST_DATA_DIR = os.environ.get("SLUICE_TEST_DATA_DIR", os.path.join(SOURCE_DIR, "tests", "data"))
DEMO_MODEL = os.path.join(SOURCE_DIR, "deploy", "models", "sluice-tiny")

_stub_dir = None


def _arm_watchdog():
    """Prints every thread's stack and exits 15 s before CTest's timeout would kill the test.

    CTest passes the test's TIMEOUT as SLUICE_TEST_TIMEOUT. A hang then ends with the stack
    that hung (and the test's daemons, started with die_with_parent, die with it) instead of
    a bare "Timeout" and no clue.
    """
    try:
        limit = float(os.environ.get("SLUICE_TEST_TIMEOUT", "0"))
    except ValueError:
        return
    if limit > 30:
        faulthandler.dump_traceback_later(limit - 15, exit=True)


_arm_watchdog()


def stubs():
    """Generates the Python stubs of proto/ once per process and imports them.

    Returns (generation_pb2, generation_pb2_grpc). Stubs are never committed: they are
    made from the same .proto files the daemon is built from.
    """
    global _stub_dir
    if _stub_dir is None:
        from grpc_tools import protoc  # from the venv

        _stub_dir = tempfile.mkdtemp(prefix="sluice-stubs-")
        proto_root = os.path.join(SOURCE_DIR, "proto")
        include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
        rc = protoc.main(["protoc", f"-I{proto_root}", f"-I{include}", f"--python_out={_stub_dir}",
                          f"--grpc_python_out={_stub_dir}", os.path.join(proto_root, "sluice", "v1", "generation.proto")])
        if rc != 0:
            raise RuntimeError("grpc_tools.protoc failed on proto/sluice/v1/generation.proto")
        sys.path.insert(0, _stub_dir)
    from sluice.v1 import generation_pb2, generation_pb2_grpc  # noqa: E402

    return generation_pb2, generation_pb2_grpc


def die_with_parent():
    """preexec_fn for Popen: the child gets SIGKILL when the thread that started it dies
    (e.g. ctest killing a test that ran over its TIMEOUT), so no daemon outlives its test.
    Start such children from the main thread."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def make_pki(directory):
    """A CA, and a server (127.0.0.1, localhost) and a client certificate it signed, made
    by openssl in `directory`. Returns {file name: path} (ca.pem, server.pem, server.key,
    client.pem, client.key, ...)."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, cwd=directory, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=sluice test CA")
    with open(os.path.join(directory, "san.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN=sluice test {name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", "san.ext")
    return {n: os.path.join(directory, n) for n in os.listdir(directory)}


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid):
    """Resident set size of a process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """Prometheus text exposition → {(name, frozenset(labels.items())): value}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = frozenset(_LABEL.findall(m.group(3) or ""))
        out[(m.group(1), labels)] = float(m.group(4))
    return out


def metric_value(samples, name, **labels):
    """Sum of the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, l), v in samples.items() if n == name and want <= set(l))


class Daemon:
    """A real sluiced on ephemeral loopback ports. Use as a context manager.

    `args` are extra sluiced flags. `metrics=True` picks a metrics port too.
    """

    def __init__(self, model_dir=DEMO_MODEL, args=(), metrics=True, env=None, die_with_parent=False):
        self.model_dir = model_dir
        self.die_with_parent = die_with_parent  # SIGKILL it if the test process dies (see die_with_parent())
        self.extra = list(args)
        self.want_metrics = metrics
        self.env = env
        self.proc = None
        self.port = None
        self.metrics_port = None
        self.http_port = None  # the OpenAI-compatible HTTP server's (an ephemeral port unless args say otherwise)
        self.dir = tempfile.mkdtemp(prefix="sluice-daemon-")
        self.log_path = os.path.join(self.dir, "sluiced.log")

    def start(self, wait_serving=True, timeout=120):
        port_file = os.path.join(self.dir, "port")
        http_port_file = os.path.join(self.dir, "http_port")
        args = [os.path.join(BIN_DIR, "sluiced"), f"--model={self.model_dir}", "--listen=127.0.0.1:0",
                f"--port_file={port_file}", "--threads=2", "--kv_cache_memory=16777216",
                "--http_listen=127.0.0.1:0", f"--http_port_file={http_port_file}"]
        if self.want_metrics:
            self.metrics_port = free_port()
            args.append(f"--metrics_listen=127.0.0.1:{self.metrics_port}")
        else:
            args.append("--metrics_listen=")
        args += self.extra
        env = dict(os.environ)
        env.setdefault("OMP_WAIT_POLICY", "passive")
        if self.env:
            env.update(self.env)
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     preexec_fn=die_with_parent if self.die_with_parent else None)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sluiced exited with {self.proc.returncode}:\n{self.read_log()}")
            try:
                with open(port_file) as f:
                    self.port = int(f.read().strip())
                break
            except (OSError, ValueError):
                time.sleep(0.05)
        if self.port is None:
            raise RuntimeError(f"sluiced did not report its port:\n{self.read_log()}")
        try:  # written before the gRPC port; absent when args disabled HTTP (--http_listen=)
            with open(http_port_file) as f:
                self.http_port = int(f.read().strip())
        except (OSError, ValueError):
            self.http_port = None
        if wait_serving:
            self.wait_serving(deadline - time.time())
        return self

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def read_log(self):
        try:
            with open(self.log_path) as f:
                return f.read()
        except OSError:
            return ""

    def channel(self, credentials=None, options=()):
        import grpc

        if credentials is not None:
            return grpc.secure_channel(self.address, credentials, options=list(options))
        return grpc.insecure_channel(self.address, options=list(options))

    def health(self, service="", channel=None):
        """grpc.health.v1 status name ('SERVING', 'NOT_SERVING', ...) or None on error."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        ch = channel or self.channel()
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
        except grpc.RpcError:
            return None
        finally:
            if channel is None:
                ch.close()

    def wait_serving(self, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sluiced exited with {self.proc.returncode}:\n{self.read_log()}")
            if self.health() == "SERVING":
                return
            time.sleep(0.05)
        raise RuntimeError(f"sluiced did not become SERVING:\n{self.read_log()}")

    def metrics_text(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            return r.read().decode()

    def metrics(self):
        return parse_metrics(self.metrics_text())

    def signal(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)

    def stop(self, timeout=60):
        """SIGTERM, then the exit code (killed and -9 after `timeout`)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.log.close()
                return -9
        self.log.close()
        return self.proc.returncode

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        if exc[0] is not None:
            sys.stderr.write(f"--- sluiced log ---\n{self.read_log()}\n")
        return False


def sluiced_flags():
    """Names of the flags this sluiced build accepts (from --helpfull), e.g. {"listen", ...}."""
    out = subprocess.run([os.path.join(BIN_DIR, "sluiced"), "--helpfull"], capture_output=True, text=True,
                         timeout=30)
    return set(re.findall(r"^\s+--([a-zA-Z0-9_]+) \(", out.stdout + out.stderr, re.MULTILINE))


PROMETHEUS_BIN = os.environ.get("SLUICE_PROMETHEUS", "/usr/bin/prometheus")


class PrometheusError(RuntimeError):
    """A Prometheus HTTP API call that answered an error (bad PromQL, ...)."""


class Prometheus:
    """A real Prometheus server on a free loopback port, scraping the given targets.

    `targets` maps a job name to a list of HOST:PORT addresses (e.g. Daemon.metrics_port
    on 127.0.0.1). Its TSDB lives in a temporary directory. Use as a context manager.
    """

    def __init__(self, targets, scrape_interval="1s", binary=PROMETHEUS_BIN):
        self.targets = {job: list(addrs) for job, addrs in targets.items()}
        self.scrape_interval = scrape_interval
        self.binary = binary
        self.proc = None
        self.port = None
        self.started_at = None
        self.dir = tempfile.mkdtemp(prefix="sluice-prometheus-")
        self.config_path = os.path.join(self.dir, "prometheus.yml")
        self.log_path = os.path.join(self.dir, "prometheus.log")

    def config_text(self):
        """Same layout as deploy/prometheus/prometheus.yml, with the test's interval and targets."""
        lines = ["global:", f"  scrape_interval: {self.scrape_interval}", f"  scrape_timeout: {self.scrape_interval}",
                 f"  evaluation_interval: {self.scrape_interval}", "", "scrape_configs:"]
        for job, addrs in self.targets.items():
            lines += [f"  - job_name: {job}", "    metrics_path: /metrics", "    scheme: http", "    static_configs:",
                      "      - targets: [" + ", ".join(f'"{a}"' for a in addrs) + "]"]
        return "\n".join(lines) + "\n"

    def start(self, timeout=60):
        if not os.access(self.binary, os.X_OK):
            raise RuntimeError(f"no Prometheus at {self.binary}: install Debian's `prometheus` package "
                               "(scripts/install-deps.sh does) or set SLUICE_PROMETHEUS")
        with open(self.config_path, "w") as f:
            f.write(self.config_text())
        self.port = free_port()
        self.log = open(self.log_path, "w")
        self.started_at = time.time()
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={self.config_path}", f"--storage.tsdb.path={os.path.join(self.dir, 'data')}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}:\n{self.read_log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"prometheus did not become ready in {timeout} s:\n{self.read_log()}")

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def read_log(self):
        try:
            with open(self.log_path) as f:
                return f.read()
        except OSError:
            return ""

    def api(self, path, params=None, timeout=10):
        """GET /api/v1/<path>?<params>; returns `data`, raises PrometheusError on an error answer."""
        import json
        import urllib.error
        import urllib.parse

        query = "?" + urllib.parse.urlencode(params, doseq=True) if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=timeout) as r:
                answer = json.loads(r.read().decode())
        except urllib.error.HTTPError as e:
            try:
                answer = json.loads(e.read().decode())
            except ValueError:
                raise PrometheusError(f"/api/v1/{path}: HTTP {e.code}") from None
        if answer.get("status") != "success":
            raise PrometheusError(f"{answer.get('errorType', '?')}: {answer.get('error', answer)}")
        return answer["data"]

    def query(self, promql, at=None):
        """Instant query → list of (labels dict, float value); a scalar result is one entry with {}."""
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", params)
        if data["resultType"] == "vector":
            return [(s["metric"], float(s["value"][1])) for s in data["result"]]
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        raise PrometheusError(f"unexpected result type {data['resultType']} for {promql}")

    def value(self, promql):
        """The single value of an instant query, None when the result is empty."""
        result = self.query(promql)
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusError(f"{len(result)} series for {promql} (expected one): {result}")
        return result[0][1]

    def label_values(self, label, match=None):
        return self.api(f"label/{label}/values", {"match[]": match} if match else None)

    def target_health(self):
        """{(job, address): "up"|"down"|"unknown"} of the active targets."""
        data = self.api("targets", {"state": "active"})
        return {(t["labels"].get("job"), t["labels"].get("instance")): t["health"] for t in data["activeTargets"]}

    def wait_targets_up(self, timeout=60):
        """Until every configured target was scraped successfully (discovery alone takes ~5 s)."""
        want = {(job, a) for job, addrs in self.targets.items() for a in addrs}
        deadline = time.time() + timeout
        health = {}
        while time.time() < deadline:
            health = self.target_health()
            if all(health.get(t) == "up" for t in want):
                return
            time.sleep(0.2)
        raise RuntimeError(f"prometheus targets not up after {timeout} s: {health}\n{self.read_log()}")

    def wait_scrape_after(self, t, timeout=30):
        """Until every target has a successful scrape that started after Unix time `t`."""
        deadline = time.time() + timeout
        seen = []
        while time.time() < deadline:
            seen = self.query("timestamp(up == 1)")
            jobs = {s["job"] for s, ts in seen if ts > t}
            if jobs >= set(self.targets):
                return
            time.sleep(0.2)
        raise RuntimeError(f"no scrape of every target after t={t:.3f} within {timeout} s: {seen}")

    def stop(self, timeout=20):
        """SIGTERM (SIGKILL after `timeout`), then removes the TSDB; the config and log stay."""
        import shutil

        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(os.path.join(self.dir, "data"), ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        if exc[0] is not None:
            sys.stderr.write(f"--- prometheus log ---\n{self.read_log()}\n")
        return False
