"""sluice-loadgen against the real sluiced (embedded demo model, API keys on).

- Closed loop at 1 and 2 streams with a budget mix whose skip_ratio element the demo llama
  refuses (FAILED_PRECONDITION): counts add up (completed + errors + unfinished == issued,
  per level and per budget, and the budgets sum to the totals), errors are counted by code,
  the refused budget's latency figures are absent, never more requests in flight than
  streams, every completed request brought max_tokens tokens, generous goodput targets
  count every completed request as good, and the daemon's own counters agree.
- Poisson arrivals at 2 requests/s, twice with the same seed but very different output
  lengths: the same requests are offered (open loop: arrivals do not wait for completions);
  an unreachable TTFT target makes goodput 0.
- A wrong API key: every request UNAUTHENTICATED, all latency figures absent, the window
  capped by --max_requests; without --vocab the tool cannot read the model and exits 2.
- No NaN anywhere (JSON or table), usage errors exit 1, and plot_loadgen.py draws each
  report as a 1200 x 800 PNG.
- --tls_ca against a TLS port; plaintext against it gets no model info (exit 2).
"""

import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import time
import unittest

import sluice_testlib as tl

KEY = "sk-loadgen-test-0123456789"
LOADGEN = os.path.join(tl.BIN_DIR, "sluice-loadgen")
PLOT = os.path.join(tl.SOURCE_DIR, "clients", "loadgen", "plot_loadgen.py")
MAX_TOKENS = 16
MIX = "0.6:dense,0.25:skip_layers=1-2,0.15:skip_ratio=0.5"
LATENCIES = ("ttft_ms", "itl_ms", "e2e_ms")


def _no_constants(name):
    raise AssertionError(f"the JSON holds {name}")


def counters(daemon):
    m = daemon.metrics()
    return {
        "length": tl.metric_value(m, "sluice_request_success_total", finished_reason="length"),
        "invalid": tl.metric_value(m, "sluice_request_rejected_total", reason="invalid"),
        "unauthenticated": tl.metric_value(m, "sluice_request_rejected_total", reason="unauthenticated"),
    }


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def populations(level):
    """The measured requests, and those started in the warm-up (both reach the daemon)."""
    return [level["requests"], level["warmup"]["requests"]]


class LoadgenTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.access(LOADGEN, os.X_OK):
            raise RuntimeError(f"no {LOADGEN}: build the sluice-loadgen target")
        cls.tmp = tempfile.mkdtemp(prefix="sluice-loadgen-")
        keys = os.path.join(cls.tmp, "keys")
        with open(keys, "w") as f:
            f.write(KEY + "\n")
        cls.daemon = tl.Daemon(args=[f"--api_keys_file={keys}"], die_with_parent=True).start()
        cls.deltas = {}
        cls.runs = {}
        try:
            cls.run_phase("closed", ["--mode=closed", "--streams=1,2", "--seconds=3", "--warmup_seconds=0.5",
                                     "--prompt_tokens=uniform:4:48", f"--max_tokens={MAX_TOKENS}",
                                     f"--budget_mix={MIX}", "--goodput=ttft=30,itl=10,e2e=60", "--seed=7",
                                     f"--api_key={KEY}", "--progress"])
            poisson = ["--mode=poisson", "--rates=2", "--seconds=3", "--warmup_seconds=0.5",
                       "--prompt_tokens=normal:24:8", "--seed=11", "--goodput=ttft=0.000001", f"--api_key={KEY}"]
            cls.run_phase("poisson_short", poisson + ["--max_tokens=uniform:2:6"])
            # Each request ~1,500 tokens: far longer than the 0.5 s mean gap between arrivals.
            cls.run_phase("poisson_long", poisson + ["--max_tokens=1500", "--drain_seconds=0"])
            cls.run_phase("bad_key", ["--streams=2", "--seconds=5", "--max_requests=40", "--api_key=sk-wrong",
                                      "--vocab=512", "--goodput=e2e=10"])
        except BaseException:
            cls.daemon.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        assert cls.daemon.stop() == 0

    @classmethod
    def run_phase(cls, name, args):
        path = os.path.join(cls.tmp, f"{name}.json")
        before = counters(cls.daemon)
        proc = subprocess.run([LOADGEN, f"--server={cls.daemon.address}", f"--json={path}"] + args,
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise AssertionError(f"{name}: sluice-loadgen exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        with open(path) as f:
            report = json.load(f, parse_constant=_no_constants)
        # The daemon's counters once they settled (a request cancelled at the window end
        # is accounted a step later), before the next phase starts.
        after, deadline = counters(cls.daemon), time.time() + 5
        while time.time() < deadline:
            time.sleep(0.3)
            now = counters(cls.daemon)
            if now == after:
                break
            after = now
        cls.runs[name] = (proc, report, path)
        cls.deltas[name] = {k: after[k] - before[k] for k in after}

    def daemon_delta(self, name, key):
        """How much a daemon counter grew during phase `name`."""
        return self.deltas[name][key]

    # -- invariants every report must satisfy ------------------------------------------

    def check_figures(self, where, fig):
        req = fig["requests"]
        for k in ("issued", "completed", "errors", "unfinished"):
            self.assertGreaterEqual(req[k], 0, where)
        self.assertEqual(req["completed"] + req["errors"] + req["unfinished"], req["issued"], (where, req))
        self.assertEqual(sum(fig["errors_by_code"].values()), req["errors"], where)
        self.assertEqual(set(fig["error_examples"]), set(fig["errors_by_code"]), where)
        for code in fig["errors_by_code"]:
            self.assertRegex(code, r"^[A-Z_]+$", where)
            self.assertNotIn(code, ("OK",), where)
        for key in LATENCIES:
            s = fig[key]
            if s["count"] == 0:
                self.assertEqual(set(s), {"count"}, f"{where} {key}: an absent figure is left out")
            else:
                self.assertEqual(set(s), {"count", "mean", "p50", "p90", "p99", "max"}, (where, key))
                self.assertTrue(0 < s["p50"] <= s["p90"] <= s["p99"] <= s["max"], (where, key, s))
                self.assertLessEqual(s["mean"], s["max"], (where, key))
        self.assertLessEqual(fig["ttft_ms"]["count"], req["issued"], where)
        self.assertEqual(fig["e2e_ms"]["count"], req["completed"], where)
        for v in fig["throughput"].values():
            self.assertGreaterEqual(v, 0, where)
        if "goodput" in fig:
            self.assertLessEqual(fig["goodput"]["good"], req["completed"], where)

    def check_report(self, name):
        proc, report, _ = self.runs[name]
        self.assertIsNone(re.search(r"\bnan\b|\binf\b", proc.stdout, re.IGNORECASE), proc.stdout)
        self.assertIsNone(re.search(r"\bnan\b", json.dumps(report), re.IGNORECASE))
        self.assertEqual(report["tool"], "sluice-loadgen")
        for level in report["levels"]:
            where = f"{name} load {level['offered_load']}"
            self.check_figures(where, level)
            by_budget = level["by_budget"]
            self.assertEqual(len(by_budget), len(report["config"]["budget_mix"]), where)
            for b in by_budget:
                self.check_figures(f"{where} budget {b['budget']}", b)
            for k in ("issued", "completed", "errors", "unfinished"):
                self.assertEqual(sum(b["requests"][k] for b in by_budget), level["requests"][k], (where, k))
            codes = {}
            for b in by_budget:
                for c, n in b["errors_by_code"].items():
                    codes[c] = codes.get(c, 0) + n
            self.assertEqual(codes, level["errors_by_code"], where)
            for key in LATENCIES:
                self.assertEqual(sum(b[key]["count"] for b in by_budget), level[key]["count"], (where, key))
            w = level["warmup"]["requests"]
            self.assertEqual(w["completed"] + w["errors"] + w["unfinished"], w["issued"], where)
        return report

    # -- the phases ----------------------------------------------------------------------

    def test_closed_loop_with_budget_mix(self):
        report = self.check_report("closed")
        proc = self.runs["closed"][0]
        self.assertEqual([lv["streams"] for lv in report["levels"]], [1, 2])
        self.assertEqual(report["model"]["supported_budget_controls"], ["skip_layers"])
        self.assertIn("skip_ratio", proc.stderr)  # the warning that the model cannot honour it
        self.assertRegex(proc.stderr, r"streams 2 \(2/2\) \[[=> ]+\] measure")  # --progress
        total_fp = 0
        for level in report["levels"]:
            where = f"closed {level['streams']}"
            req = level["requests"]
            self.assertGreater(req["completed"], 0, where)
            self.assertEqual(set(level["errors_by_code"]), {"FAILED_PRECONDITION"}, where)
            self.assertIn("skip_ratio", level["error_examples"]["FAILED_PRECONDITION"])
            self.assertLessEqual(level["in_flight_max"], level["streams"], f"{where}: closed loop")
            self.assertGreaterEqual(level["in_flight_max"], 1, where)
            self.assertEqual(level["output_tokens"]["of_completed"], MAX_TOKENS * req["completed"], where)
            self.assertEqual(level["goodput"]["good"], req["completed"], f"{where}: generous targets")
            self.assertGreater(level["throughput"]["output_tokens_per_s"], 0, where)
            self.assertGreater(level["itl_ms"]["count"], 0, where)
            budgets = {b["budget"]: b for b in level["by_budget"]}
            self.assertEqual(set(budgets), {"dense", "skip_layers=1-2", "skip_ratio=0.5"})
            refused = budgets["skip_ratio=0.5"]
            self.assertEqual(refused["requests"]["errors"], refused["requests"]["issued"], where)
            self.assertGreater(refused["requests"]["issued"], 0, f"{where}: 15 % of the requests")
            for key in LATENCIES:
                self.assertEqual(refused[key], {"count": 0}, (where, key))
            self.assertEqual(refused["throughput"]["output_tokens_per_s"], 0, where)
            for name in ("dense", "skip_layers=1-2"):
                self.assertEqual(budgets[name]["errors_by_code"], {}, (where, name))
                self.assertGreater(budgets[name]["requests"]["completed"], 0, (where, name))
            for pop in (level["errors_by_code"], level["warmup"]["errors_by_code"]):
                total_fp += pop.get("FAILED_PRECONDITION", 0)
        # The daemon refused exactly those (FAILED_PRECONDITION is counted as "invalid") ...
        self.assertEqual(self.daemon_delta("closed", "invalid"), total_fp)
        # ... and finished at least the requests the tool saw complete (one it cancelled at
        # the window end may have finished there first, so at most those more).
        completed = sum(p["completed"] for lv in report["levels"] for p in populations(lv))
        unfinished = sum(p["unfinished"] for lv in report["levels"] for p in populations(lv))
        length = self.daemon_delta("closed", "length")
        self.assertGreaterEqual(length, completed)
        self.assertLessEqual(length, completed + unfinished)
        # The table: a header, a row per level and one per budget, errors named.
        lines = proc.stdout.splitlines()
        self.assertTrue(any(line.startswith("streams") for line in lines), proc.stdout)
        self.assertTrue(any(line.split()[:1] == ["2"] for line in lines), proc.stdout)
        self.assertIn("errors: FAILED_PRECONDITION", proc.stdout)
        row = next(line for line in lines if line.strip().startswith("skip_ratio=0.5"))
        self.assertGreaterEqual(row.count(" - "), 8, f"absent figures print as '-': {row}")

    def test_poisson_is_open_loop(self):
        short = self.check_report("poisson_short")
        long = self.check_report("poisson_long")
        for report in (short, long):
            self.assertEqual(report["mode"], "poisson")
            level = report["levels"][0]
            self.assertEqual(level["rate_per_s"], 2)
            self.assertEqual(level["dropped_arrivals"], 0)
            self.assertEqual(level["goodput"]["good"], 0, "a 1 us TTFT target is never met")
        a, b = short["levels"][0], long["levels"][0]
        # Same seed, same schedule: the same number of arrivals however long requests take.
        self.assertEqual(a["requests"]["issued"], b["requests"]["issued"])
        self.assertEqual(a["warmup"]["requests"]["issued"], b["warmup"]["requests"]["issued"])
        self.assertEqual(a["prompt_tokens"], b["prompt_tokens"], "same prompts")
        self.assertGreaterEqual(a["requests"]["issued"], 1)
        self.assertLessEqual(a["requests"]["issued"], 40)
        self.assertAlmostEqual(a["throughput"]["started_per_s"], a["requests"]["issued"] / a["window_s"])
        if a["requests"]["issued"] > 0:
            self.assertEqual(a["goodput"]["fraction"], 0)
        self.assertEqual(a["requests"]["errors"], 0)
        self.assertEqual(a["requests"]["completed"] + a["requests"]["unfinished"], a["requests"]["issued"])
        self.assertEqual(b["requests"]["errors"], 0)
        # A new arrival did not wait for the 1,500-token requests running before it.
        self.assertGreaterEqual(b["in_flight_max"], 2, b)

    def test_bad_key_counts_unauthenticated_and_leaves_figures_out(self):
        report = self.check_report("bad_key")
        proc = self.runs["bad_key"][0]
        self.assertNotIn("model", report, "GetModelInfo was refused too")
        level = report["levels"][0]
        self.assertEqual(level["requests"]["issued"], 40, "--max_requests caps the window")
        self.assertLess(level["window_s"], 5)
        self.assertEqual(level["errors_by_code"], {"UNAUTHENTICATED": 40})
        self.assertEqual(level["requests"]["completed"], 0)
        for key in LATENCIES:
            self.assertEqual(level[key], {"count": 0}, key)
        self.assertEqual(level["goodput"]["fraction"], 0)
        self.assertEqual(level["goodput"]["good"], 0)
        self.assertIn("UNAUTHENTICATED 40", proc.stdout)
        issued = sum(p["issued"] for p in populations(level))
        # Every request, and the tool's GetModelInfo, refused by the daemon's key check.
        self.assertEqual(self.daemon_delta("bad_key", "unauthenticated"), issued + 1)

    def test_no_vocab_without_model_info_exits_2(self):
        proc = subprocess.run([LOADGEN, f"--server={self.daemon.address}", "--api_key=sk-wrong", "--seconds=1"],
                              capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 2, proc.stderr)
        self.assertIn("UNAUTHENTICATED", proc.stderr)

    def test_usage_errors_exit_1(self):
        for bad in (["--mode=burst"], ["--streams=0"], ["--mode=poisson", "--rates=-1"],
                    ["--prompt_tokens=uniform:9:3"], ["--max_tokens=gamma:1:2"], ["--max_tokens=0"],
                    ["--budget_mix=0.5:dense,0.5:warp=9"], ["--budget_mix=dense"], ["--goodput=ttft=-1"],
                    ["--goodput=tpot=1"], ["--seconds=0"]):
            proc = subprocess.run([LOADGEN, "--server=127.0.0.1:1"] + bad, capture_output=True, text=True,
                                  timeout=30)
            self.assertEqual(proc.returncode, 1, (bad, proc.stderr))
            self.assertIn("sluice-loadgen:", proc.stderr, bad)

    def test_plot_writes_png(self):
        for name in ("closed", "poisson_short", "bad_key"):
            _, _, path = self.runs[name]
            out = os.path.join(self.tmp, f"{name}.png")
            proc = subprocess.run([sys.executable, PLOT, path, "-o", out], capture_output=True, text=True,
                                  timeout=120)
            self.assertEqual(proc.returncode, 0, proc.stderr)
            self.assertGreater(os.path.getsize(out), 10000, name)
            self.assertEqual(png_size(out), (1200, 800), name)
        proc = subprocess.run([sys.executable, PLOT, self.runs["closed"][2], "--budget", "no-such", "-o",
                               os.path.join(self.tmp, "x.png")], capture_output=True, text=True, timeout=120)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("no budget", proc.stderr)


class LoadgenTlsTest(unittest.TestCase):
    """--tls_ca: the tool talks to a TLS port, verifying the server against the CA."""

    def test_tls(self):
        pki = tempfile.mkdtemp(prefix="sluice-loadgen-pki-")

        def openssl(*args):
            subprocess.run(["openssl", *args], check=True, cwd=pki, capture_output=True, timeout=60)

        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
                "-subj", "/CN=sluice loadgen test CA")
        with open(os.path.join(pki, "san.ext"), "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj",
                "/CN=sluice loadgen test server")
        openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out",
                "server.pem", "-days", "2", "-extfile", "san.ext")
        import grpc

        with open(os.path.join(pki, "ca.pem"), "rb") as f:
            ca = f.read()
        d = tl.Daemon(args=[f"--tls_cert={pki}/server.pem", f"--tls_key={pki}/server.key"], die_with_parent=True)
        d.start(wait_serving=False)
        try:
            deadline = time.time() + 60
            with d.channel(grpc.ssl_channel_credentials(root_certificates=ca)) as ch:
                while d.health(channel=ch) != "SERVING":
                    self.assertLess(time.time(), deadline, "the TLS daemon did not become SERVING")
                    time.sleep(0.1)
            out = os.path.join(pki, "tls.json")
            proc = subprocess.run([LOADGEN, f"--server={d.address}", f"--tls_ca={pki}/ca.pem", "--streams=1",
                                   "--seconds=1", "--max_tokens=4", f"--json={out}"],
                                  capture_output=True, text=True, timeout=60)
            self.assertEqual(proc.returncode, 0, proc.stderr)
            with open(out) as f:
                level = json.load(f, parse_constant=_no_constants)["levels"][0]
            self.assertGreater(level["requests"]["completed"], 0)
            self.assertEqual(level["errors_by_code"], {})
            # Plaintext against the TLS port: not even the model info comes back.
            proc = subprocess.run([LOADGEN, f"--server={d.address}", "--streams=1", "--seconds=1"],
                                  capture_output=True, text=True, timeout=60)
            self.assertEqual(proc.returncode, 2, proc.stderr)
            proc = subprocess.run([LOADGEN, f"--server={d.address}", f"--tls_ca={pki}/no-such.pem"],
                                  capture_output=True, text=True, timeout=60)
            self.assertEqual(proc.returncode, 1, proc.stderr)
            self.assertIn("--tls_ca", proc.stderr)
        finally:
            self.assertEqual(d.stop(), 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
