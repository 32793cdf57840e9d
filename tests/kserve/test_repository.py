"""The model repository extension against the real server, through Triton's own clients
(`tritonclient[http]` and `[grpc]`) and raw HTTP: the index, load (a hot swap to a new version),
pinning a version, unload, the admin token, broken packages (corrupt ONNX, bad manifest, failing
golden check) that leave the old version serving, the exit policy carried over, poll mode picking up
a version renamed into place, and `--model-control none` refusing changes."""

import json
import shutil
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
import seenn_server  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MODEL = "fashion-mnist"
PACKAGE = REPO / "models" / MODEL
TOKEN = "repository-test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# gRPC metadata keys are lower case.
GRPC_AUTH = {"authorization": f"Bearer {TOKEN}"}
PNG = sorted((PACKAGE / "samples").glob("*.png"))[0].read_bytes()


def start(tmp: Path, root: Path, *args: str) -> dict:
    token = tmp / "token"
    token.write_text(TOKEN)
    log = open(tmp / "server.log", "w")
    s = seenn_server.start(["--models", str(root), "--state-dir", str(tmp / "state"), "--admin-token-file", str(token),
                            "--engine-workers", "1", *args], log=log)
    s["log"] = tmp / "server.log"
    return s


stop = seenn_server.stop


def version_dir(root: Path, version: int, mutate=None) -> Path:
    """A copy of the committed package as version `version` of fashion-mnist, written under a
    dot-name and renamed into place (the atomic publish the docs describe)."""
    tmp = root / MODEL / f".v{version}.tmp"
    shutil.copytree(PACKAGE, tmp)
    if mutate:
        mutate(tmp)
    dest = root / MODEL / str(version)
    tmp.rename(dest)
    return dest


def post(base: str, path: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body or {}).encode()
    req = urllib.request.Request(base + path, data=data, method="POST",
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            text = r.read()
            return r.status, json.loads(text) if text else {}
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def classify(base: str, **query) -> dict:
    q = "&".join(f"{k}={v}" for k, v in query.items())
    req = urllib.request.Request(f"{base}/v1/models/{MODEL}/classify?{q}", data=PNG,
                                 headers={"content-type": "image/png"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def index(base: str) -> dict:
    status, rows = post(base, "/v2/repository/index")
    assert status == 200, rows
    return {(r["name"], r["version"]): r for r in rows}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("repo")
    root = tmp / "models"
    (root / MODEL).mkdir(parents=True)
    version_dir(root, 1)
    s = start(tmp, root)
    s["root"] = root
    yield s
    stop(s)


def test_index_over_rest_and_grpc_with_tritonclient(server):
    rows = index(server["base"])
    assert rows[(MODEL, "1")]["state"] == "READY"
    http = httpclient.InferenceServerClient(server["http"])
    got = http.get_model_repository_index()
    assert {"name": MODEL, "version": "1", "state": "READY", "reason": ""} in got
    grpc = grpcclient.InferenceServerClient(server["grpc"])
    g = grpc.get_model_repository_index(as_json=True)
    assert any(m["name"] == MODEL and m["version"] == "1" and m["state"] == "READY" for m in g["models"])


def test_load_and_unload_need_the_admin_token(server):
    http = httpclient.InferenceServerClient(server["http"])
    with pytest.raises(InferenceServerException, match="401|token|Authorization"):
        http.load_model(MODEL)
    grpc = grpcclient.InferenceServerClient(server["grpc"])
    with pytest.raises(InferenceServerException, match="UNAUTHENTICATED|token"):
        grpc.unload_model(MODEL)
    status, body = post(server["base"], f"/v2/repository/models/{MODEL}/load",
                        headers={"Authorization": "Bearer wrong-token-wrong-token"})
    assert status == 401, body
    assert classify(server["base"])["version"] == "1"


def test_swap_to_a_new_version_carries_the_exit_policy(server):
    base = server["base"]
    req = urllib.request.Request(f"{base}/admin/models/{MODEL}/exit-policy", data=b'{"alpha": 0.97}',
                                 method="PUT", headers={"content-type": "application/json", **AUTH})
    with urllib.request.urlopen(req) as r:
        assert json.loads(r.read())["alpha"] == 0.97
    version_dir(server["root"], 2)
    http = httpclient.InferenceServerClient(server["http"])
    http.load_model(MODEL, headers=AUTH)
    rows = index(base)
    assert rows[(MODEL, "2")]["state"] == "READY"
    assert rows[(MODEL, "1")]["state"] == "UNAVAILABLE" and "version 2" in rows[(MODEL, "1")]["reason"]
    answer = classify(base)
    assert answer["version"] == "2" and answer["alpha"] == 0.97, answer
    # A request naming the version that no longer serves is told which one does.
    with pytest.raises(InferenceServerException, match="version 2"):
        http.infer(MODEL, [tensor_input()], model_version="1")
    assert http.infer(MODEL, [tensor_input()], model_version="2").get_response()["model_version"] == "2"


def tensor_input():
    inp = httpclient.InferInput("input", [1, 1, 28, 28], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 1, 28, 28), np.float32))
    return inp


def test_pin_a_version_and_return_to_latest(server):
    base = server["base"]
    status, body = post(base, f"/v2/repository/models/{MODEL}/load", {"parameters": {"version": "1"}}, AUTH)
    assert status == 200, body
    assert classify(base)["version"] == "1"
    status, body = post(base, f"/admin/models/{MODEL}/load", {"version": "latest"}, AUTH)
    assert status == 200 and body["version"] == "2" and body["previous_version"] == "1", body
    status, body = post(base, f"/v2/repository/models/{MODEL}/load", {"parameters": {"version": "9"}}, AUTH)
    assert status == 404 and "no version \"9\"" in body["error"] and "1, 2" in body["error"], body
    assert classify(base)["version"] == "2"


def corrupt_onnx(d: Path):
    (d / "step.onnx").write_bytes(b"this is not an ONNX model")


def bad_manifest(d: Path):
    m = json.loads((d / "manifest.json").read_text())
    m["timesteps"] = 0
    (d / "manifest.json").write_text(json.dumps(m))


def wrong_golden(d: Path):
    g = json.loads((d / "golden.json").read_text())
    g["samples"][0]["class_id"] = (g["samples"][0]["class_id"] + 1) % 10
    (d / "golden.json").write_text(json.dumps(g))


@pytest.mark.parametrize("version,mutate,reason", [
    (3, corrupt_onnx, "step.onnx"),
    (4, bad_manifest, "manifest.json"),
    (5, wrong_golden, "golden check failed"),
])
def test_a_broken_version_leaves_the_old_one_serving(server, version, mutate, reason):
    base = server["base"]
    serving = classify(base)["version"]
    version_dir(server["root"], version, mutate)
    status, body = post(base, f"/v2/repository/models/{MODEL}/load", {}, AUTH)
    assert status == 400 and reason in body["error"], body
    rows = index(base)
    assert rows[(MODEL, str(version))]["state"] == "UNAVAILABLE"
    assert reason in rows[(MODEL, str(version))]["reason"]
    assert classify(base)["version"] == serving
    assert reason in server["log"].read_text()
    shutil.rmtree(server["root"] / MODEL / str(version))


def test_unload_then_load_again(server):
    base = server["base"]
    grpc = grpcclient.InferenceServerClient(server["grpc"])
    grpc.unload_model(MODEL, headers=GRPC_AUTH)
    rows = index(base)
    assert all(r["state"] == "UNAVAILABLE" for (n, _), r in rows.items() if n == MODEL)
    req = urllib.request.Request(f"{base}/v1/models/{MODEL}/classify", data=PNG, headers={"content-type": "image/png"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req)
    assert e.value.code == 404 and "not loaded" in e.value.read().decode()
    grpc.load_model(MODEL, headers=GRPC_AUTH)
    assert classify(base)["version"] == "2"
    metrics = urllib.request.urlopen(f"{base}/metrics").read().decode()
    assert f'seenn_model_serving_version{{model="{MODEL}",version="2"}} 1' in metrics
    assert f'seenn_model_loads_total{{model="{MODEL}",result="failed"}} 3' in metrics
    assert f'seenn_model_unloads_total{{model="{MODEL}"}} 1' in metrics


def test_poll_mode_picks_up_a_version_renamed_into_place(tmp_path):
    root = tmp_path / "models"
    (root / MODEL).mkdir(parents=True)
    version_dir(root, 1)
    s = start(tmp_path, root, "--model-control", "poll", "--repository-poll-secs", "0.3")
    try:
        status, body = post(s["base"], f"/v2/repository/models/{MODEL}/load", {}, AUTH)
        assert status == 409 and "poll" in body["error"], body
        version_dir(root, 2, corrupt_onnx)
        deadline = time.time() + 30
        while index(s["base"])[(MODEL, "2")]["state"] != "UNAVAILABLE" or \
                "step.onnx" not in index(s["base"])[(MODEL, "2")]["reason"]:
            assert time.time() < deadline, index(s["base"])
            time.sleep(0.2)
        assert classify(s["base"])["version"] == "1"
        version_dir(root, 3)
        while classify(s["base"])["version"] != "3":
            assert time.time() < deadline + 30, index(s["base"])
            time.sleep(0.2)
    finally:
        stop(s)


def test_model_control_none_refuses_changes(tmp_path):
    root = tmp_path / "models"
    (root / MODEL).mkdir(parents=True)
    version_dir(root, 1)
    s = start(tmp_path, root, "--model-control", "none")
    try:
        status, body = post(s["base"], f"/v2/repository/models/{MODEL}/unload", {}, AUTH)
        assert status == 409 and "--model-control none" in body["error"], body
        assert index(s["base"])[(MODEL, "1")]["state"] == "READY"
    finally:
        stop(s)
