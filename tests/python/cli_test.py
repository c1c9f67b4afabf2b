"""The `sluice` CLI against the real daemon: help, JSON output, budgets, live streaming,
API keys and the exit code of each status class."""

import json
import os
import subprocess
import tempfile
import time
import unittest

import sluice_testlib as tl

CLI = os.path.join(tl.BIN_DIR, "sluice")
KEY = "sk-cli-test-key"


def sluice(*args, env=None, input=None, timeout=60):
    e = dict(os.environ)
    e.pop("SLUICE_API_KEY", None)
    e.update(env or {})
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=e, input=input, timeout=timeout)


class CliTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="sluice-cli-")
        keys = os.path.join(cls.tmp, "keys")
        with open(keys, "w") as f:
            f.write(KEY + "\n")
        cls.open = tl.Daemon(args=["--max_output_tokens=1000"], metrics=False).start()
        cls.keyed = tl.Daemon(args=[f"--api_keys_file={keys}"], metrics=False).start()

    @classmethod
    def tearDownClass(cls):
        assert cls.open.stop() == 0
        assert cls.keyed.stop() == 0

    def server(self, daemon=None):
        return f"--server={(daemon or self.open).address}"

    def test_help_teaches_without_build_paths(self):
        for args in (["--help"], ["-h"], ["help"]):
            p = sluice(*args)
            self.assertEqual(p.returncode, 0)
            for word in ("generate", "stream", "tokenize", "detokenize", "info", "stats", "health", "--budget",
                         "--api_key", "--tls_ca", "--json", "Exit codes", "Examples"):
                self.assertIn(word, p.stdout, word)
        for args in (["--help"], ["--helpfull"]):
            p = sluice(*args)
            text = p.stdout + p.stderr
            self.assertNotIn(tl.SOURCE_DIR, text)
            self.assertNotIn(".cc", text)
        self.assertEqual(sluice().returncode, 1)

    def test_generate_json_reports_the_budget(self):
        p = sluice(self.server(), "generate", "The sluice gate", "--max_tokens=5", "--ignore_eos", "--json",
                   "--budget=layers=1-2")
        self.assertEqual(p.returncode, 0, p.stderr)
        out = json.loads(p.stdout)
        self.assertEqual(len(out["token_ids"]), 5)
        self.assertEqual(out["usage"]["budget"]["layers_skipped"], 2)
        self.assertLess(out["usage"]["executed_flops"], out["usage"]["dense_flops"])
        for cmd in ("info", "stats", "health"):
            p = sluice(self.server(), cmd, "--json")
            self.assertEqual(p.returncode, 0, p.stderr)
            json.loads(p.stdout)
        ids = json.loads(sluice(self.server(), "tokenize", "gate", "--json").stdout)["ids"]
        text = json.loads(sluice(self.server(), "detokenize", f"--tokens={','.join(map(str, ids))}", "--json").stdout)
        self.assertEqual(text["text"], "gate")

    def test_stream_prints_as_it_arrives(self):
        # A long stream: its first text must reach stdout well before the call ends.
        proc = subprocess.Popen([CLI, self.server(), "stream", "--tokens=1,2,3", "--max_tokens=1000", "--ignore_eos"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        first = proc.stdout.read1(64)
        t_first = time.time()
        self.assertTrue(first)
        rest = proc.stdout.read()
        proc.wait(120)
        t_end = time.time()
        self.assertEqual(proc.returncode, 0)
        self.assertEqual(len((first + rest).split()), 1000)
        self.assertGreater(t_end - t_first, 0.2, "the output came all at once")

    def test_stream_json_lines(self):
        p = sluice(self.server(), "stream", "--tokens=1,2,3", "--max_tokens=6", "--ignore_eos", "--json")
        self.assertEqual(p.returncode, 0, p.stderr)
        lines = [json.loads(l) for l in p.stdout.splitlines()]
        self.assertEqual(sum(len(l["token_ids"]) for l in lines), 6)
        self.assertEqual(lines[-1]["finish_reason"], "FINISH_REASON_LENGTH")

    def test_exit_codes_by_status_class(self):
        self.assertEqual(sluice(self.server(), "generate", "--tokens=999999").returncode, 2)  # INVALID_ARGUMENT
        self.assertEqual(sluice(self.server(), "generate", "x", "--budget=experts=2").returncode, 2)  # FAILED_PRECONDITION
        self.assertEqual(sluice(self.server(), "generate", "--budget=warp=9", "x").returncode, 1)  # usage
        self.assertEqual(sluice(self.server(), "fly").returncode, 1)
        self.assertEqual(sluice(self.server(), "generate", "--tokens=1", "--max_tokens=1000", "--ignore_eos",
                                "--timeout_s=0.05").returncode, 5)  # DEADLINE_EXCEEDED
        self.assertEqual(sluice("--server=127.0.0.1:1", "info", "--timeout_s=5").returncode, 3)  # UNAVAILABLE

    def test_api_key_from_flag_or_environment(self):
        keyed = self.server(self.keyed)
        self.assertEqual(sluice(keyed, "info").returncode, 4)
        self.assertEqual(sluice(keyed, "info", "--api_key=wrong").returncode, 4)
        self.assertEqual(sluice(keyed, "info", f"--api_key={KEY}").returncode, 0)
        self.assertEqual(sluice(keyed, "generate", "hi", "--max_tokens=2", env={"SLUICE_API_KEY": KEY}).returncode, 0)
        self.assertEqual(sluice(keyed, "health").returncode, 0)  # health needs no key


if __name__ == "__main__":
    unittest.main(verbosity=2)
