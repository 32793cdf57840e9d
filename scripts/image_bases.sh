#!/usr/bin/env bash
# Makes the base images the Dockerfiles build FROM when no image registry is reachable, in buildah's
# storage under local names (skipped when they exist; `--rebuild` makes them again):
#   localhost/seenn-debian:bookworm   debootstrap --variant=minbase bookworm, from the Debian mirror apt
#                                     already uses (stands in for debian:bookworm-slim and, for a
#                                     build-only check, for the CUDA runtime image)
#   localhost/seenn-rust:bookworm     + gcc, libc6-dev, ca-certificates: stands in for rust:1.95-bookworm,
#                                     less the toolchain, which scripts/test_image.sh mounts read-only
#                                     from this machine (`buildah bud -v`) at /usr/local/rust
#   localhost/seenn-cuda-standin:bookworm  the Debian base with the environment the CUDA runtime image
#                                     sets (LD_LIBRARY_PATH to the driver's libraries), for a build-only
#                                     check of Dockerfile.cuda
# Certificates this machine trusts beyond Debian's (/usr/local/share/ca-certificates: a TLS-inspecting
# egress proxy) are added to both, so pip and cargo inside the build reach PyPI and crates.io.
set -euo pipefail
cd "$(dirname "$0")/.."
SUITE=bookworm
BASE=localhost/seenn-debian:$SUITE
RUST_BASE=localhost/seenn-rust:$SUITE
CUDA_STANDIN=localhost/seenn-cuda-standin:$SUITE
rebuild=${1:-}

have() { buildah inspect --type image "$1" >/dev/null 2>&1; }

mirror() {
  # The first "URIs:" (deb822) or "deb" line of apt's sources that serves the Debian archive itself.
  local m
  m=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list \
        | grep -v security | grep -oE 'https?://[^ ]+/debian/?' | head -n1 || true)
  echo "${m:-http://deb.debian.org/debian}"
}

if [ "$rebuild" = --rebuild ] || ! have "$BASE"; then
  work=$(mktemp -d /var/tmp/seenn-base.XXXXXX)
  trap 'rm -rf "$work"' EXIT
  m=$(mirror)
  echo "base: debootstrap --variant=minbase $SUITE from $m"
  debootstrap --variant=minbase "$SUITE" "$work/tree" "$m" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 30 "$work/debootstrap.log"; exit 1; }
  # Keep the image small and its apt pointed at the same mirror (+ security updates).
  rm -rf "$work"/tree/var/cache/apt/archives/*.deb "$work"/tree/var/lib/apt/lists/*
  cat >"$work/tree/etc/apt/sources.list" <<EOF
deb $m $SUITE main
deb $m $SUITE-updates main
deb ${m%/debian*}/debian-security $SUITE-security main
EOF
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    mkdir -p "$work/tree/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$work/tree/usr/local/share/ca-certificates/"
  fi
  tar -C "$work/tree" --numeric-owner -cf "$work/rootfs.tar" .
  printf 'FROM scratch\nADD rootfs.tar /\nCMD ["bash"]\n' >"$work/Containerfile"
  buildah bud --quiet --isolation chroot -t "$BASE" -f "$work/Containerfile" "$work" >/dev/null
  rm -rf "$work"
  trap - EXIT
fi

if [ "$rebuild" = --rebuild ] || ! have "$RUST_BASE"; then
  echo "base: $RUST_BASE"
  work=$(mktemp -d /var/tmp/seenn-rust-base.XXXXXX)
  trap 'rm -rf "$work"' EXIT
  cat >"$work/Containerfile" <<EOF
FROM $BASE
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \\
      gcc libc6-dev ca-certificates >/dev/null && update-ca-certificates >/dev/null && rm -rf /var/lib/apt/lists/*
# As in the public rust image: CARGO_HOME holds the registry; the toolchain is mounted at /usr/local/rust.
ENV CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
EOF
  buildah bud --quiet --isolation chroot --network host -t "$RUST_BASE" -f "$work/Containerfile" "$work" >/dev/null
  rm -rf "$work"
  trap - EXIT
fi
if [ "$rebuild" = --rebuild ] || ! have "$CUDA_STANDIN"; then
  echo "base: $CUDA_STANDIN"
  c=$(buildah from "$BASE")
  # As nvidia/cuda:*-runtime-* sets it: where the NVIDIA container toolkit mounts the driver.
  buildah config --env LD_LIBRARY_PATH=/usr/local/nvidia/lib:/usr/local/nvidia/lib64 \
    --env NVIDIA_VISIBLE_DEVICES=all --env NVIDIA_DRIVER_CAPABILITIES=compute,utility "$c"
  buildah commit --quiet "$c" "$CUDA_STANDIN" >/dev/null
  buildah rm "$c" >/dev/null
fi
buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' | grep -E "seenn-(debian|rust|cuda-standin)" || true
