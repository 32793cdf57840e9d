"""Deployment files checked with real tools: docker-compose, promtool, a real Prometheus scraping the
real server (every dashboard and alert expression is run), kubectl kustomize + schema validation."""

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
BIN = REPO / "target" / "release" / "seenn"
RATE_WINDOW_S = 10  # what Grafana's $__rate_interval becomes with a 1 s scrape interval and this range
LISTENER_JOIN_S = 10  # after draining, the server waits up to 5 s for each of its HTTP and gRPC listeners
MARGIN_S = 5  # left between the worst-case shutdown and SIGKILL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, data: bytes | None = None, headers: dict | None = None):
    req = urllib.request.Request(url, data=data, headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, r.read()


def test_compose_file_validates(tmp_path):
    import yaml

    work = tmp_path / "deploy"
    shutil.copytree(DEPLOY, work)
    (work / "secrets" / "admin_token").write_text(secrets.token_hex(32) + "\n")
    out = subprocess.run(["docker-compose", "-f", str(work / "docker-compose.yml"), "config"],
                         capture_output=True, text=True, check=True).stdout
    for service in ("seenn:", "prometheus:", "alertmanager:", "grafana:", "loadgen:"):
        assert service in out
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    # The Compose Specification (docker compose v2) has no `version`; v2 warns that it is obsolete.
    assert "version" not in compose
    seenn = compose["services"]["seenn"]
    # SIGTERM -> drain (SEENN_SHUTDOWN_TIMEOUT) -> listeners close (2 x 5 s) must end before SIGKILL.
    grace = float(seenn["stop_grace_period"].rstrip("s"))
    drain = float(seenn["environment"]["SEENN_SHUTDOWN_TIMEOUT"])
    assert drain + LISTENER_JOIN_S + MARGIN_S <= grace, (drain, grace)


def test_promtool_checks_config_and_rules():
    import yaml

    subprocess.run(["promtool", "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")], check=True)
    out = subprocess.run(["promtool", "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
                         capture_output=True, text=True, check=True).stdout
    assert f"SUCCESS: {len(alert_exprs())} rules found" in out
    # What each alert fires on and what it must not (drift like with like, down, p99 with 504s).
    res = subprocess.run(["promtool", "test", "rules", str(DEPLOY / "prometheus" / "alerts_test.yml")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    # Alerts go somewhere: an Alertmanager that is in the compose file, with a valid config.
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = [t for am in prom["alerting"]["alertmanagers"] for sc in am["static_configs"] for t in sc["targets"]]
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert all(t.split(":")[0] in compose["services"] for t in targets), targets
    subprocess.run(["amtool", "check-config", str(DEPLOY / "prometheus" / "alertmanager.yml")], check=True,
                   capture_output=True)
    names = {name for name, _ in alert_exprs()}
    assert "SeennDown" in names
    down = next(e for n, e in alert_exprs() if n == "SeennDown")
    job = prom["scrape_configs"][0]["job_name"]
    assert f'up{{job="{job}"}} == 0' in down and f'absent(up{{job="{job}"}})' in down
    # The ServiceMonitor's job is its Service's name: the same job as prometheus.yml's.
    assert job == yaml.safe_load((DEPLOY / "k8s" / "service.yaml").read_text())["metadata"]["name"]


def kustomize(path: Path) -> tuple[int, str, str]:
    res = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True)
    return res.returncode, res.stdout, res.stderr


def k8s_copy(tmp_path: Path, token: str | None = None) -> Path:
    work = tmp_path / "k8s"
    shutil.copytree(DEPLOY / "k8s", work)
    if token is not None:
        (work / "secrets" / "admin_token").write_text(token + "\n")
    return work


def docs(built: str) -> list[dict]:
    import yaml

    return [d for d in yaml.safe_load_all(built) if d]


def flag(args: list[str], name: str) -> str:
    """The value of --name=value or --name value in a container's args."""
    for i, a in enumerate(args):
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
        if a == f"--{name}":
            return args[i + 1]
    raise AssertionError(f"--{name} not set in {args}")


def test_kustomize_builds_and_validates(tmp_path):
    # No token file: kustomize stops and names it (no placeholder Secret is ever applied).
    code, _, err = kustomize(k8s_copy(tmp_path / "none"))
    assert code != 0 and "admin_token" in err
    token = secrets.token_hex(32)
    work = k8s_copy(tmp_path, token)
    code, built, err = kustomize(work)
    assert code == 0, err
    objs = docs(built)
    kinds = [d["kind"] for d in objs]
    for kind in ("Namespace", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Secret",
                 "ConfigMap"):
        assert kind in kinds, kind
    # Plain `kubectl apply -k` must work without the Prometheus Operator: no CRD-backed kind.
    assert "ServiceMonitor" not in kinds
    path = tmp_path / "k8s.yaml"
    path.write_text(built)
    validate = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / "kubernetes-validate"
    res = subprocess.run([str(validate), "--strict", "-k", "1.30.0", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "readinessProbe" in built and "/readyz" in built and "preStop" in built

    # The Secret holds the file's token, under a hashed name the Deployment refers to.
    secret = next(d for d in objs if d["kind"] == "Secret")
    import base64

    assert base64.b64decode(secret["data"]["admin_token"]).decode().strip() == token
    dep = next(d for d in objs if d["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["admin-token"]["secret"]["secretName"] == secret["metadata"]["name"]
    # No committed file carries a token any more.
    for f in (REPO / "deploy").rglob("*"):
        if f.is_file() and f.suffix in (".yaml", ".yml", ".example", ""):
            assert "replace-me-with" not in f.read_text(errors="ignore"), f

    # Exit policies: one ConfigMap every pod mounts as a folder (a subPath mount never updates).
    (c,) = pod["containers"]
    args = c["args"]
    policy_path = Path(flag(args, "exit-policy-file"))
    cm = next(d for d in objs if d["kind"] == "ConfigMap")
    assert cm["metadata"]["name"] == "seenn-exit-policies"  # fixed: edited in place, named in the 409
    assert vols["exit-policies"]["configMap"]["name"] == cm["metadata"]["name"]
    mount = next(m for m in c["volumeMounts"] if m["name"] == "exit-policies")
    assert "subPath" not in mount and str(policy_path.parent) == mount["mountPath"]
    assert policy_path.name in cm["data"]
    policies = json.loads(cm["data"][policy_path.name])
    served = {p.name for p in (REPO / "models").iterdir() if (p / "manifest.json").exists()}
    assert set(policies) <= served

    # Shutdown: preStop + drain + listeners closing, with a margin, inside the grace period.
    pre_stop = float(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    drain = float(flag(args, "shutdown-timeout"))
    assert pre_stop + drain + LISTENER_JOIN_S + MARGIN_S <= pod["terminationGracePeriodSeconds"]

    # The image reference is set by kustomize `images` (registry and tag without editing YAML).
    k = (work / "kustomization.yaml").read_text()
    (work / "kustomization.yaml").write_text(k.replace("newName: seenn-serve", "newName: registry.example.com/seenn")
                                             .replace("newTag: latest", "newTag: 1.2.3"))
    code, built2, err = kustomize(work)
    assert code == 0, err
    assert "image: registry.example.com/seenn:1.2.3" in built2

    # The optional ServiceMonitor component adds it (with the Prometheus Operator).
    (work / "kustomization.yaml").write_text(k.replace("# components:", "components:")
                                             .replace("#   - components/servicemonitor", "  - components/servicemonitor"))
    code, built3, err = kustomize(work)
    assert code == 0, err
    sm = next(d for d in docs(built3) if d["kind"] == "ServiceMonitor")
    assert sm["metadata"]["namespace"] == "seenn"


def test_kserve_runtime():
    import yaml

    kserve = DEPLOY / "k8s" / "kserve"
    rt = yaml.safe_load((kserve / "servingruntime.yaml").read_text())
    assert {"v2", "grpc-v2"} <= set(rt["spec"]["protocolVersions"])
    (c,) = rt["spec"]["containers"]
    http_port, grpc_port = int(flag(c["args"], "http-port")), int(flag(c["args"], "grpc-port"))
    # Knative (KServe serverless) routes to the one declared port: REST as http1, gRPC as h2c.
    assert c["ports"] == [{"name": "http1", "containerPort": http_port, "protocol": "TCP"}]
    rest = yaml.safe_load((kserve / "inferenceservice.yaml").read_text())["spec"]["predictor"]["model"]
    assert rest["protocolVersion"] == "v2" and rest["runtime"] == rt["metadata"]["name"]
    grpc = yaml.safe_load((kserve / "inferenceservice-grpc.yaml").read_text())["spec"]["predictor"]["model"]
    assert grpc["protocolVersion"] == "grpc-v2"
    assert grpc["ports"] == [{"name": "h2c", "containerPort": grpc_port, "protocol": "TCP"}]


def dockerfile_lines(name: str) -> list[str]:
    text = (DEPLOY / name).read_text().replace("\\\n", " ")
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfile_builds_what_cargo_needs(name):
    """Static checks for what `make test-image` (scripts/test_image.sh) proves by building."""
    import tomllib

    lines = dockerfile_lines(name)
    text = "\n".join(lines)
    # Base images are build arguments with public defaults, declared before the first FROM.
    first_from = next(i for i, ln in enumerate(lines) if ln.startswith("FROM "))
    args = {m.group(1) for ln in lines[:first_from] if (m := re.match(r"ARG (\w+)=\S+", ln))}
    for ln in lines:
        if ln.startswith("FROM "):
            m = re.match(r"FROM \$\{(\w+)\}", ln)
            assert m and m.group(1) in args, ln
    # Everything Cargo.toml refers to is copied before `cargo build` (an explicit [[bench]] included).
    copied = [p for ln in lines if ln.startswith("COPY ") and "--from" not in ln for p in ln.split()[1:-1]]
    cargo = tomllib.loads((REPO / "Cargo.toml").read_text())
    needed = ["Cargo.toml", "Cargo.lock", "build.rs", "src", "proto"]
    needed += [b.get("path", f"benches/{b['name']}.rs") for b in cargo.get("bench", [])]
    for path in needed:
        assert any(path == c or path.startswith(c.rstrip("/") + "/") for c in copied), (name, path, copied)
    # Debian 12's pip 23.0 has no --break-system-packages; ORT comes from the same script as `make run`.
    assert "--break-system-packages" not in text
    assert "scripts/fetch_ort.sh" in text
    # Links are made by scripts/fetch_ort.sh, relative (test_fetch_ort_links_relatively): one made here
    # (`ln -sf "$(ls /ort/...)" ...`) pointed into the build stage and dangled in the runtime stage.
    assert "ln -s" not in text
    # Appended to, never overwritten (the CUDA base image's LD_LIBRARY_PATH finds the driver).
    for m in re.finditer(r"LD_LIBRARY_PATH=(\S+)", text):
        assert "${LD_LIBRARY_PATH" in m.group(1), m.group(0)
    # A numeric user, so Kubernetes' runAsNonRoot can verify it.
    (user,) = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert re.fullmatch(r"10001(:10001)?", user)


def test_fetch_ort_links_relatively():
    lib = REPO / ".ort" / "lib" / "libonnxruntime.so"
    # scripts/setup.sh (every make target) runs fetch_ort.sh, so the link is always there.
    assert lib.is_symlink(), "no .ort/lib/libonnxruntime.so link: run scripts/setup.sh"
    target = os.readlink(lib)
    assert not os.path.isabs(target) and (lib.parent / target).exists(), target


def test_dockerignore_is_an_allowlist():
    # scripts/test_image.sh checks the context a real build receives; this checks the file's shape.
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*"
    allowed = [ln[1:] for ln in lines if ln.startswith("!")]
    for never in ("target", ".venv", ".ort", "deploy", "runs", "training"):
        assert not any(a.rstrip("/") == never or a.startswith(never + "/") for a in allowed), never


def dashboard_exprs(model_regex: str | None = None, rate_interval: str = "1m"):
    """Every panel query as Grafana sends it; model_regex None: the variable's "All" option."""
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "seenn.json").read_text())
    if model_regex is None:
        var = dash["templating"]["list"][0]
        assert var["includeAll"] and var["current"]["value"] == "$__all"
        # Without allValue, Grafana sends the variable's values (the models of seenn_model_info), and
        # requests rejected before a model is known (model="_unparsed", "_unknown") vanish.
        model_regex = var["allValue"]
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
  - job_name: seenn-serve
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
    wait_for(lambda: promql(prom, 'up{job="seenn-serve"} == 1'), "target up")
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
    # Rejected before a model is known: an unknown option, an unknown model.
    for url in (f"{server}/v1/models/fashion-mnist/classify?no_such_option=1", f"{server}/v1/models/nope/classify"):
        with pytest.raises(urllib.error.HTTPError) as e:
            http(url, pngs[0], {"content-type": "image/png"})
        assert e.value.code in (400, 404)
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

    # "All" (allValue) shows the rejected requests; the exits panel has one series per model and t.
    _, all_exprs = dashboard_exprs(None, f"{RATE_WINDOW_S}s")
    by_status = next(e for t, e in all_exprs if t.startswith("Requests per second"))
    models_seen = {r["metric"]["model"] for r in promql(prom, by_status)}
    assert {"fashion-mnist", "_unparsed", "_unknown"} <= models_seen, models_seen
    exits = next(e for t, e in all_exprs if t.startswith("Exits per timestep"))
    assert all({"model", "timestep"} <= set(r["metric"]) for r in promql(prom, exits))
    dash, exprs = dashboard_exprs("fashion-mnist", f"{RATE_WINDOW_S}s")
    assert dash["templating"]["list"][0]["query"]["query"] == "label_values(seenn_model_info, model)"
    status, body = http(f"{prom}/api/v1/label/model/values?" + urllib.parse.urlencode({"match[]": "seenn_model_info"}))
    assert "fashion-mnist" in json.loads(body)["data"]
    for title, expr in exprs:
        assert promql(prom, expr), f"panel {title!r} returned no data: {expr}"
    # The version-change annotation: the serving version's series is new (Prometheus started less
    # than a minute ago), so it marks the server's start-up version.
    for ann in dash["annotations"]["list"]:
        marks = promql(prom, ann["expr"].replace("$model", "fashion-mnist"))
        assert [m["metric"].get("version") for m in marks] == ["1"], (ann["name"], marks)
    # The engine's busy share is a share of its workers' time (rate() extrapolates to the window's
    # edges, hence the small allowance over 1).
    busy = next(e for t, e in exprs if t.startswith("Engine busy share"))
    shares = [float(r["value"][1]) for r in promql(prom, busy)]
    assert shares and all(0.0 <= s <= 1.05 for s in shares), shares
    # The average-timesteps panel equals the server's own exact figure.
    avg_expr = next(e for t, e in exprs if t.startswith("Average timesteps") and "rate(seenn_timesteps_used_sum" in e)
    panel = {r["metric"]["rule"]: float(r["value"][1]) for r in promql(prom, avg_expr)}
    for rule, value in exact.items():
        assert panel[rule] == pytest.approx(value, rel=1e-9), (rule, panel, exact)
    for _name, expr in alert_exprs():
        promql(prom, expr)  # each must evaluate without error
    rules = wait_for(lambda: json.loads(http(f"{prom}/api/v1/rules")[1])["data"]["groups"], "rule groups loaded")
    assert sum(len(g["rules"]) for g in rules) == len(alert_exprs())
    assert all(r["health"] in ("ok", "unknown") for g in rules for r in g["rules"])
