"""Writes the hand-made starting corpus of every fuzz target, framed as in fuzz/harness.rs.

    python fuzz/make_seeds.py OUT_DIR        # writes OUT_DIR/<target>/<name>

Sources are the committed packages: the sample images (and copies of them converted to JPEG,
WebP, BMP and GIF with Pillow), manifest.json and calibration.json, plus an exit-policy state file
and JSON/multipart request bodies built from a sample. The committed corpus under fuzz/seeds/ is
these seeds merged with what the fuzzers found, minimized with `cargo fuzz cmin`.
"""

import base64
import io
import json
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
FASHION = REPO / "models" / "fashion-mnist"
PACKAGES = [FASHION, REPO / "models" / "fashion-mnist-qcfs", REPO / "models-bench" / "resnet19-bench"]

# Indexes into CONTENT_TYPES and HINTS of fuzz/harness.rs.
CT = {"png": 0, "jpeg": 1, "webp": 2, "bmp": 3, "gif": 4, "octet": 5, "json": 6, "multipart": 7, "text": 8, "none": 9}
HINT = {None: 0, "png": 1, "jpeg": 2, "webp": 3, "bmp": 4, "gif": 5}
MANIFEST, CALIBRATION, STATE = 0, 1, 2


def encode(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def images():
    """(name, format, bytes): samples as committed plus converted and re-encoded copies."""
    gray = sorted((FASHION / "samples").glob("*.png"))
    rgb = sorted((REPO / "models-bench" / "resnet19-bench" / "samples").glob("*.png"))
    out = [(p.stem, "png", p.read_bytes()) for p in gray[:3] + rgb[:1]]
    g = Image.open(gray[0]).convert("L")
    c = Image.open(rgb[0]).convert("RGB")
    for tag, img in (("gray", g), ("rgb", c)):
        out += [
            (f"{tag}-baseline", "jpeg", encode(img, "JPEG", quality=90)),
            (f"{tag}-progressive", "jpeg", encode(img, "JPEG", quality=75, progressive=True)),
            (f"{tag}-lossy", "webp", encode(img, "WEBP", quality=80)),
            (f"{tag}-lossless", "webp", encode(img, "WEBP", lossless=True)),
            (tag, "bmp", encode(img, "BMP")),
            (tag, "gif", encode(img, "GIF")),
        ]
    out += [
        ("rgba", "png", encode(c.convert("RGBA"), "PNG")),
        ("palette", "png", encode(c.convert("P"), "PNG")),
        ("gray16", "png", encode(g.convert("I;16"), "PNG")),
        ("56x56", "png", encode(g.resize((56, 56)), "PNG")),
        ("rgba-lossy", "webp", encode(c.convert("RGBA"), "WEBP", quality=50)),
        ("palette", "bmp", encode(c.convert("P"), "BMP")),
        ("1x1", "png", encode(Image.new("L", (1, 1), 255), "PNG")),
        ("64x64", "gif", encode(g.resize((64, 64)), "GIF")),
    ]
    return out


def multipart(fields):
    """multipart/form-data with boundary X: (name, content type or None, bytes)."""
    body = b""
    for name, ctype, data in fields:
        body += b"--X\r\n"
        if ctype:
            body += f'Content-Disposition: form-data; name="{name}"; filename="x"\r\n'.encode()
            body += f"Content-Type: {ctype}\r\n\r\n".encode()
        else:
            body += f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        body += data + b"\r\n"
    return body + b"--X--\r\n"


def http(ct, query, body, small=False):
    q = query.encode()
    assert len(q) < 256
    return bytes([CT[ct] | (0x10 if small else 0), len(q)]) + q + body


def main():
    out = Path(sys.argv[1])
    seeds = {"image_preprocess": {}, "http_request": {}, "package_files": {}}

    imgs = images()
    for name, fmt, data in imgs:
        seeds["image_preprocess"][f"{fmt}-{name}"] = bytes([HINT[None]]) + data
        seeds["image_preprocess"][f"{fmt}-{name}-hint-resnet"] = bytes([HINT[fmt] | 0x08]) + data
    seeds["image_preprocess"]["png-over-pixel-limit"] = bytes([0x10]) + imgs[0][2]

    sample = imgs[0][2]
    web = {fmt: data for name, fmt, data in imgs if name.startswith("gray")}
    s = seeds["http_request"]
    s["raw-png"] = http("png", "alpha=0.9&top_k=3", sample)
    for fmt in ("jpeg", "webp", "bmp", "gif"):
        s[f"raw-{fmt}"] = http(fmt, "", web[fmt])
    s["raw-octet"] = http("octet", "rule=fixed&max_timesteps=2", sample)
    s["raw-no-type"] = http("none", "explain=true&model=fashion-mnist&timeout_ms=100", sample)
    s["raw-text-plain"] = http("text", "", sample)
    s["raw-over-limit"] = http("png", "", sample + bytes(600), small=True)
    b64 = base64.b64encode(sample).decode()
    s["json-image"] = http("json", "", json.dumps({
        "image": b64, "model": "fashion-mnist", "rule": "confidence", "alpha": 0.9,
        "max_timesteps": 4, "top_k": 3, "explain": True, "timeout_ms": 1000}).encode())
    tensor = [round(v / 255 - 0.5, 3) for v in Image.open(FASHION / "samples" / "000_ankle-boot.png").convert("L").getdata()]
    s["json-tensor"] = http("json", "", json.dumps({"tensor": tensor, "alpha": 0.9}).encode())
    s["json-tensor-short"] = http("json", "top_k=1", b'{"tensor":[0.5,-1e39,2]}')
    fields = [("image", "image/png", sample), ("alpha", None, b"0.9"), ("rule", None, b"confidence")]
    s["multipart"] = http("multipart", "", multipart(fields))
    s["multipart-webp"] = http("multipart", "top_k=2", multipart([("explain", None, b"true"), ("image", "image/webp", web["webp"])]))

    p = seeds["package_files"]
    for pkg in PACKAGES:
        m = (pkg / "manifest.json").read_bytes()
        t = json.loads(m)["timesteps"]
        p[f"manifest-{pkg.name}"] = bytes([MANIFEST]) + m
        if t <= 64:
            p[f"calibration-{pkg.name}"] = bytes([CALIBRATION, t - 1]) + (pkg / "calibration.json").read_bytes()
    p["state"] = bytes([STATE]) + json.dumps({"version": 1, "models": {
        "fashion-mnist": {"rule": "confidence", "alpha": 0.9, "timesteps": 4},
        "fashion-mnist-qcfs": {"rule": "fixed", "alpha": 1.0, "timesteps": 32},
        "resnet19-bench": {"rule": "policy", "alpha": 0.5, "timesteps": 2}}}, indent=2).encode()
    p["state-empty"] = bytes([STATE]) + b'{"version":1,"models":{}}'

    for target, files in seeds.items():
        d = out / target
        d.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (d / name).write_bytes(data)
        print(f"{target}: {len(files)} seeds, {sum(map(len, files.values()))} bytes")


if __name__ == "__main__":
    main()
