"""The server as the deployment runs it (the real binary): exit policies from a file shared by every
replica (--exit-policy-file), the admin token check, and the Kubernetes memory limit against the
resident memory the server really has with the Deployment's flags."""

import json
import os
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
BIN = REPO / "target" / "release" / "seenn"
MODEL = "fashion-mnist"
DECODE_BYTES_PER_PIXEL = 16  # the image decoder's allocation limit (src/preprocess.rs: max_pixels * 16)
MIB = 2**20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url: str, data: bytes | None = None, headers: dict | None = None, method: str | None = None):
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Server:
    def __init__(self, tmp: Path, args: list[str], env: dict | None = None):
        assert BIN.exists(), "build the server first (make build)"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"server-{self.port}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SEENN_")}
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [str(BIN), "serve", "--models", str(REPO / "models"), "--host", "127.0.0.1", "--http-port",
             str(self.port), "--grpc-port", str(free_port()), "--state-dir", str(tmp / f"state-{self.port}"), *args],
            cwd=REPO, env=full_env, stdout=subprocess.DEVNULL, stderr=self.log.open("w"))

    def wait_ready(self):
        deadline = time.time() + 60
        while time.time() < deadline:
            assert self.proc.poll() is None, f"server exited: {self.log.read_text()}"
            try:
                if request(f"{self.url}/readyz")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError("server not ready in 60 s")

    def exit_code(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture()
def servers():
    started: list[Server] = []
    yield started
    for s in started:
        s.stop()


def admin(server: Server, token: str, model: str = MODEL, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {token}", "content-type": "application/json"}
    status, raw = request(f"{server.url}/admin/models/{model}/exit-policy", data, headers,
                          "PUT" if body is not None else "GET")
    return status, json.loads(raw)


def manifest_exit(model: str) -> dict:
    return json.loads((REPO / "models" / model / "manifest.json").read_text())["exit"]


def manifest_alpha(model: str) -> float:
    return manifest_exit(model)["default_alpha"]


def manifest_threshold(model: str) -> float:
    return manifest_exit(model)["default_threshold"]


def wait_until(fn, what: str, timeout: float = 15.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if fn():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out: {what}")


def test_exit_policy_file_is_loaded_watched_and_owns_the_policy(tmp_path, servers):
    token = secrets.token_hex(32)
    policy = tmp_path / "policies" / "exit-policies.json"
    policy.parent.mkdir()
    policy.write_text(json.dumps({MODEL: {"alpha": 0.8}}))
    s = Server(tmp_path, ["--exit-policy-file", str(policy)], {"SEENN_ADMIN_TOKEN": token})
    servers.append(s)
    s.wait_ready()
    status, view = admin(s, token)
    assert status == 200 and view["alpha"] == 0.8, view
    # A model the file leaves out runs under its manifest's default.
    assert admin(s, token, "fashion-mnist-qcfs")[1]["alpha"] == manifest_alpha("fashion-mnist-qcfs")

    # Changes through the admin API are refused: they would reach one replica only.
    status, body = admin(s, token, body={"alpha": 0.99})
    assert status == 409, body
    assert body["code"] == "conflict" and str(policy) in body["error"] and "ConfigMap" in body["error"]
    assert admin(s, token)[1]["alpha"] == 0.8

    # An edit of the file (as kubelet updates a ConfigMap: a new file renamed over the old) is applied.
    def replace(content: str):
        tmp = policy.with_suffix(".tmp")
        tmp.write_text(content)
        tmp.rename(policy)

    replace(json.dumps({MODEL: {"alpha": 0.7}, "fashion-mnist-qcfs": {"rule": "fixed", "timesteps": 2}}))
    wait_until(lambda: admin(s, token)[1]["alpha"] == 0.7, "the edited file applied")
    qcfs = admin(s, token, "fashion-mnist-qcfs")[1]
    assert qcfs["rule"] == "fixed" and qcfs["timesteps"] == 2
    metrics = request(f"{s.url}/metrics")[1].decode()
    assert f'seenn_exit_alpha{{model="{MODEL}"}} 0.7' in metrics

    # Bad edits change nothing: not JSON, an unknown model, a typo, and a file whose second model is
    # invalid (the first one must not keep its new policy: the previous file is re-applied).
    for bad in ("{not json", json.dumps({"no-such-model": {"alpha": 0.9}}), json.dumps({MODEL: {"alpah": 0.9}}),
                json.dumps({MODEL: {"alpha": 0.6}, "fashion-mnist-qcfs": {"alpha": 7}})):
        replace(bad)
        time.sleep(5)  # two polls
        assert s.proc.poll() is None
        assert admin(s, token)[1]["alpha"] == 0.7, bad
        assert admin(s, token, "fashion-mnist-qcfs")[1]["rule"] == "fixed", bad
    assert "exit policy file rejected" in s.log.read_text()

    # The learned rule with a target: the target moves its threshold, the α the entry leaves out is
    # the manifest's (not the 0.7 of the previous file).
    replace(json.dumps({MODEL: {"rule": "learned", "target_avg_timesteps": 1.3}}))
    wait_until(lambda: admin(s, token)[1]["rule"] == "learned", "the learned rule applied")
    view = admin(s, token)[1]
    assert view["alpha"] == manifest_alpha(MODEL), view
    assert view["threshold"] != manifest_threshold(MODEL) and view["expected_avg_timesteps"] <= 1.3, view

    # The file is the whole policy: an entry removed goes back to the manifest's default.
    replace("{}")
    wait_until(lambda: admin(s, token)[1]["alpha"] == manifest_alpha(MODEL), "back to the manifest")
    wait_until(lambda: admin(s, token)[1]["rule"] == "confidence", "back to the manifest's rule")
    assert admin(s, token)[1]["threshold"] == manifest_threshold(MODEL)
    assert admin(s, token, "fashion-mnist-qcfs")[1]["rule"] == "confidence"


@pytest.mark.parametrize("content, message", [
    ("{not json", "expected a JSON object of model name"),
    (json.dumps({"no-such-model": {"alpha": 0.9}}), "is not served"),
    (json.dumps({MODEL: {"alpha": 2}}), "alpha"),
])
def test_a_bad_exit_policy_file_stops_start_up(tmp_path, servers, content, message):
    policy = tmp_path / "exit-policies.json"
    policy.write_text(content)
    s = Server(tmp_path, ["--exit-policy-file", str(policy)])
    servers.append(s)
    assert s.exit_code() != 0
    log = s.log.read_text()
    assert str(policy) in log and message in log, log


def test_the_shipped_configmap_is_what_the_server_accepts(tmp_path, servers):
    policy = tmp_path / "exit-policies.json"
    policy.write_text((DEPLOY / "k8s" / "exit-policies.json").read_text())
    s = Server(tmp_path, ["--exit-policy-file", str(policy)])
    servers.append(s)
    s.wait_ready()


@pytest.mark.parametrize("token, message", [
    ("replace-me-with-a-long-random-token", "placeholder"),
    ("change-me", "placeholder"),
    ("s3cret-token", "12 characters, fewer than 16"),
])
def test_a_guessable_admin_token_stops_start_up(tmp_path, servers, token, message):
    for how in ("file", "env"):
        if how == "file":
            f = tmp_path / "admin_token"
            f.write_text(token + "\n")
            s = Server(tmp_path, ["--admin-token-file", str(f)])
        else:
            s = Server(tmp_path, [], {"SEENN_ADMIN_TOKEN": token})
        servers.append(s)
        assert s.exit_code() != 0, how
        log = s.log.read_text()
        assert message in log and "openssl rand -hex 32" in log, log


def test_a_random_admin_token_is_accepted(tmp_path, servers):
    f = tmp_path / "admin_token"
    token = secrets.token_hex(32)
    f.write_text(token + "\n")
    s = Server(tmp_path, ["--admin-token-file", str(f)])
    servers.append(s)
    s.wait_ready()
    assert admin(s, token)[0] == 200


def container(path: Path) -> dict:
    for d in yaml.safe_load_all(path.read_text()):
        spec = d["spec"]
        pod = spec["template"]["spec"] if "template" in spec else spec
        return pod["containers"][0]
    raise AssertionError(path)


def flag(args: list[str], name: str) -> str:
    for i, a in enumerate(args):
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
        if a == f"--{name}":
            return args[i + 1]
    raise AssertionError(f"--{name} not set in {args}")


def mebibytes(q: str) -> float:
    for unit, f in (("Ki", 1 / 1024), ("Mi", 1), ("Gi", 1024)):
        if q.endswith(unit):
            return float(q[: -len(unit)]) * f
    return float(q) / MIB


@pytest.mark.parametrize("manifest", ["deployment.yaml", "kserve/servingruntime.yaml"])
def test_memory_limit_covers_the_server_with_the_pods_flags(tmp_path, servers, manifest):
    c = container(DEPLOY / "k8s" / manifest)
    args = c["args"]
    in_flight = int(flag(args, "max-http-in-flight"))
    body = int(flag(args, "max-body-bytes"))
    pixels = int(flag(args, "max-image-pixels"))
    limit = mebibytes(c["resources"]["limits"]["memory"])
    # Run the server with the pod's limits (its own ports, models and state folder here).
    keep = [a for a in args if a.split("=")[0] in
            ("--max-batch", "--max-queue", "--max-http-in-flight", "--max-body-bytes", "--max-image-pixels")]
    s = Server(tmp_path, keep)
    servers.append(s)
    s.wait_ready()
    sample = json.loads((REPO / "models" / MODEL / "golden.json").read_text())["samples"][0]["file"]
    png = (REPO / "models" / MODEL / sample).read_bytes()
    for _ in range(20):
        assert request(f"{s.url}/v1/models/{MODEL}/classify", png, {"content-type": "image/png"})[0] == 200
    # The limits hold: a body over --max-body-bytes is refused before it is read whole.
    assert request(f"{s.url}/v1/models/{MODEL}/classify", b"\0" * (body + 1), {"content-type": "image/png"})[0] == 413
    metrics = request(f"{s.url}/metrics")[1].decode()
    rss = next(float(ln.split()[-1]) for ln in metrics.splitlines() if ln.startswith("process_resident_memory_bytes"))
    worst = rss + in_flight * (body + DECODE_BYTES_PER_PIXEL * pixels)
    assert worst <= limit * MIB, (
        f"{manifest}: {rss / MIB:.0f} MiB resident + {in_flight} x ({body / MIB:.1f} MiB body + "
        f"{DECODE_BYTES_PER_PIXEL} B x {pixels} px) = {worst / MIB:.0f} MiB > limit {limit:.0f} MiB")
    # And the request leaves room for the idle server.
    assert rss <= mebibytes(c["resources"]["requests"]["memory"]) * MIB
