"""The Open Inference Protocol (KServe v2) against the real server, through the real Triton clients
(`tritonclient[http]` and `tritonclient[grpc]` from PyPI): health, metadata, inference on FP32 and
BYTES inputs (JSON and binary), N > 1, parameters and errors. Answers are checked against the
server's own /v1 API on the same images."""

import base64
import json
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
import seenn_server  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MODEL = "fashion-mnist"
PACKAGE = REPO / "models" / MODEL
MANIFEST = json.loads((PACKAGE / "manifest.json").read_text())
SAMPLES = sorted((PACKAGE / "samples").glob("*.png"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = seenn_server.start(["--models", str(REPO / "models"), "--state-dir", str(tmp_path_factory.mktemp("state")),
                            "--default-model", MODEL])
    yield s
    seenn_server.stop(s)


@pytest.fixture(scope="module")
def http(server):
    c = httpclient.InferenceServerClient(server["http"])
    yield c
    c.close()


@pytest.fixture(scope="module")
def grpc(server):
    c = grpcclient.InferenceServerClient(server["grpc"])
    yield c
    c.close()


def v1_classify(server, png: bytes, **opts) -> dict:
    q = "&".join(f"{k}={v}" for k, v in opts.items())
    req = urllib.request.Request(f"{server['base']}/v1/models/{MODEL}/classify?{q}", data=png,
                                 headers={"content-type": "image/png"})
    return json.loads(urllib.request.urlopen(req).read())


def preprocess(path: Path) -> np.ndarray:
    """The manifest's preprocessing: pixel × scale, then (x − mean) / std, in float32."""
    spec = MANIFEST["input"]
    x = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    x = x * np.float32(spec["scale"])
    x = (x - np.float32(spec["mean"][0])) / np.float32(spec["std"][0])
    return x.reshape(1, spec["height"], spec["width"]).astype(np.float32)


def pngs(n: int, start: int = 0) -> list[bytes]:
    return [p.read_bytes() for p in SAMPLES[start:start + n]]


def image_input(mod, images: list[bytes], binary: bool = True):
    if binary:
        arr = np.array(images, dtype=np.object_)
    else:
        # JSON carries BYTES as strings: encoded images go as base64.
        arr = np.array([base64.b64encode(b).decode() for b in images], dtype=np.object_)
    inp = mod.InferInput("image", [len(images)], "BYTES")
    if mod is httpclient:
        inp.set_data_from_numpy(arr, binary_data=binary)
    else:
        inp.set_data_from_numpy(arr)
    return inp


def tensor_input(mod, x: np.ndarray, binary: bool = True):
    inp = mod.InferInput("input", list(x.shape), "FP32")
    if mod is httpclient:
        inp.set_data_from_numpy(x, binary_data=binary)
    else:
        inp.set_data_from_numpy(x)
    return inp


@pytest.mark.parametrize("proto", ["http", "grpc"])
def test_health_and_metadata(proto, request):
    c = request.getfixturevalue(proto)
    assert c.is_server_live()
    assert c.is_server_ready()
    assert c.is_model_ready(MODEL)
    assert c.is_model_ready(MODEL, MANIFEST["version"])
    assert c.is_model_ready("fashion-mnist-qcfs")
    meta = c.get_server_metadata()
    md = c.get_model_metadata(MODEL)
    md_v = c.get_model_metadata(MODEL, MANIFEST["version"])
    if proto == "grpc":
        from google.protobuf.json_format import MessageToDict
        meta = MessageToDict(meta, preserving_proto_field_name=True)
        md = MessageToDict(md, preserving_proto_field_name=True)
        md_v = MessageToDict(md_v, preserving_proto_field_name=True)
    assert meta["name"] == "seenn-serve"
    assert md == md_v
    assert md["name"] == MODEL and md["versions"] == [MANIFEST["version"]]
    spec = MANIFEST["input"]
    inputs = {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in md["inputs"]}
    assert inputs == {"input": ("FP32", [-1, spec["channels"], spec["height"], spec["width"]]),
                      "image": ("BYTES", [-1])}
    outputs = {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in md["outputs"]}
    assert outputs == {"class_ids": ("INT64", [-1]), "probabilities": ("FP32", [-1, len(MANIFEST["labels"])]),
                       "timesteps": ("INT32", [-1]), "labels": ("BYTES", [-1])}
    # Unknown models and versions.
    if proto == "http":
        assert not c.is_model_ready("no-such-model")
        assert not c.is_model_ready(MODEL, "99")
    else:
        with pytest.raises(InferenceServerException, match="not found"):
            c.is_model_ready("no-such-model")
        with pytest.raises(InferenceServerException, match="no version"):
            c.is_model_ready(MODEL, "99")
    with pytest.raises(InferenceServerException, match="not found"):
        c.get_model_metadata("no-such-model")


@pytest.mark.parametrize("proto,binary", [("http", True), ("http", False), ("grpc", True)])
def test_bytes_batch_exits_per_input_like_v1(proto, binary, request, server):
    """N = 12 encoded images in one request: each exits on its own, exactly as 12 /v1 requests do."""
    c = request.getfixturevalue(proto)
    mod = httpclient if proto == "http" else grpcclient
    images = pngs(12)
    r = c.infer(MODEL, [image_input(mod, images, binary)], parameters={"alpha": 0.94}, request_id="batch-12")
    got_id = r.get_response()["id"] if proto == "http" else r.get_response().id
    assert got_id == "batch-12"
    ids, probs, ts, labels = (r.as_numpy(n) for n in ("class_ids", "probabilities", "timesteps", "labels"))
    assert ids.dtype == np.int64 and ids.shape == (12,)
    assert probs.dtype == np.float32 and probs.shape == (12, len(MANIFEST["labels"]))
    assert ts.dtype == np.int32 and ts.shape == (12,)
    assert labels.shape == (12,)
    want = [v1_classify(server, png, alpha=0.94, top_k=len(MANIFEST["labels"])) for png in images]
    assert ids.tolist() == [w["class_id"] for w in want]
    assert ts.tolist() == [w["timesteps_used"] for w in want]
    assert [lb.decode() for lb in labels] == [w["label"] for w in want]
    for row, w in zip(probs, want):
        expect = np.zeros(len(MANIFEST["labels"]), np.float32)
        for s in w["top_k"]:
            expect[s["class_id"]] = s["probability"]
        np.testing.assert_allclose(row, expect, rtol=1e-6, atol=1e-7)
        assert abs(row.sum() - 1.0) < 1e-4
    assert len(set(ts.tolist())) > 1, "these samples exit at different timesteps"


@pytest.mark.parametrize("proto,binary", [("http", True), ("http", False), ("grpc", True)])
def test_fp32_tensor_matches_encoded_image(proto, binary, request):
    """The manifest's preprocessing done by the client gives the same answers as sending the PNGs."""
    c = request.getfixturevalue(proto)
    mod = httpclient if proto == "http" else grpcclient
    x = np.stack([preprocess(p) for p in SAMPLES[:6]])
    by_tensor = c.infer(MODEL, [tensor_input(mod, x, binary)])
    by_image = c.infer(MODEL, [image_input(mod, pngs(6))])
    for name in ("class_ids", "timesteps"):
        assert by_tensor.as_numpy(name).tolist() == by_image.as_numpy(name).tolist()
    np.testing.assert_allclose(by_tensor.as_numpy("probabilities"), by_image.as_numpy("probabilities"), atol=1e-5)


@pytest.mark.parametrize("proto", ["http", "grpc"])
def test_parameters_and_output_selection(proto, request):
    c = request.getfixturevalue(proto)
    mod = httpclient if proto == "http" else grpcclient
    inp = image_input(mod, pngs(8, start=20))
    t = MANIFEST["timesteps"]
    fixed = c.infer(MODEL, [inp], parameters={"rule": "fixed", "max_timesteps": 2})
    assert fixed.as_numpy("timesteps").tolist() == [2] * 8
    low = c.infer(MODEL, [inp], parameters={"alpha": 0.05})
    assert low.as_numpy("timesteps").tolist() == [1] * 8
    full = c.infer(MODEL, [inp], parameters={"rule": "fixed"})
    assert full.as_numpy("timesteps").tolist() == [t] * 8
    policy = c.infer(MODEL, [inp], parameters={"rule": "policy"})
    assert all(1 <= v <= t for v in policy.as_numpy("timesteps"))
    only = c.infer(MODEL, [inp], outputs=[mod.InferRequestedOutput("timesteps"),
                                          mod.InferRequestedOutput("class_ids")],
                   parameters={"rule": "fixed", "max_timesteps": 3})
    assert only.as_numpy("timesteps").tolist() == [3] * 8
    assert only.as_numpy("class_ids").shape == (8,)
    assert only.as_numpy("probabilities") is None
    assert only.as_numpy("labels") is None


def expect_error(c, proto, match, code_http, code_grpc, **kw):
    with pytest.raises(InferenceServerException, match=match) as e:
        c.infer(**kw)
    if proto == "http":
        assert e.value.status() == str(code_http)
    else:
        assert e.value.status() == f"StatusCode.{code_grpc}"


@pytest.mark.parametrize("proto", ["http", "grpc"])
def test_errors(proto, request):
    c = request.getfixturevalue(proto)
    mod = httpclient if proto == "http" else grpcclient
    good = image_input(mod, pngs(1))
    expect_error(c, proto, "not found", 404, "NOT_FOUND", model_name="no-such-model", inputs=[good])
    expect_error(c, proto, "no version", 404, "NOT_FOUND", model_name=MODEL, model_version="7", inputs=[good])
    expect_error(c, proto, "unknown request parameter \"apha\"; accepted: alpha", 400, "INVALID_ARGUMENT",
                 model_name=MODEL, inputs=[good], parameters={"apha": 0.5})
    expect_error(c, proto, "alpha 1.5 is out of range", 400, "INVALID_ARGUMENT",
                 model_name=MODEL, inputs=[good], parameters={"alpha": 1.5})
    expect_error(c, proto, "max_timesteps 9 is out of range", 400, "INVALID_ARGUMENT",
                 model_name=MODEL, inputs=[good], parameters={"max_timesteps": 9})
    expect_error(c, proto, "unknown exit rule|accepted", 400, "INVALID_ARGUMENT",
                 model_name=MODEL, inputs=[good], parameters={"rule": "sometimes"})
    wrong_shape = tensor_input(mod, np.zeros((2, 1, 28, 27), np.float32))
    expect_error(c, proto, r"this model takes \[N, 1, 28, 28\]", 400, "INVALID_ARGUMENT",
                 model_name=MODEL, inputs=[wrong_shape])
    wrong_type = mod.InferInput("input", [1, 1, 28, 28], "FP64")
    wrong_type.set_data_from_numpy(np.zeros((1, 1, 28, 28), np.float64))
    expect_error(c, proto, "accepted: FP32, UINT8 or BOOL", 400, "INVALID_ARGUMENT", model_name=MODEL, inputs=[wrong_type])
    expect_error(c, proto, "unknown output", 400, "INVALID_ARGUMENT", model_name=MODEL, inputs=[good],
                 outputs=[mod.InferRequestedOutput("logits")])
    not_an_image = image_input(mod, [b"not an image", pngs(1)[0]])
    expect_error(c, proto, "input row 0: .*image", 415, "INVALID_ARGUMENT", model_name=MODEL, inputs=[not_an_image])
    # The server keeps serving after all of that.
    assert c.infer(MODEL, [good]).as_numpy("class_ids").shape == (1,)


def test_rest_errors_are_json_with_error_field(server):
    """Raw HTTP: malformed bodies get a 4xx and {"error": ...} that says what is accepted."""
    def post(body: bytes, headers=None):
        req = urllib.request.Request(f"{server['base']}/v2/models/{MODEL}/infer", data=body,
                                     headers={"content-type": "application/json", **(headers or {})})
        try:
            urllib.request.urlopen(req)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())
        raise AssertionError("expected an error")

    code, body = post(b"{not json")
    assert code == 400 and "malformed inference request JSON" in body["error"]
    code, body = post(b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]}')
    assert code == 400 and "not base64" in body["error"]
    code, body = post(b'{"inputs": []}', headers={"Inference-Header-Content-Length": "500"})
    assert code == 400 and "Inference-Header-Content-Length is 500" in body["error"]
    code, body = post(b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [1, 2]}]}')
    assert code == 400 and "has 2 values" in body["error"]
