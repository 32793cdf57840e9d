#!/usr/bin/env bash
# Creates the per-framework virtual environments used by tests/nir/make_references.py.
#   .venv         (project venv, already has snntorch 1.0.0, nir 1.0.8, nirtorch 2.6, h5py)
#   .venv-sinabs  sinabs 3.1.3 + nir 1.0.4 + nirtorch 1.0 (nirtorch 2.6 needs nir>=1.0.5 API) on Debian torch 1.13
#   .venv-norse   norse 1.1.0 + nir 1.0.8 + nirtorch 2.6 (see NORSE_TORCH below)
# Usage: tests/nir/setup_frameworks.sh [sinabs|norse|all]   (PyPI only, no CUDA downloads)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=/usr/bin/python3           # Debian python with python3-torch 1.13 (CPU) in dist-packages
which="${1:-all}"

if [[ "$which" == sinabs || "$which" == all ]]; then
  rm -rf .venv-sinabs
  $PY -m venv --system-site-packages .venv-sinabs
  # samna (Speck hardware toolchain) and matplotlib are declared deps of sinabs but are
  # not needed for sinabs.from_nir / to_nir; --no-deps keeps Debian's torch 1.13.
  nice -n 10 .venv-sinabs/bin/pip install --disable-pip-version-check --no-deps \
      sinabs==3.1.3 nir==1.0.4 nirtorch==1.0 h5py pbr
  .venv-sinabs/bin/python -c "import sinabs, nir, nirtorch, torch; print('sinabs', sinabs.__version__, 'nir', nir.__version__, 'torch', torch.__version__)"
fi

if [[ "$which" == norse || "$which" == all ]]; then
  rm -rf .venv-norse
  $PY -m venv --system-site-packages .venv-norse
  # Norse 1.1.0 declares torch>=2.0 and torchvision; PyPI's torch 2.x for x86_64 is the CUDA
  # build (GBs, plus nvidia-* wheels). NORSE_TORCH picks the route (see tests/nir/README.md).
  # Route that works here: PyPI's torch 2.2.2 (cu121 build, --no-deps) plus exactly the nvidia-*
  # runtime wheels its libtorch_cuda.so links against (import fails without them: torch preloads
  # libcublas etc.). No triton, no torchvision (norse's NIR import/export does not use them).
  # About 4.4 GB on disk; it runs on the CPU.
  nice -n 10 .venv-norse/bin/pip install --disable-pip-version-check --no-deps \
      norse==1.1.0 nir==1.0.8 nirtorch==2.6 h5py torch==2.2.2 \
      nvidia-cuda-nvrtc-cu12==12.1.105 nvidia-cuda-runtime-cu12==12.1.105 \
      nvidia-cuda-cupti-cu12==12.1.105 nvidia-cudnn-cu12==8.9.2.26 nvidia-cublas-cu12==12.1.3.1 \
      nvidia-cufft-cu12==11.0.2.54 nvidia-curand-cu12==10.3.2.106 nvidia-cusolver-cu12==11.4.5.107 \
      nvidia-cusparse-cu12==12.1.0.106 nvidia-nccl-cu12==2.19.3 nvidia-nvtx-cu12==12.1.105 \
      nvidia-nvjitlink-cu12==12.1.105 'typing-extensions>=4.8' filelock sympy networkx jinja2 fsspec
  .venv-norse/bin/python -c "import norse, nir, torch; print('norse', norse.__version__ if hasattr(norse,'__version__') else '1.1.0', 'nir', nir.__version__, 'torch', torch.__version__)"
fi
