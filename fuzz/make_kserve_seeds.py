"""Seed inputs for the `kserve_request` fuzz target (framing in fuzz/kserve_harness.rs): REST
bodies as tritonclient[http] sends them (JSON, binary tensor data) and protobuf ModelInferRequest
messages as tritonclient[grpc] sends them.

    .venv/bin/python fuzz/make_kserve_seeds.py
"""

import base64
import json
import struct
from pathlib import Path

import numpy as np
from tritonclient.grpc import service_pb2

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "seeds" / "kserve_request"
PNG = sorted((ROOT.parent / "models" / "fashion-mnist" / "samples").glob("*.png"))[0].read_bytes()


def rest(body: bytes, header_len: int | None = None) -> bytes:
    if header_len is None:
        return b"\x00" + body
    return b"\x02" + struct.pack("<H", header_len) + body


def grpc(msg) -> bytes:
    return b"\x01" + msg.SerializeToString()


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    x = np.linspace(-1, 1, 784, dtype=np.float32).reshape(1, 1, 28, 28)
    seeds = {}
    seeds["rest_bytes_json"] = rest(json.dumps({
        "id": "1", "parameters": {"alpha": 0.9, "rule": "confidence"},
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(PNG).decode()]}],
        "outputs": [{"name": "class_ids"}, {"name": "timesteps"}]}).encode())
    seeds["rest_fp32_json"] = rest(json.dumps({
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": x.ravel().tolist()}],
        "parameters": {"max_timesteps": 2, "rule": "fixed"}}).encode())
    raw = struct.pack("<I", len(PNG)) + PNG
    head = json.dumps({
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(raw)}}],
        "parameters": {"binary_data_output": True},
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
    seeds["rest_bytes_binary"] = rest(head + raw, len(head))
    fraw = x.tobytes()
    head = json.dumps({
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28],
                    "parameters": {"binary_data_size": len(fraw)}}]}).encode()
    seeds["rest_fp32_binary"] = rest(head + fraw, len(head))

    req = service_pb2.ModelInferRequest(model_name="fashion-mnist", id="g1")
    req.parameters["alpha"].double_param = 0.9
    t = req.inputs.add(name="image", datatype="BYTES", shape=[1])
    req.raw_input_contents.append(raw)
    seeds["grpc_bytes_raw"] = grpc(req)
    req = service_pb2.ModelInferRequest(model_name="fashion-mnist")
    req.parameters["rule"].string_param = "fixed"
    req.parameters["max_timesteps"].int64_param = 3
    t = req.inputs.add(name="input", datatype="FP32", shape=[1, 1, 28, 28])
    t.contents.fp32_contents.extend(x.ravel().tolist())
    req.outputs.add(name="labels")
    seeds["grpc_fp32_contents"] = grpc(req)
    req = service_pb2.ModelInferRequest(model_name="fashion-mnist")
    t = req.inputs.add(name="image", datatype="BYTES", shape=[1])
    t.contents.bytes_contents.append(PNG)
    seeds["grpc_bytes_contents"] = grpc(req)
    for name, data in seeds.items():
        (OUT / name).write_bytes(data)
    print(f"{len(seeds)} seeds in {OUT.relative_to(ROOT.parent)}")


if __name__ == "__main__":
    main()
