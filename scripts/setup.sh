#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian 12 machine, without asking:
#   scripts/setup.sh server   ONNX Runtime library only (enough for `make run`)
#   scripts/setup.sh image    buildah and debootstrap only (enough for `make test-image`)
#   scripts/setup.sh all      + Debian packages (PyTorch CPU, Fashion-MNIST, Prometheus/promtool,
#                             Alertmanager (amtool), docker-compose, buildah, debootstrap) and the Python
#                             virtual environment (.venv)
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}

apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "apt: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

if [ "$what" = image ]; then
  # make test-image: buildah (builds and runs with --isolation chroot) and debootstrap (local bases).
  apt_install buildah debootstrap
  exit 0
fi

if [ "$what" = server ]; then
  command -v unzip >/dev/null || apt_install unzip
  command -v pip3 >/dev/null || command -v pip >/dev/null || apt_install python3-pip
  scripts/fetch_ort.sh
  exit 0
fi

pkgs=(unzip python3-venv python3-pip dataset-fashion-mnist prometheus docker-compose python3-matplotlib python3-tqdm
      python3-pil python3-yaml chromium chromium-driver buildah debootstrap prometheus-alertmanager)
command -v kubectl >/dev/null || pkgs+=(kubernetes-client)
# Use an importable torch if the system Python has one, else Debian's CPU build.
/usr/bin/python3 -c "import torch" 2>/dev/null || pkgs+=(python3-torch)
apt_install "${pkgs[@]}"
scripts/fetch_ort.sh

if [ ! -x .venv/bin/kubernetes-validate ] || ! .venv/bin/python -c "import torch, onnxruntime, pytest, yaml, selenium, tritonclient.http, tritonclient.grpc, openapi_spec_validator" 2>/dev/null; then
  /usr/bin/python3 -m venv --system-site-packages .venv
  .venv/bin/pip install --quiet --disable-pip-version-check "numpy<2" "onnxruntime==1.31.1" tqdm pillow pytest ruff \
    kubernetes-validate selenium "tritonclient[http,grpc]==2.73.0" \
    "openapi-spec-validator==0.9.0"
fi
# NIR import (seenn-train import-nir) and the snnTorch example. --no-deps: nirtorch and snntorch would
# pull PyPI's torch 2.x (the CUDA build, GBs); Debian's torch 1.13 runs them.
if ! .venv/bin/python -c "import nir, h5py, snntorch, nirtorch" 2>/dev/null; then
  .venv/bin/pip install --quiet --disable-pip-version-check h5py "nir==1.0.8"
  .venv/bin/pip install --quiet --disable-pip-version-check --no-deps "snntorch==1.0.0" "nirtorch==2.6"
fi
# The headline benchmark's Python baseline server (benchmarks/python_baseline.py).
if ! .venv/bin/python -c "import fastapi, uvicorn" 2>/dev/null; then
  .venv/bin/pip install --quiet --disable-pip-version-check "fastapi==0.165.0" "uvicorn==0.55.0"
fi
# The trainer as a command: .venv/bin/seenn-train and `python -m seenn_train` from any directory.
if [ ! -x .venv/bin/seenn-train ]; then
  .venv/bin/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e training
fi
# `make deny`: licences, advisories and sources of every crate (built from crates.io, about 10 min once).
if ! cargo deny --version >/dev/null 2>&1; then
  echo "cargo: installing cargo-deny"
  cargo install --quiet --locked cargo-deny@0.20.2
fi
.venv/bin/python -c "import torch, onnxruntime; print('python env: torch', torch.__version__, 'onnxruntime', onnxruntime.__version__)"
