#!/usr/bin/env bash
# Retrain and re-export the committed model packages from scratch (see models/README.md).
#   EPOCHS / QCFS_EPOCHS / POLICY_EPOCHS override the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export PYTHONPATH=training
EPOCHS=${EPOCHS:-6}
QCFS_EPOCHS=${QCFS_EPOCHS:-5}
POLICY_EPOCHS=${POLICY_EPOCHS:-4}
RUNS=${RUNS:-runs}

$PY -m seenn_train train --out "$RUNS/fashion-mnist" --timesteps 4 --epochs "$EPOCHS" --surrogate triangle --width 32
$PY -m seenn_train convert --out "$RUNS/fashion-mnist-qcfs" --timesteps 32 --epochs "$QCFS_EPOCHS" --levels 8 --width 32
$PY -m seenn_train policy --run "$RUNS/fashion-mnist" --epochs "$POLICY_EPOCHS" --betas 0.1,0.5,1,2,5,10
$PY -m seenn_train export --run "$RUNS/fashion-mnist" --out models/fashion-mnist
$PY -m seenn_train export --run "$RUNS/fashion-mnist-qcfs" --out models/fashion-mnist-qcfs
