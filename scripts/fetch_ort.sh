#!/usr/bin/env bash
# Put ONNX Runtime's shared library where the server looks for it (.ort/lib/libonnxruntime.so),
# taken from the pinned onnxruntime wheel on PyPI. No Python environment is needed.
# ORT_PACKAGE=onnxruntime-gpu takes the CUDA build (deploy/Dockerfile.cuda), with its provider libraries.
set -euo pipefail
cd "$(dirname "$0")/.."
ORT_VERSION=${ORT_VERSION:-1.31.1}
PACKAGE=${ORT_PACKAGE:-onnxruntime}
DEST=${ORT_DEST:-.ort}
LIB="$DEST/lib/libonnxruntime.so.$ORT_VERSION"
if [ -f "$LIB" ]; then exit 0; fi
command -v pip3 >/dev/null || command -v pip >/dev/null || { apt-get install -y -qq python3-pip >/dev/null; }
PIP=$(command -v pip3 || command -v pip)
command -v unzip >/dev/null || apt-get install -y -qq unzip >/dev/null
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PIP" download --quiet --no-deps --only-binary=:all: --python-version 3.11 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$tmp" "$PACKAGE==$ORT_VERSION"
wheel=$(ls "$tmp"/*.whl)
unzip -q -o "$wheel" 'onnxruntime/capi/libonnxruntime*.so*' -d "$tmp/x"
mkdir -p "$DEST/lib"
cp "$tmp"/x/onnxruntime/capi/libonnxruntime*.so* "$DEST/lib/"
# Relative, so the folder can be copied anywhere (an image stage, another machine) and still resolve.
ln -sf "libonnxruntime.so.$ORT_VERSION" "$DEST/lib/libonnxruntime.so"
test -e "$DEST/lib/libonnxruntime.so" || { echo "fetch_ort: $DEST/lib/libonnxruntime.so does not resolve" >&2; exit 1; }
echo "ONNX Runtime $ORT_VERSION ($PACKAGE) -> $DEST/lib"
