"""Starts sluiced from the built image with `buildah run` and checks it from outside.

    container_test.py --image localhost/sluice:latest [--buildah "scripts/container.sh buildah"]

What it checks, against the real daemon in the real image:
  - the image's config: a non-root USER, EXPOSE 50051 and 9464, a HEALTHCHECK, the entrypoint;
  - the entrypoint turns SLUICE_* variables into flags (the test moves both ports to free
    loopback ports and sets the drain grace to 0 through them, so the daemon answering on
    those ports at all proves it), and execs sluiced (no shell left above it), which runs
    as the image's non-root user;
  - health turns SERVING (Python client, from outside the container), the image's own
    HEALTHCHECK command exits 0 inside it, /metrics answers, and one Generate returns
    the tokens it was asked for;
  - SIGTERM to sluiced (what `docker stop` sends the container's main process) makes it
    drain and exit 0, and `buildah run` reports that 0.
The Python client is sluice_client when the venv has it, else raw stubs from proto/.
Prints one JSON line of figures at the end.
"""

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "python"))
import sluice_testlib as lib  # noqa: E402

PROMPT = "The sluice gate"
MAX_TOKENS = 8


class Fail(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Fail(what)
    print(f"ok: {what}", flush=True)


class PythonClient:
    """sluice_client if installed, else the generated stubs: the same three calls."""

    def __init__(self, address):
        try:
            import sluice_client
        except ImportError:
            sluice_client = None
        self.address = address
        if sluice_client is not None:
            self.kind = "sluice_client"
            self._client = sluice_client.Client(address, api_key="", timeout=30)
        else:
            import grpc
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            self.kind = "grpc stubs (tests/python/sluice_testlib.stubs)"
            self._pb, pb_grpc = lib.stubs()
            self._health_pb2 = health_pb2
            self._channel = grpc.insecure_channel(address)
            self._stub = pb_grpc.GenerationStub(self._channel)
            self._health = health_pb2_grpc.HealthStub(self._channel)

    def health(self):
        """"SERVING", "NOT_SERVING", or the error while the port does not answer yet."""
        try:
            if self.kind == "sluice_client":
                return self._client.health(timeout=2)
            resp = self._health.Check(self._health_pb2.HealthCheckRequest(service=""), timeout=2)
            return self._health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
        except Exception as e:  # connection refused while the daemon starts
            return f"error: {type(e).__name__}"

    def generate(self, prompt, max_tokens):
        """(token_ids, text, finish_reason, prompt_tokens, completion_tokens)"""
        if self.kind == "sluice_client":
            r = self._client.generate(prompt, max_tokens=max_tokens, ignore_eos=True)
            return list(r.token_ids), r.text, r.finish_reason, r.usage.prompt_tokens, r.usage.completion_tokens
        pb = self._pb
        req = pb.GenerateRequest(text=prompt.encode(), stopping=pb.StoppingCriteria(max_tokens=max_tokens,
                                                                                    ignore_eos=True))
        r = self._stub.Generate(req, timeout=30)
        reason = pb.FinishReason.Name(r.finish_reason).lower().replace("finish_reason_", "")
        return list(r.token_ids), r.text, reason, r.usage.prompt_tokens, r.usage.completion_tokens

    def close(self):
        (self._client if self.kind == "sluice_client" else self._channel).close()


def descendants(pid):
    """Every process below pid (from /proc's PPid fields: Go's buildah forks from any thread)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(status_field(int(entry), "PPid")[0])
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        out += kids
        todo += kids
    return out


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def status_field(pid, name):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].split()
    return []


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", required=True)
    ap.add_argument("--buildah", default=os.path.join(SOURCE_DIR, "scripts", "container.sh") + " buildah",
                    help="buildah command line with its storage flags")
    ap.add_argument("--start_timeout_s", type=float, default=180)
    args = ap.parse_args()
    buildah = shlex.split(args.buildah)
    t0 = time.monotonic()
    figures = {"image": args.image}

    def bh(*a, **kw):
        return subprocess.run(buildah + list(a), check=True, capture_output=True, text=True, **kw).stdout

    info = json.loads(bh("inspect", "--type", "image", args.image))
    config = (info.get("Docker") or {}).get("config") or {}
    listed = json.loads(bh("images", "--json", args.image))
    figures["image_size"] = listed[0]["size"] if listed else None
    check(config.get("User") not in (None, "", "0", "root", "0:0") and not config["User"].startswith("0:"),
          f"image USER is not root ({config.get('User')!r})")
    check({"50051/tcp", "9464/tcp"} <= set(config.get("ExposedPorts") or {}),
          f"image EXPOSEs 50051 and 9464 ({sorted(config.get('ExposedPorts') or {})})")
    healthcheck = (config.get("Healthcheck") or {}).get("Test") or []
    check(healthcheck[:1] in (["CMD"], ["CMD-SHELL"]) and len(healthcheck) > 1,
          f"image declares a HEALTHCHECK ({healthcheck})")
    entrypoint = config.get("Entrypoint") or []
    check(bool(entrypoint), f"image has an ENTRYPOINT ({entrypoint})")
    uid = config["User"].split(":")[0]

    grpc_port, metrics_port = lib.free_port(), lib.free_port()
    while metrics_port == grpc_port:
        metrics_port = lib.free_port()
    env = {
        # Loopback only on this machine: the image's default is 0.0.0.0.
        "SLUICE_LISTEN": f"127.0.0.1:{grpc_port}",
        "SLUICE_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
        "SLUICE_DRAIN_GRACE_S": "0",
        "SLUICE_THREADS": "2",
        "SLUICE_KV_CACHE_MEMORY": str(32 << 20),
    }
    name = f"sluice-container-test-{os.getpid()}"
    ctr = bh("from", "--pull=never", "--name", name, args.image).strip()
    proc = None
    client = None
    log_path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"{name}.log")
    log = open(log_path, "w+")
    try:
        # A daemon with the OpenAI-compatible HTTP server listens on 127.0.0.1:8000 unless
        # told otherwise: on the host's network that port may be taken, so move it too.
        helpfull = subprocess.run(buildah + ["run", "--isolation", "chroot", ctr, "--", "/usr/local/bin/sluiced",
                                             "--helpfull"], capture_output=True, text=True, timeout=60).stdout
        http_port = None
        if "--http_listen" in helpfull:
            http_port = lib.free_port()
            while http_port in (grpc_port, metrics_port):
                http_port = lib.free_port()
            env["SLUICE_HTTP_LISTEN"] = f"127.0.0.1:{http_port}"
        # Any other flag goes through SLUICE_EXTRA_ARGS; /metrics shows this one.
        env["SLUICE_EXTRA_ARGS"] = "--served_model_name=container-test --max_queue=64"
        env_args = [a for k, v in env.items() for a in ("--env", f"{k}={v}")]
        started = time.monotonic()
        # The image's ENTRYPOINT, as `docker run` would start it; buildah run does not
        # apply ENTRYPOINT itself. Chroot isolation shares the host's network.
        proc = subprocess.Popen(buildah + ["run", "--isolation", "chroot", "--network", "host", *env_args, ctr,
                                           "--", *entrypoint], stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=lib.die_with_parent)
        client = PythonClient(f"127.0.0.1:{grpc_port}")
        figures["python_client"] = client.kind
        print(f"python client: {client.kind}", flush=True)
        status = ""
        deadline = time.monotonic() + args.start_timeout_s
        while time.monotonic() < deadline and proc.poll() is None:
            status = client.health()
            if status == "SERVING":
                break
            time.sleep(0.25)
        if status != "SERVING":
            log.seek(0)
            sys.stdout.write(log.read()[-4000:])
        check(status == "SERVING", f"health SERVING on 127.0.0.1:{grpc_port} from outside the container "
                                   f"(last: {status}; buildah run rc {proc.poll()})")
        figures["start_to_serving_s"] = round(time.monotonic() - started, 2)

        daemons = [p for p in descendants(proc.pid) if comm(p) == "sluiced"]
        check(len(daemons) == 1, f"one sluiced process under buildah run ({daemons})")
        daemon = daemons[0]
        parent = int(status_field(daemon, "PPid")[0])
        check(comm(parent) not in ("sh", "dash", "bash"),
              f"the entrypoint exec'd sluiced (no shell above it; its parent: {comm(parent)!r})")
        uids = status_field(daemon, "Uid")
        check(uids and all(u == uid for u in uids), f"sluiced runs as uid {uid} (Uid: {' '.join(uids)})")

        ids, text, reason, prompt_tokens, completion_tokens = client.generate(PROMPT, MAX_TOKENS)
        check(len(ids) == MAX_TOKENS and completion_tokens == MAX_TOKENS and reason == "length",
              f"Generate returned {MAX_TOKENS} tokens, finish_reason length ({len(ids)}, {completion_tokens}, "
              f"{reason})")
        check(prompt_tokens > 0 and isinstance(text, str) and text != "",
              f"Generate: {prompt_tokens} prompt tokens, text {text!r}")
        again = client.generate(PROMPT, MAX_TOKENS)[0]
        check(again == ids, "a second greedy Generate returns the same tokens")

        hc = subprocess.run(buildah + ["run", "--isolation", "chroot", "--network", "host", *env_args, ctr, "--",
                                       *healthcheck[1:]], capture_output=True, text=True, timeout=60)
        check(hc.returncode == 0 and "SERVING" in hc.stdout,
              f"the image's HEALTHCHECK {healthcheck[1:]} exits 0 inside the container "
              f"(rc {hc.returncode}: {hc.stdout.strip()} {hc.stderr.strip()[-300:]})")

        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        samples = lib.parse_metrics(metrics)
        requests = sum(v for (n, _), v in samples.items() if n == "sluice_request_success_total")
        check(requests >= 2, f"/metrics on 127.0.0.1:{metrics_port} counts the 2 requests ({requests})")
        names = {dict(labels).get("model_name") for (n, labels) in samples if n == "sluice_request_success_total"}
        check(names == {"container-test"}, f"SLUICE_EXTRA_ARGS reached sluiced (model_name labels {names})")
        if http_port is not None:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/health", timeout=10) as r:
                check(r.status == 200, f"HTTP /health on 127.0.0.1:{http_port} answers 200 ({r.status})")

        client.close()
        client = None
        stop = time.monotonic()
        os.kill(daemon, signal.SIGTERM)
        try:
            rc = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            rc = None
        figures["sigterm_to_exit_s"] = round(time.monotonic() - stop, 2)
        log.seek(0)
        output = log.read()
        check(rc == 0, f"SIGTERM: sluiced exited and buildah run reported 0 (rc {rc})")
        figures["total_s"] = round(time.monotonic() - t0, 1)
        print("daemon output (tail):\n  " + "\n  ".join(output.strip().splitlines()[-6:]))
        print(json.dumps(figures))
        return 0
    except Fail as e:
        print(f"FAIL: {e}", flush=True)
        log.seek(0)
        print("daemon output (tail):\n" + log.read()[-3000:])
        return 1
    finally:
        if client is not None:
            client.close()
        if proc is not None and proc.poll() is None:
            for p in [d for d in descendants(proc.pid) if comm(d) == "sluiced"]:
                os.kill(p, signal.SIGKILL)
            proc.kill()
            proc.wait()
        subprocess.run(buildah + ["rm", ctr], capture_output=True)
        log.close()
        os.unlink(log_path)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Fail as e:  # the image checks before the daemon starts
        print(f"FAIL: {e}", flush=True)
        sys.exit(1)
