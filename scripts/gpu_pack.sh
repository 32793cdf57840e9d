#!/usr/bin/env bash
# Packs what a GPU run needs into parts that fit the device machine's per-call limit (64 MiB of
# ignored files per call, nothing downloadable there; see the project's GPU notes):
#   - the `seenn` binary built with `--features cuda` (target/cuda, stripped);
#   - from the onnxruntime-gpu 1.31.1 wheel: libonnxruntime.so.1.31.1,
#     libonnxruntime_providers_shared.so and libonnxruntime_providers_cuda.so;
#   - the Fashion-MNIST test split (t10k-*, 4.4 MB) for `seenn eval --data-dir`.
# One zstd-compressed tar, split into parts of PART_MIB (default 60) MiB: part k lands alone in
# `.gpu-part<k>/` (ignored by git), so call k carries only that folder. The CUDA and cuDNN libraries
# come from the GPU machine's own PyTorch (benchmarks/run.sh gpu finds them).
#
#   scripts/gpu_pack.sh            # here; prints the calls to make, in order
#   scripts/gpu_pack.sh unpack     # on the GPU machine, in the last call: joins the parts into .gpu/
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-pack}
ORT_VERSION=1.31.1

if [ "$mode" = unpack ]; then
  # shellcheck disable=SC2012
  parts=$(ls -d .gpu-part*/ 2>/dev/null | sort -V)
  [ -n "$parts" ] || { echo "no .gpu-part*/ folders here: send them first (scripts/gpu_pack.sh)" >&2; exit 1; }
  n=$(echo "$parts" | wc -l)
  want=$(cat .gpu-part1/count)
  [ "$n" = "$want" ] || { echo "$n of $want parts here; send the missing ones (calls back to back keep the machine warm)" >&2; exit 1; }
  mkdir -p .gpu
  for p in $parts; do cat "$p/part"; done | zstd -d -q | tar -x -C .gpu
  (cd .gpu && sha256sum -c --quiet SHA256SUMS)
  ls -la .gpu
  exit 0
fi

PART_MIB=${PART_MIB:-60}
CACHE=${CACHE:-.gpu-cache}
mkdir -p "$CACHE"
wheel=$(ls "$CACHE"/onnxruntime_gpu-"$ORT_VERSION"-*.whl 2>/dev/null | head -1 || true)
if [ -z "$wheel" ]; then
  .venv/bin/pip download --quiet --no-deps "onnxruntime-gpu==$ORT_VERSION" --only-binary=:all: \
    --python-version 3.11 --platform manylinux_2_28_x86_64 -d "$CACHE"
  wheel=$(ls "$CACHE"/onnxruntime_gpu-"$ORT_VERSION"-*.whl | head -1)
fi
echo "building seenn with --features cuda into target/cuda" >&2
CARGO_TARGET_DIR=target/cuda cargo build --release --locked --features cuda
stage=$(mktemp -d)
split_dir=$(mktemp -d)
trap 'rm -rf "$stage" "$split_dir"' EXIT
unzip -q -j "$wheel" "onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" \
  onnxruntime/capi/libonnxruntime_providers_shared.so onnxruntime/capi/libonnxruntime_providers_cuda.so -d "$stage"
strip -o "$stage/seenn" target/cuda/release/seenn
mkdir -p "$stage/fashion-mnist"
cp "${FASHION_DIR:-/usr/share/datasets/fashion-mnist}"/t10k-* "$stage/fashion-mnist/"
(cd "$stage" && find . -type f ! -name SHA256SUMS -exec sha256sum {} + >SHA256SUMS)
rm -rf .gpu-part*/
echo "compressing (zstd -19, a few minutes)" >&2
tar -C "$stage" -cf - . | zstd -19 -T0 -q -c | split -b "${PART_MIB}M" -d -a 2 - "$split_dir/part."
k=0
for f in "$split_dir"/part.*; do
  k=$((k + 1))
  mkdir -p ".gpu-part$k"
  mv "$f" ".gpu-part$k/part"
done
echo "$k" >.gpu-part1/count
du -sh .gpu-part*/ >&2
echo "Calls on the GPU machine, back to back (each carries one folder; the first also checks glibc):"
for i in $(seq 1 "$k"); do
  if [ "$i" = 1 ] && [ "$k" -gt 1 ]; then
    echo "  carry [\".gpu-part1\"]: ldd --version | head -1; nvidia-smi -L; ls -la .gpu-part1"
  elif [ "$i" -lt "$k" ]; then
    echo "  carry [\".gpu-part$i\"]: ls -la .gpu-part$i"
  else
    echo "  carry [\".gpu-part$i\"]: scripts/gpu_pack.sh unpack && benchmarks/run.sh gpu"
  fi
done
