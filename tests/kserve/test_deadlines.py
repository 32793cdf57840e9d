"""Answers by the deadline against the real server: over HTTP (`timeout_ms`, the `x-timeout-ms`
header) and the Open Inference Protocol through Triton's own clients (`timeout=`, microseconds,
over REST and gRPC). A request whose next timestep would miss its deadline is answered with its
prediction so far and flagged; one whose deadline passes before its first timestep is a 504, and
so is one with no answer a step's time after its deadline.

The converted model (T = 32) runs each request alone here: a deadline at a third of a full
32-step run falls well after the first step and well before the last."""

import json
import statistics
import sys
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
MODEL = "fashion-mnist-qcfs"
T = json.loads((REPO / "models" / MODEL / "manifest.json").read_text())["timesteps"]
PNG = sorted((REPO / "models" / MODEL / "samples").glob("*.png"))[0].read_bytes()
# A deadline can land on either side of a step boundary on a busy host, and a step that runs long
# there can turn an early answer into a 504: a few tries, one must hit.
TRIES = 10


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = seenn_server.start(["--models", str(REPO / "models"), "--state-dir", str(tmp_path_factory.mktemp("state")),
                            "--default-model", MODEL, "--engine-workers", "1"])
    yield s
    seenn_server.stop(s)


def classify(server, headers=None, **query) -> tuple[int, dict]:
    q = "&".join(f"{k}={v}" for k, v in query.items())
    req = urllib.request.Request(f"{server['base']}/v1/models/{MODEL}/classify?{q}", data=PNG,
                                 headers={"content-type": "image/png", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def third_ms(server) -> float:
    """A third of the server's time for a full T-step run of one request alone (median of 5)."""
    totals = []
    for _ in range(5):
        status, r = classify(server, rule="fixed", max_timesteps=T)
        assert status == 200 and r["timesteps_used"] == T and "deadline_exit" not in r
        totals.append(r["timings"]["total_ms"])
    return statistics.median(totals) / 3


def metric(server, name: str, **labels) -> float:
    text = urllib.request.urlopen(f"{server['base']}/metrics").read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{"):
            got = ",".join(sorted(line[len(name) + 1:line.index("}")].split(",")))
            if got == want:
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name}{{{want}}}")


def is_deadline(e: InferenceServerException) -> bool:
    """A 504 over REST, DEADLINE_EXCEEDED over gRPC."""
    return "504" in str(e.status()) or "DEADLINE_EXCEEDED" in str(e.status())


def check_deadline_exit(r: dict) -> None:
    assert r["deadline_exit"] is True
    assert 1 <= r["timesteps_used"] < T
    # The answer is the prediction after the steps it ran: the last trace's class and score.
    last = r["trajectory"][-1]
    assert last["t"] == r["timesteps_used"]
    assert last["class_id"] == r["class_id"]
    assert abs(last["probabilities"][r["class_id"]] - r["confidence"]) < 1e-5


@pytest.mark.parametrize("form", ["query", "header"])
def test_http_answers_by_the_deadline(server, third_ms, form):
    before = metric(server, "seenn_deadline_exits_total", model=MODEL, rule="fixed")
    hits = []
    for _ in range(TRIES):
        ms = f"{third_ms:.3f}"
        if form == "query":
            status, r = classify(server, rule="fixed", max_timesteps=T, explain="true", timeout_ms=ms)
        else:
            status, r = classify(server, {"x-timeout-ms": ms}, rule="fixed", max_timesteps=T, explain="true")
        if status == 504:
            assert r["code"] == "deadline_exceeded", r
            continue
        assert status == 200, r
        if r.get("deadline_exit"):
            check_deadline_exit(r)
            hits.append(r)
        else:
            assert r["timesteps_used"] == T
    assert hits, f"no deadline exit in {TRIES} requests with a {third_ms:.2f} ms deadline"
    after = metric(server, "seenn_deadline_exits_total", model=MODEL, rule="fixed")
    assert after - before == len(hits)


def test_http_deadline_before_the_first_step_is_504(server):
    status, r = classify(server, rule="fixed", max_timesteps=T, timeout_ms="0.001")
    assert status == 504, r
    assert r["code"] == "deadline_exceeded"
    status, r = classify(server, timeout_ms="-3")
    assert status == 400 and "accepted: a number of milliseconds" in r["error"], r
    status, r = classify(server, {"x-timeout-ms": "soon"})
    assert status == 400 and "timeout_ms" in r["error"], r


@pytest.mark.parametrize("proto", ["http", "grpc"])
def test_open_inference_protocol_timeout_parameter(server, third_ms, proto):
    mod = httpclient if proto == "http" else grpcclient
    c = mod.InferenceServerClient(server[proto])
    inp = mod.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array([PNG], dtype=np.object_))
    hits = 0
    try:
        for _ in range(TRIES):
            try:
                r = c.infer(MODEL, [inp], parameters={"rule": "fixed", "max_timesteps": T},
                            timeout=int(third_ms * 1e3))
            except InferenceServerException as e:
                assert is_deadline(e), e
                continue
            steps = int(r.as_numpy("timesteps")[0])
            resp = r.get_response()
            if proto == "http":
                exits = resp.get("parameters", {}).get("deadline_exits", 0)
            else:
                exits = resp.parameters["deadline_exits"].int64_param if "deadline_exits" in resp.parameters else 0
            if exits:
                assert exits == 1 and 1 <= steps < T
                hits += 1
            else:
                assert steps == T
        assert hits, f"no deadline exit in {TRIES} requests with a {third_ms:.2f} ms deadline"
        # Without a deadline the same request runs all T steps and carries no parameter.
        r = c.infer(MODEL, [inp], parameters={"rule": "fixed", "max_timesteps": T})
        assert int(r.as_numpy("timesteps")[0]) == T
    finally:
        c.close()
