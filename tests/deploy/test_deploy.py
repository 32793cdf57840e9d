"""Deployment files checked with real tools: docker-compose, promtool, a real Prometheus scraping the
real server (every dashboard and alert expression is run), kubectl kustomize + schema validation."""

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
BIN = REPO / "target" / "release" / "seenn"
RATE_WINDOW_S = 10  # what Grafana's $__rate_interval becomes with a 1 s scrape interval and this range


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, data: bytes | None = None, headers: dict | None = None):
    req = urllib.request.Request(url, data=data, headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, r.read()


def test_compose_file_validates(tmp_path):
    work = tmp_path / "deploy"
    shutil.copytree(DEPLOY, work)
    (work / "secrets" / "admin_token").write_text("test-token\n")
    out = subprocess.run(["docker-compose", "-f", str(work / "docker-compose.yml"), "config"],
                         capture_output=True, text=True, check=True).stdout
    for service in ("seenn:", "prometheus:", "grafana:", "loadgen:"):
        assert service in out


def test_promtool_checks_config_and_rules():
    subprocess.run(["promtool", "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")], check=True)
    out = subprocess.run(["promtool", "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
                         capture_output=True, text=True, check=True).stdout
    assert "SUCCESS: 6 rules found" in out


def test_kustomize_builds_and_validates(tmp_path):
    built = subprocess.run(["kubectl", "kustomize", str(DEPLOY / "k8s")], capture_output=True, text=True,
                           check=True).stdout
    kinds = re.findall(r"^kind: (\w+)", built, re.M)
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Secret", "ServiceMonitor"):
        assert kind in kinds, kind
    # The ServiceMonitor is a Prometheus Operator CRD: no schema in the Kubernetes set.
    core = "\n---\n".join(d for d in built.split("\n---\n") if "kind: ServiceMonitor" not in d)
    path = tmp_path / "k8s.yaml"
    path.write_text(core)
    validate = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / "kubernetes-validate"
    res = subprocess.run([str(validate), "--strict", "-k", "1.30.0", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "readinessProbe" in built and "/readyz" in built and "preStop" in built
    for f in ("servingruntime.yaml", "inferenceservice.yaml"):
        assert "serving.kserve.io" in (DEPLOY / "k8s" / "kserve" / f).read_text()


def dashboard_exprs(model_regex: str, rate_interval: str = "1m"):
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "seenn.json").read_text())
    exprs = []
    for p in dash["panels"]:
        for t in p["targets"]:
            e = t["expr"].replace("$model", model_regex).replace("$__rate_interval", rate_interval)
            assert "$" not in e, e
            exprs.append((p["title"], e))
    return dash, exprs


def alert_exprs():
    import yaml

    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]


def metric_sum(text: str, name: str, labels: dict) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


@pytest.fixture()
def stack(tmp_path):
    assert BIN.exists(), "build the server first (make build)"
    http_port, grpc_port, prom_port = free_port(), free_port(), free_port()
    server = subprocess.Popen([str(BIN), "serve", "--models", str(REPO / "models"), "--host", "127.0.0.1",
                               "--http-port", str(http_port), "--grpc-port", str(grpc_port),
                               "--state-dir", str(tmp_path / "state")], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cfg = tmp_path / "prometheus.yml"
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    cfg.write_text(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [alerts.yml]
scrape_configs:
  - job_name: seenn
    static_configs:
      - targets: ["127.0.0.1:{http_port}"]
""")
    prom = subprocess.Popen(["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"http://127.0.0.1:{http_port}", f"http://127.0.0.1:{prom_port}"
    finally:
        for p in (server, prom):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def wait_for(fn, what: str, timeout: float = 60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            v = fn()
            if v:
                return v
        except OSError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def promql(prom: str, expr: str):
    q = urllib.parse.urlencode({"query": expr})
    status, body = http(f"{prom}/api/v1/query?{q}")
    data = json.loads(body)
    assert status == 200 and data["status"] == "success", (expr, data)
    return data["data"]["result"]


def classify(server: str, png: bytes, query: str) -> dict:
    status, body = http(f"{server}/v1/models/fashion-mnist/classify?{query}", png, {"content-type": "image/png"})
    assert status == 200
    return json.loads(body)


def test_dashboard_and_alert_queries_against_a_real_prometheus(stack):
    server, prom = stack
    wait_for(lambda: http(f"{server}/readyz")[0] == 200, "server ready")
    golden = json.loads((REPO / "models" / "fashion-mnist" / "golden.json").read_text())
    pngs = [(REPO / "models" / "fashion-mnist" / s["file"]).read_bytes() for s in golden["samples"]]
    # Create the series well before the measured requests, so that the rate window below starts and
    # ends on samples of series that already exist. rate() extrapolates a counter at most down to
    # zero, separately for _sum and _count; with a large first value neither hits that limit and
    # both get the same extrapolation, so their ratio is exact.
    for i in range(50):
        classify(server, pngs[i % len(pngs)], "")
        classify(server, pngs[0], "rule=fixed&max_timesteps=1")
    wait_for(lambda: promql(prom, 'up{job="seenn"} == 1'), "target up")
    wait_for(lambda: promql(prom, 'seenn_timesteps_used_count{rule="fixed"}'), "series scraped")
    time.sleep(RATE_WINDOW_S + 2)
    before = http(f"{server}/metrics")[1].decode()
    expected_steps = 0
    for i, png in enumerate(pngs[:40]):
        r = classify(server, png, "")
        assert r["timesteps_used"] == golden["samples"][i]["exit_timestep"]
        expected_steps += r["timesteps_used"]
    for t in (1, 2, 4, 4, 3):
        assert classify(server, pngs[0], f"rule=fixed&max_timesteps={t}")["timesteps_used"] == t
    after = http(f"{server}/metrics")[1].decode()
    time.sleep(3.0)  # a few scrapes after the last request

    exact = {}
    for rule in ("confidence", "fixed"):
        lab = {"model": "fashion-mnist", "rule": rule}
        d_sum = metric_sum(after, "seenn_timesteps_used_sum", lab) - metric_sum(before, "seenn_timesteps_used_sum", lab)
        d_cnt = metric_sum(after, "seenn_timesteps_used_count", lab) - metric_sum(before, "seenn_timesteps_used_count", lab)
        exact[rule] = d_sum / d_cnt
    assert exact["confidence"] == pytest.approx(expected_steps / 40)
    assert exact["fixed"] == pytest.approx(14 / 5)

    dash, exprs = dashboard_exprs("fashion-mnist", f"{RATE_WINDOW_S}s")
    assert dash["templating"]["list"][0]["query"]["query"] == "label_values(seenn_model_info, model)"
    status, body = http(f"{prom}/api/v1/label/model/values?" + urllib.parse.urlencode({"match[]": "seenn_model_info"}))
    assert "fashion-mnist" in json.loads(body)["data"]
    for title, expr in exprs:
        assert promql(prom, expr), f"panel {title!r} returned no data: {expr}"
    # The average-timesteps panel equals the server's own exact figure.
    avg_expr = next(e for t, e in exprs if t.startswith("Average timesteps") and "rate(seenn_timesteps_used_sum" in e)
    panel = {r["metric"]["rule"]: float(r["value"][1]) for r in promql(prom, avg_expr)}
    for rule, value in exact.items():
        assert panel[rule] == pytest.approx(value, rel=1e-9), (rule, panel, exact)
    for _name, expr in alert_exprs():
        promql(prom, expr)  # each must evaluate without error
    rules = wait_for(lambda: json.loads(http(f"{prom}/api/v1/rules")[1])["data"]["groups"], "rule groups loaded")
    assert sum(len(g["rules"]) for g in rules) == 6
    assert all(r["health"] in ("ok", "unknown") for g in rules for r in g["rules"])
