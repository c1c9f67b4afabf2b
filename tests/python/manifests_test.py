#!/usr/bin/env python3
"""The deployment files against schemas and against the daemon they deploy.

Parses every manifest under deploy/k8s/ (sub-folders too) and deploy/compose.yaml with
the Grafana provisioning files, then checks:

- schemas: every Kubernetes object with kubernetes-validate (the Kubernetes OpenAPI
  schemas it bundles, strict: unknown fields fail) for the oldest version the manifests
  claim (1.27, native gRPC probes) and the newest it knows; compose.yaml with
  check-jsonschema's bundled compose-spec schema; Prometheus configurations with
  `promtool check config` (Debian's promtool has no kubernetes_sd_configs, so the
  Kubernetes scrape job is checked with its discovery replaced by a static target
  carrying the labels Kubernetes discovery would set);
- agreement with the real sluiced: every --flag in the Deployment's args and compose's
  command exists in `sluiced --helpfull`; the Deployment's args (with the machine-specific
  ones replaced: model, addresses, keys file, threads, cache size, context) start a real
  sluiced; container ports are the ports of --listen / --metrics_listen; probes point at
  the gRPC port and name health services that answer SERVING; Service targetPorts and the
  scrape annotations name container ports; the PDB, Services and spread constraint select
  the pod template's labels; terminationGracePeriodSeconds and compose's stop_grace_period
  exceed --drain_grace_s + --drain_timeout_s, and a SIGTERM'd daemon with the Deployment's
  drain flags turns NOT_SERVING at once and exits 0 within that period; liveness does not
  fire during a drain;
- metrics: the HPA's metric is the adapter rule's, its series is on the real /metrics,
  and the adapter's metricsQuery (rendered the way the adapter renders it) run by a real
  Prometheus with the Kubernetes scrape job's relabelling over the Deployment's
  annotations returns the queue of a real sluiced per pod, non-zero while requests wait;
- sizing: deploy/sizing.py's figures equal the engine's (KV blocks, state slots and the
  bytes of each, from GetEngineStats and start-up errors of real daemons on hybrid and
  dense fixtures), a real daemon's resident set stays under its pod-memory figure, and
  the Deployment's memory request covers that figure for its model and cache while its
  --kv_cache_memory starts that model at its --max_model_len and --max_num_seqs.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

import yaml

import sluice_testlib as tl

sys.path.insert(0, os.path.join(tl.SOURCE_DIR, "deploy"))
import sizing  # noqa: E402  (deploy/sizing.py)

DEPLOY = os.path.join(tl.SOURCE_DIR, "deploy")
K8S = os.path.join(DEPLOY, "k8s")
COMPOSE = os.path.join(DEPLOY, "compose.yaml")
PROVISIONING = os.path.join(DEPLOY, "grafana", "provisioning")
K8S_VERSIONS = ["1.27.0", None]  # None: the newest schema kubernetes-validate bundles
PROMTOOL = os.environ.get("SLUICE_PROMTOOL", "/usr/bin/promtool")
# Checkpoint directory names the manifests serve -> the published config sized for them.
SIZING_CONFIGS = {"Qwen3.5-0.8B": "tests/data/configs/qwen3_5_0_8b/config.json"}
HEALTH_SERVICES = {"", "sluice.v1.Generation"}
# Deployment args replaced to run here: the rest (drain, limits, precision, ...) are used as is.
MACHINE_FLAGS = {"model", "listen", "metrics_listen", "api_keys_file", "threads", "kv_cache_memory",
                 "max_model_len", "served_model_name", "port_file", "http_listen", "http_port_file"}
SERVED_NAME = "manifests-test"


def load_k8s():
    """[(relative path, object)] for every YAML document under deploy/k8s."""
    docs = []
    for dirpath, _, files in sorted(os.walk(K8S)):
        for f in sorted(files):
            if not f.endswith((".yaml", ".yml")):
                continue
            path = os.path.join(dirpath, f)
            with open(path) as fh:
                for doc in yaml.safe_load_all(fh):
                    if doc is not None:
                        docs.append((os.path.relpath(path, DEPLOY), doc))
    return docs


def parse_flags(args):
    """['--a=1', '--b', '2', '--c'] -> {'a': '1', 'b': '2', 'c': ''}, failing on anything else."""
    flags = {}
    i = 0
    while i < len(args):
        a = args[i]
        m = re.fullmatch(r"--([a-zA-Z0-9_.-]+)(?:=(.*))?", a)
        if not m:
            raise AssertionError(f"not a --flag: {a!r} in {args}")
        if m.group(1) in flags:
            raise AssertionError(f"--{m.group(1)} given twice in {args}")
        if m.group(2) is not None:
            flags[m.group(1)] = m.group(2)
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            flags[m.group(1)] = args[i + 1]
            i += 1
        else:
            flags[m.group(1)] = ""
        i += 1
    return flags


def host_port(address):
    host, _, port = address.rpartition(":")
    return host, int(port)


def interpolate(value):
    """Compose's ${VAR:-default} / ${VAR-default} with an empty environment: the defaults."""
    if isinstance(value, str):
        def sub(m):
            if m.group(2) is None:
                raise AssertionError(f"{m.group(0)} has no default: compose.yaml must run with no .env")
            return m.group(3)
        return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}", sub, value)
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    return value


def duration_s(text):
    """Compose/Go duration ('45s', '1m30s', '10m') in seconds."""
    total, rest = 0.0, text
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", text):
        total += float(amount) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}[unit]
        rest = rest.replace(amount + unit, "", 1)
    if rest:
        raise AssertionError(f"not a duration: {text!r}")
    return total


def memory_bytes(quantity):
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(quantity))
    if not m:
        raise AssertionError(f"memory quantity {quantity!r} not understood")
    mult = {None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40,
            "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}[m.group(2)]
    return int(m.group(1)) * mult


def render_adapter_query(template, series, matchers, group_by):
    """prometheus-adapter's metricsQuery template (Go text/template with << >> delimiters)."""
    out = template.replace("<<.Series>>", series).replace("<<.LabelMatchers>>", matchers)
    out = out.replace("<<.GroupBy>>", group_by)
    if "<<" in out:
        raise AssertionError(f"metricsQuery uses template fields this test does not render: {template}")
    return out


def one(docs, kind, name=None):
    found = [d for _, d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]
    if len(found) != 1:
        raise AssertionError(f"expected one {kind} {name or ''} in deploy/k8s, found {len(found)}")
    return found[0]


def drain_seconds(flags, defaults):
    grace = int(flags.get("drain_grace_s", defaults["drain_grace_s"]))
    timeout = int(flags.get("drain_timeout_s", defaults["drain_timeout_s"]))
    return grace, timeout


def flag_defaults():
    out = subprocess.run([os.path.join(tl.BIN_DIR, "sluiced"), "--helpfull"], capture_output=True, text=True,
                         timeout=30)
    text = re.sub(r"\s+", " ", out.stdout + out.stderr)
    defaults = {}
    for name in ("drain_grace_s", "drain_timeout_s"):
        m = re.search(rf"--{name} \(.*?\); default: (\d+);", text)
        assert m, f"--{name} default not in --helpfull"
        defaults[name] = int(m.group(1))
    return defaults


class Manifests(unittest.TestCase):
    """Schemas and static agreement between the files and `sluiced --helpfull`."""

    @classmethod
    def setUpClass(cls):
        cls.docs = load_k8s()
        cls.flags = tl.sluiced_flags()
        cls.defaults = flag_defaults()
        cls.deployment = one(cls.docs, "Deployment")
        cls.pod = cls.deployment["spec"]["template"]
        containers = cls.pod["spec"]["containers"]
        cls.container = next(c for c in containers if c["name"] == "sluiced")
        cls.args = parse_flags(cls.container["args"])
        with open(COMPOSE) as f:
            cls.compose_raw = yaml.safe_load(f)
        cls.compose = interpolate(cls.compose_raw)

    def test_every_kubernetes_object_passes_its_schema(self):
        import kubernetes_validate

        self.assertGreaterEqual(len(self.docs), 7)
        for version in K8S_VERSIONS:
            v = version or kubernetes_validate.latest_version()
            for path, doc in self.docs:
                with self.subTest(path=path, kind=doc.get("kind"), version=v):
                    for key in ("apiVersion", "kind", "metadata"):
                        self.assertIn(key, doc)
                    self.assertTrue(doc["metadata"].get("name"))
                    kubernetes_validate.validate(doc, v, strict=True)  # raises on any error
        kinds = {d["kind"] for _, d in self.docs}
        self.assertLessEqual({"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                              "ConfigMap", "PersistentVolumeClaim"}, kinds)

    def test_schema_validator_rejects_a_broken_manifest(self):
        # The validator is live: an unknown field and a wrong type both fail.
        import kubernetes_validate

        broken = yaml.safe_load(yaml.safe_dump(self.deployment))
        broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpc"]["prot"] = 1
        with self.assertRaises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, "1.27.0", strict=True)
        broken = yaml.safe_load(yaml.safe_dump(self.deployment))
        broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "grpc"
        with self.assertRaises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, "1.27.0", strict=True)

    def test_compose_passes_the_compose_spec_schema(self):
        checker = os.path.join(os.path.dirname(sys.executable), "check-jsonschema")
        out = subprocess.run([checker, "--builtin-schema", "vendor.compose-spec", COMPOSE], capture_output=True,
                             text=True, timeout=120)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        # ... and the same schema refuses a misspelt key, so the check is not vacuous.
        with tempfile.TemporaryDirectory() as d:
            bad = dict(self.compose_raw)
            bad["services"] = dict(bad["services"])
            bad["services"]["sluiced"] = dict(bad["services"]["sluiced"], stop_grace_periods="45s")
            path = os.path.join(d, "compose.yaml")
            with open(path, "w") as f:
                yaml.safe_dump(bad, f)
            out = subprocess.run([checker, "--builtin-schema", "vendor.compose-spec", path], capture_output=True,
                                 text=True, timeout=120)
            self.assertNotEqual(out.returncode, 0, out.stdout)
        self.assertEqual({"sluiced", "prometheus", "grafana"}, set(self.compose["services"]))

    def test_every_flag_exists_in_sluiced(self):
        self.assertIn("listen", self.flags)  # the --helpfull parse works
        compose_flags = parse_flags(self.compose["services"]["sluiced"]["command"])
        for where, flags in (("deployment", self.args), ("compose", compose_flags)):
            for name in flags:
                with self.subTest(where=where, flag=name):
                    self.assertIn(name, self.flags, f"{where} passes --{name}, which sluiced does not have")
            for name in ("model", "listen", "metrics_listen", "drain_grace_s", "drain_timeout_s", "threads",
                         "kv_cache_memory", "served_model_name"):
                self.assertIn(name, flags, f"{where} should set --{name} explicitly")

    def test_container_ports_are_the_listen_ports(self):
        host, grpc_port = host_port(self.args["listen"])
        mhost, metrics_port = host_port(self.args["metrics_listen"])
        hhost, http_port = host_port(self.args["http_listen"])
        self.assertEqual((host, mhost, hhost), ("0.0.0.0",) * 3, "a pod must listen beyond loopback")
        ports = {p["name"]: p["containerPort"] for p in self.container["ports"]}
        self.assertEqual(ports, {"grpc": grpc_port, "http": http_port, "metrics": metrics_port})
        for p in self.container["ports"]:
            self.assertEqual(p.get("protocol", "TCP"), "TCP")

    def test_probes_use_grpc_health_on_the_grpc_port(self):
        _, grpc_port = host_port(self.args["listen"])
        names = {p["name"]: p["containerPort"] for p in self.container["ports"]}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            with self.subTest(probe=probe):
                spec = self.container[probe]
                self.assertIn("grpc", spec, f"{probe} should be a native gRPC probe")
                port = spec["grpc"]["port"]
                self.assertEqual(names.get(port, port), grpc_port)
                self.assertIn(spec["grpc"].get("service", ""), HEALTH_SERVICES)
        self.assertEqual(self.container["readinessProbe"]["grpc"]["service"], "sluice.v1.Generation")

    def test_grace_period_covers_the_drain(self):
        grace, timeout = drain_seconds(self.args, self.defaults)
        spec = self.pod["spec"]
        pre_stop = 0
        hook = self.container.get("lifecycle", {}).get("preStop")
        if hook:  # a preStop sleep runs before SIGTERM, so it adds to the time needed
            if "sleep" in hook:
                pre_stop = int(hook["sleep"]["seconds"])
            else:
                m = re.search(r"\bsleep (\d+)", " ".join(hook.get("exec", {}).get("command", [])))
                pre_stop = int(m.group(1)) if m else 0
        self.assertGreater(spec["terminationGracePeriodSeconds"], pre_stop + grace + timeout)
        # Liveness must not restart a pod that drains (health is NOT_SERVING meanwhile).
        live = self.container["livenessProbe"]
        self.assertGreater(live.get("periodSeconds", 10) * live.get("failureThreshold", 3), grace + timeout)
        cgrace, ctimeout = drain_seconds(parse_flags(self.compose["services"]["sluiced"]["command"]), self.defaults)
        self.assertGreater(duration_s(self.compose["services"]["sluiced"]["stop_grace_period"]), cgrace + ctimeout)

    def test_selectors_match_the_pod_labels(self):
        labels = self.pod["metadata"]["labels"]
        sel = self.deployment["spec"]["selector"]["matchLabels"]
        self.assertLessEqual(sel.items(), labels.items())
        pdb = one(self.docs, "PodDisruptionBudget")
        self.assertEqual(pdb["spec"]["selector"]["matchLabels"], sel)
        self.assertTrue("maxUnavailable" in pdb["spec"] or "minAvailable" in pdb["spec"])
        for c in self.pod["spec"].get("topologySpreadConstraints", []):
            self.assertLessEqual(c["labelSelector"]["matchLabels"].items(), labels.items())
        services = [d for _, d in self.docs if d["kind"] == "Service"]
        self.assertGreaterEqual(len(services), 1)
        for s in services:
            self.assertLessEqual(s["spec"]["selector"].items(), labels.items(), s["metadata"]["name"])

    def test_service_target_ports_are_container_ports(self):
        by_name = {p["name"]: p["containerPort"] for p in self.container["ports"]}
        served = {host_port(self.args["listen"])[1]: "grpc", host_port(self.args["http_listen"])[1]: "http"}
        for s in (d for _, d in self.docs if d["kind"] == "Service"):
            for p in s["spec"]["ports"]:
                with self.subTest(service=s["metadata"]["name"], port=p.get("name")):
                    target = p.get("targetPort", p["port"])
                    resolved = by_name[target] if isinstance(target, str) else target
                    self.assertIn(resolved, by_name.values())
                    self.assertIn(resolved, served, "the Services carry gRPC and the OpenAI HTTP API")
                    self.assertEqual(p.get("name"), served[resolved])

    def test_scrape_annotations_name_the_metrics_port(self):
        ann = self.pod["metadata"]["annotations"]
        _, metrics_port = host_port(self.args["metrics_listen"])
        self.assertEqual(ann["prometheus.io/scrape"], "true")
        self.assertEqual(int(ann["prometheus.io/port"]), metrics_port)
        self.assertEqual(ann.get("prometheus.io/path", "/metrics"), "/metrics")

    def test_hpa_scales_the_deployment_on_the_adapter_metric(self):
        hpa = one(self.docs, "HorizontalPodAutoscaler")
        ref = hpa["spec"]["scaleTargetRef"]
        self.assertEqual((ref["kind"], ref["name"]), ("Deployment", self.deployment["metadata"]["name"]))
        self.assertGreaterEqual(hpa["spec"]["minReplicas"], 2, "the PDB needs a second replica to let one go")
        names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
        self.assertEqual(names, ["sluice_num_requests_waiting"])
        rule = adapter_rule(self.docs, names[0])
        self.assertEqual(set(rule["resources"]["overrides"]), {"namespace", "pod"})
        self.assertEqual(rule["resources"]["overrides"]["pod"]["resource"], "pod")

    def test_deployment_is_sized_for_its_model(self):
        model = os.path.basename(self.args["model"].rstrip("/"))
        self.assertIn(model, SIZING_CONFIGS, "add the model's published config.json to SIZING_CONFIGS")
        shape = sizing.ModelShape(os.path.join(tl.SOURCE_DIR, SIZING_CONFIGS[model]),
                                  inspect=os.path.join(tl.BIN_DIR, "sluice-inspect"))
        kv = int(self.args["kv_cache_memory"])
        seqs = int(self.args.get("max_num_seqs", 64))
        max_len = int(self.args.get("max_model_len", 0)) or shape.max_position_embeddings
        self.assertGreaterEqual(kv, shape.min_kv_cache_memory(seqs, max_len),
                                "sluiced would refuse to start: the budget holds the slots but not one "
                                "sequence of --max_model_len")
        res = self.container["resources"]
        need = shape.process_memory_bytes(kv)
        self.assertGreaterEqual(memory_bytes(res["requests"]["memory"]), need)
        self.assertLess(memory_bytes(res["requests"]["memory"]), need + (1 << 30), "oversized by a GiB or more")
        self.assertEqual(res["limits"]["memory"], res["requests"]["memory"])
        # One compute thread per CPU the pod gets, never more than its CFS quota.
        self.assertEqual(str(res["requests"]["cpu"]), self.args["threads"])
        self.assertEqual(str(res["limits"]["cpu"]), self.args["threads"])

    def test_compose_wiring(self):
        svc = self.compose["services"]
        flags = parse_flags(svc["sluiced"]["command"])
        _, grpc_port = host_port(flags["listen"])
        _, metrics_port = host_port(flags["metrics_listen"])
        published = [p.rsplit(":", 1)[1] for p in svc["sluiced"]["ports"]]
        self.assertIn(str(grpc_port), published)
        for p in svc["sluiced"]["ports"] + svc["prometheus"]["ports"] + svc["grafana"]["ports"]:
            self.assertTrue(p.startswith("127.0.0.1:"), f"{p}: publish on loopback only")
        # Mounted sources exist (relative to deploy/), with their defaults.
        model_dir = None
        for s in svc.values():
            for v in s.get("volumes", []):
                if isinstance(v, dict) and v.get("type") == "bind":
                    self.assertTrue(os.path.exists(os.path.join(DEPLOY, v["source"])), v["source"])
                    if v["target"] == flags["model"]:
                        model_dir = os.path.join(DEPLOY, v["source"])
        self.assertTrue(model_dir and os.path.isfile(os.path.join(model_dir, "config.json")),
                        "--model should be a mounted checkpoint directory")
        # Prometheus scrapes the sluiced service on its metrics port.
        prom_flags = parse_flags(svc["prometheus"]["command"])
        cfg_target = next(c["target"] for c in svc["prometheus"]["configs"])
        self.assertEqual(prom_flags["config.file"], cfg_target)
        prom_cfg = yaml.safe_load(self.compose["configs"][svc["prometheus"]["configs"][0]["source"]]["content"])
        targets = [t for job in prom_cfg["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
        self.assertEqual(targets, [f"sluiced:{metrics_port}"])
        self.assertEqual(prom_cfg["scrape_configs"][0].get("metrics_path", "/metrics"), "/metrics")
        # Grafana's data source is that Prometheus; its dashboards folder holds the dashboard.
        with open(os.path.join(PROVISIONING, "datasources", "prometheus.yaml")) as f:
            ds = yaml.safe_load(f)["datasources"]
        _, prom_port = host_port(prom_flags["web.listen-address"])
        self.assertEqual([(d["type"], d["url"]) for d in ds], [("prometheus", f"http://prometheus:{prom_port}")])
        with open(os.path.join(PROVISIONING, "dashboards", "sluice.yaml")) as f:
            providers = yaml.safe_load(f)["providers"]
        folder = providers[0]["options"]["path"]
        mounted = {v["target"]: v["source"] for v in svc["grafana"]["volumes"] if isinstance(v, dict)}
        self.assertEqual(mounted.get("/etc/grafana/provisioning"), "./grafana/provisioning")
        dash = [src for tgt, src in mounted.items() if os.path.dirname(tgt) == folder]
        self.assertEqual(dash, ["./grafana/sluice-dashboard.json"])
        # The healthcheck asks the gRPC port.
        hc = svc["sluiced"]["healthcheck"]["test"]
        self.assertEqual(hc[:2], ["CMD", "/usr/local/bin/sluice"])
        self.assertIn("health", hc)
        self.assertIn(f"--server=127.0.0.1:{grpc_port}", hc)

    def test_prometheus_configs_pass_promtool(self):
        with tempfile.TemporaryDirectory() as d:
            compose_cfg = self.compose["configs"]["prometheus_config"]["content"]
            k8s_cfg = static_scrape_config(scrape_config(self.docs), {}, "127.0.0.1:9464", "15s")
            for name, text in (("compose", compose_cfg), ("k8s", k8s_cfg)):
                with self.subTest(config=name):
                    path = os.path.join(d, f"{name}.yml")
                    with open(path, "w") as f:
                        f.write(text)
                    out = subprocess.run([PROMTOOL, "check", "config", path], capture_output=True, text=True,
                                         timeout=60)
                    self.assertEqual(out.returncode, 0, out.stdout + out.stderr)


def adapter_rule(docs, metric):
    cm = one(docs, "ConfigMap", "prometheus-adapter")
    rules = yaml.safe_load(cm["data"]["config.yaml"])["rules"]
    mine = [r for r in rules if re.search(r"\b" + re.escape(metric) + r"\b", r["seriesQuery"])]
    if len(mine) != 1:
        raise AssertionError(f"expected one adapter rule for {metric}, found {len(mine)}")
    rule = mine[0]
    for key in ("seriesQuery", "resources", "name", "metricsQuery"):
        assert key in rule, f"adapter rule lacks {key}"
    assert re.fullmatch(rule["name"]["matches"], metric), "the rule's name.matches does not match the series"
    assert rule["name"].get("as", metric) == metric, "the rule renames the metric the HPA asks for"
    return rule


def scrape_config(docs):
    cm = one(docs, "ConfigMap", "prometheus-sluice-scrape")
    return yaml.safe_load(cm["data"]["prometheus.yml"])


def static_scrape_config(cfg, meta_labels, address, interval):
    """The Kubernetes scrape job with discovery replaced by one static target and the
    __meta_kubernetes_* labels discovery would give the pod: promtool can check it and a
    real Prometheus runs its relabelling."""
    cfg = yaml.safe_load(yaml.safe_dump(cfg))
    cfg["global"] = {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval}
    jobs = [j for j in cfg["scrape_configs"] if "kubernetes_sd_configs" in j]
    assert len(jobs) == 1, "expected one kubernetes_sd job"
    job = jobs[0]
    roles = [sd["role"] for sd in job.pop("kubernetes_sd_configs")]
    assert roles == ["pod"], roles
    job["static_configs"] = [{"targets": [address], "labels": dict(meta_labels)}]
    return yaml.safe_dump(cfg, sort_keys=False)


class StaticPrometheus(tl.Prometheus):
    def __init__(self, text, job, address):
        super().__init__({job: [address]})
        self.text = text

    def config_text(self):
        return self.text


def deployment_daemon_args(args, keys_file):
    """The Deployment's args, less those that only make sense in the pod (MACHINE_FLAGS)."""
    out = [f"--{k}={v}" for k, v in args.items() if k not in MACHINE_FLAGS]
    return out + [f"--api_keys_file={keys_file}", f"--served_model_name={SERVED_NAME}"]


class AgainstTheDaemon(unittest.TestCase):
    """A real sluiced started with the Deployment's args; a real Prometheus scraping it."""

    @classmethod
    def setUpClass(cls):
        cls.docs = load_k8s()
        deployment = one(cls.docs, "Deployment")
        cls.pod = deployment["spec"]["template"]
        cls.container = next(c for c in cls.pod["spec"]["containers"] if c["name"] == "sluiced")
        cls.args = parse_flags(cls.container["args"])
        cls.tmp = tempfile.mkdtemp(prefix="sluice-manifests-")
        cls.key = "k-manifests-5d1e"
        cls.keys_file = os.path.join(cls.tmp, "keys")
        with open(cls.keys_file, "w") as f:
            f.write(cls.key + "\n")
        cls.daemon = tl.Daemon(args=deployment_daemon_args(cls.args, cls.keys_file), die_with_parent=True).start()
        cls.pb2, cls.pb2_grpc = tl.stubs()

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()  # already exited after the drain test; closes its log
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def auth(self):
        return (("authorization", f"Bearer {self.key}"),)

    def test_1_probe_services_answer_serving(self):
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            service = self.container[probe]["grpc"].get("service", "")
            self.assertEqual(self.daemon.health(service), "SERVING", (probe, service))
        self.assertEqual(self.daemon.health("no.such.Service"), None)  # NOT_FOUND: names are checked

    def test_1_metric_names_are_on_metrics(self):
        names = {n for n, _ in self.daemon.metrics()}
        hpa = one(self.docs, "HorizontalPodAutoscaler")
        for m in hpa["spec"]["metrics"]:
            self.assertIn(m["pods"]["metric"]["name"], names)
        rule = adapter_rule(self.docs, "sluice_num_requests_waiting")
        series = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["seriesQuery"]).group(0)
        self.assertIn(series, names)
        samples = [l for n, l in self.daemon.metrics() if n == series]
        self.assertEqual(samples, [frozenset({("model_name", SERVED_NAME)})])

    def test_2_adapter_query_sees_the_queue_per_pod(self):
        ann = self.pod["metadata"]["annotations"]
        labels = self.pod["metadata"]["labels"]
        namespace, pod = "sluice-test", "sluiced-7d9f-abcde"
        meta = {"__meta_kubernetes_namespace": namespace, "__meta_kubernetes_pod_name": pod,
                "__meta_kubernetes_pod_ip": "127.0.0.1"}
        for k, v in ann.items():
            meta["__meta_kubernetes_pod_annotation_" + re.sub(r"[^a-zA-Z0-9_]", "_", k)] = v
        for k, v in labels.items():
            meta["__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", k)] = v
        # The pod listens on the annotated port (checked in Manifests); here the daemon's.
        meta["__meta_kubernetes_pod_annotation_prometheus_io_port"] = str(self.daemon.metrics_port)
        address = f"127.0.0.1:{self.daemon.metrics_port}"
        cfg = static_scrape_config(scrape_config(self.docs), meta, "127.0.0.1:1", "1s")
        job = next(j["job_name"] for j in yaml.safe_load(cfg)["scrape_configs"] if "static_configs" in j)
        rule = adapter_rule(self.docs, "sluice_num_requests_waiting")
        series = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["seriesQuery"]).group(0)
        query = render_adapter_query(rule["metricsQuery"], series, f'namespace="{namespace}",pod=~"{pod}"', "pod")
        with StaticPrometheus(cfg, job, address) as prom:
            prom.wait_targets_up()  # the relabelling made __address__ the annotated pod port
            found = prom.api("series", {"match[]": rule["seriesQuery"]})
            self.assertEqual([(s["namespace"], s["pod"]) for s in found], [(namespace, pod)])
            idle = prom.query(query)
            self.assertEqual([(l, v) for l, v in idle], [({"pod": pod}, 0.0)])
            # A queue: more requests than --max_num_seqs (and the small cache) run at once.
            n = int(self.args.get("max_num_seqs", 64)) + 6
            req = self.pb2.GenerateRequest(tokens=self.pb2.TokenIds(ids=[5, 6, 7, 8]),
                                           stopping=self.pb2.StoppingCriteria(max_tokens=1500, ignore_eos=True))
            # Stats on a channel of their own: the requests may fill one connection's streams.
            with self.daemon.channel() as ch, self.daemon.channel() as stats_ch:
                stub = self.pb2_grpc.GenerationStub(ch)
                stats = self.pb2_grpc.GenerationStub(stats_ch)
                calls = [stub.Generate.future(req, metadata=self.auth(), timeout=120) for _ in range(n)]
                try:
                    deadline = time.time() + 40
                    value, waiting = 0.0, 0
                    while time.time() < deadline:
                        waiting = max(waiting, stats.GetEngineStats(self.pb2.GetEngineStatsRequest(),
                                                                    metadata=self.auth(), timeout=10).waiting)
                        result = prom.query(query)
                        value = result[0][1] if result else 0.0
                        if value > 0:
                            break
                        time.sleep(0.25)
                    self.assertGreater(waiting, 0, "the engine never queued")
                    self.assertGreater(value, 0, f"{query} stayed 0 while requests waited")
                    self.assertEqual([l for l, _ in prom.query(query)], [{"pod": pod}])
                finally:
                    for c in calls:
                        c.cancel()

    def test_3_sigterm_drains_within_the_grace_period(self):
        grace, _ = drain_seconds(self.args, flag_defaults())
        limit = self.pod["spec"]["terminationGracePeriodSeconds"]
        ready_service = self.container["readinessProbe"]["grpc"]["service"]
        with self.daemon.channel() as ch:
            # A request in flight when SIGTERM comes finishes.
            stub = self.pb2_grpc.GenerationStub(ch)
            req = self.pb2.GenerateRequest(tokens=self.pb2.TokenIds(ids=[5, 6, 7, 8]),
                                           stopping=self.pb2.StoppingCriteria(max_tokens=64, ignore_eos=True))
            t0 = time.time()
            self.daemon.signal(signal.SIGTERM)
            status = None
            while time.time() - t0 < 2:
                status = self.daemon.health(ready_service, channel=ch)
                if status == "NOT_SERVING":
                    break
                time.sleep(0.05)
            self.assertEqual(status, "NOT_SERVING", "readiness must fail as soon as the drain starts")
            self.assertEqual(len(stub.Generate(req, metadata=self.auth(), timeout=30).token_ids), 64,
                             "requests are still accepted during --drain_grace_s")
        try:
            rc = self.daemon.proc.wait(limit)
        except subprocess.TimeoutExpired:
            self.fail(f"sluiced did not exit within terminationGracePeriodSeconds={limit}")
        took = time.time() - t0
        self.assertEqual(rc, 0)
        self.assertGreaterEqual(took, grace - 0.5)
        self.assertLess(took, limit)


class Sizing(unittest.TestCase):
    """deploy/sizing.py against the engine's own arithmetic and a real resident set."""

    FIXTURES = ["qwen3_5_moe_f32", "qwen3_next_f32", "llama_f32"]

    def shape(self, name):
        return sizing.ModelShape(os.path.join(tl.TEST_DATA_DIR, "models", name, "config.json"),
                                 inspect=os.path.join(tl.BIN_DIR, "sluice-inspect"))

    def test_blocks_and_slots_match_the_engine(self):
        pb2, pb2_grpc = tl.stubs()
        for name in self.FIXTURES:
            shape = self.shape(name)
            kv, seqs = 8 << 20, 6
            with self.subTest(model=name):
                d = tl.Daemon(model_dir=os.path.join(tl.TEST_DATA_DIR, "models", name), metrics=False,
                              args=[f"--kv_cache_memory={kv}", f"--max_num_seqs={seqs}",
                                    "--max_num_batched_tokens=256"], die_with_parent=True)
                with d:
                    with d.channel() as ch:
                        st = pb2_grpc.GenerationStub(ch).GetEngineStats(pb2.GetEngineStatsRequest(), timeout=10)
                    rss = tl.rss_bytes(d.proc.pid)
                self.assertEqual(st.total_kv_blocks, shape.kv_blocks(kv, seqs))
                self.assertEqual(st.total_state_slots, seqs if shape.state_bytes_per_slot else 0)
                self.assertLess(rss, shape.process_memory_bytes(kv))

    def test_unit_bytes_match_the_engine_errors(self):
        for name in self.FIXTURES:
            shape = self.shape(name)
            with self.subTest(model=name):
                if shape.state_bytes_per_slot:
                    err = self.startup_error(name, kv=shape.state_bytes_per_slot * 3, seqs=3)
                    m = re.search(r"cannot hold the recurrent state of 3 sequences \((\d+) bytes each\)", err)
                    self.assertTrue(m, err)
                    self.assertEqual(int(m.group(1)), shape.state_bytes_per_slot)
                # Slots fit, blocks do not hold one full-length sequence.
                kv = shape.state_bytes_per_slot * 2 + shape.kv_bytes_per_block * 3
                err = self.startup_error(name, kv=kv, seqs=2)
                m = re.search(r"holds (\d+) blocks of (\d+) bytes", err)
                self.assertTrue(m, err)
                self.assertEqual((int(m.group(1)), int(m.group(2))), (3, shape.kv_bytes_per_block))
                self.assertGreater(shape.min_kv_cache_memory(2, shape.max_position_embeddings), kv)

    def startup_error(self, name, kv, seqs):
        # Every listener on port 0 or off, so that parallel tests never collide.
        extra = ["--http_listen="] if "http_listen" in tl.sluiced_flags() else []
        out = subprocess.run(
            [os.path.join(tl.BIN_DIR, "sluiced"), f"--model={os.path.join(tl.TEST_DATA_DIR, 'models', name)}",
             "--listen=127.0.0.1:0", "--metrics_listen=", "--threads=1", f"--kv_cache_memory={kv}",
             f"--max_num_seqs={seqs}", "--max_num_batched_tokens=256"] + extra,
            capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 1, out.stdout + out.stderr)
        return out.stdout + out.stderr

    def test_flagship_table(self):
        # The README's table: the engine's parameter counts and the published shapes.
        inspect = os.path.join(tl.BIN_DIR, "sluice-inspect")
        q08 = sizing.ModelShape(os.path.join(tl.SOURCE_DIR, SIZING_CONFIGS["Qwen3.5-0.8B"]), inspect=inspect)
        self.assertEqual(q08.total_parameters, 752393024)
        self.assertEqual(q08.kv_bytes_per_token, 6 * 2 * 2 * 256 * 2)  # bf16, sluiced's --kv_cache_dtype default
        for dtype, row in (("f32", 256 * 4), ("fp8", 256 + 4)):  # fp8: one f32 scale per K and V row
            shape = sizing.ModelShape(os.path.join(tl.SOURCE_DIR, SIZING_CONFIGS["Qwen3.5-0.8B"]), inspect=inspect,
                                      kv_cache_dtype=dtype)
            self.assertEqual(shape.kv_bytes_per_token, 6 * 2 * 2 * row)
        self.assertEqual(q08.state_bytes_per_slot, 18 * 4 * ((2 * 16 * 128 + 16 * 128) * 3 + 16 * 128 * 128))
        out = subprocess.run([sys.executable, os.path.join(DEPLOY, "sizing.py"), f"--inspect={inspect}"],
                             capture_output=True, text=True, timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr)
        for name, _ in sizing.FLAGSHIPS:
            self.assertIn(name, out.stdout)


if __name__ == "__main__":
    unittest.main(verbosity=2)
