#!/usr/bin/env bash
# make test-image: builds deploy/Dockerfile and deploy/Dockerfile.cuda as committed, with buildah, and
# smoke-tests the CPU image without a container runtime (`buildah run --isolation chroot`, host network).
#
# No image registry is reachable here, so the base images are local (scripts/image_bases.sh) and passed
# as build arguments; the Rust toolchain of this machine (`rustc --print sysroot`, >= rust-version in
# Cargo.toml) is mounted read-only into the build stage at /usr/local/rust. Set RUST_IMAGE,
# RUNTIME_IMAGE, CUDA_RUNTIME_IMAGE to build against other bases (e.g. the public defaults).
# Caches: buildah's layer cache (--layers) and the Dockerfiles' cache mounts (crate registry, target/,
# pip), so a rerun after a change in src/ compiles this crate only.
set -euo pipefail
cd "$(dirname "$0")/.."
export BUILDAH_ISOLATION=chroot
T0=$(date +%s)
declare -a SUMMARY=()
step() { printf '\n== [%4ss] %s\n' "$(($(date +%s) - T0))" "$*"; }
ok() { echo "   ok: $*"; }
fail() {
  echo "   FAIL: $*" >&2
  exit 1
}
timed() { # timed LABEL CMD...: runs CMD, records its wall time
  local label=$1 t=$(date +%s)
  shift
  "$@"
  SUMMARY+=("$label: $(($(date +%s) - t)) s")
}

command -v buildah >/dev/null && command -v debootstrap >/dev/null || scripts/setup.sh image
RUST_IMAGE=${RUST_IMAGE:-localhost/seenn-rust:bookworm}
RUNTIME_IMAGE=${RUNTIME_IMAGE:-localhost/seenn-debian:bookworm}
CUDA_RUNTIME_IMAGE=${CUDA_RUNTIME_IMAGE:-localhost/seenn-cuda-standin:bookworm}
IMAGE=localhost/seenn-serve:test
CUDA_IMAGE=localhost/seenn-serve:cuda-test
work=$(mktemp -d /var/tmp/seenn-test-image.XXXXXX)
declare -a CONTAINERS=()
cleanup() {
  local c
  for c in "${CONTAINERS[@]}"; do buildah rm "$c" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

step "base images"
if [[ $RUST_IMAGE == localhost/seenn-* || $RUNTIME_IMAGE == localhost/seenn-* || $CUDA_RUNTIME_IMAGE == localhost/seenn-* ]]; then
  timed "base images" scripts/image_bases.sh
fi

step "toolchain for the build stage"
SYSROOT=$(rustc --print sysroot)
need=$(sed -nE 's/^rust-version = "([0-9.]+)"/\1/p' Cargo.toml)
have=$("$SYSROOT/bin/rustc" --version | awk '{print $2}')
[ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -n1)" = "$need" ] ||
  fail "rustc $have in $SYSROOT is older than rust-version $need"
ok "rustc $have (>= $need) from $SYSROOT, mounted read-only at /usr/local/rust"
BUD=(buildah bud --isolation chroot --network host --layers --build-arg "RUST_IMAGE=$RUST_IMAGE"
  -v "$SYSROOT:/usr/local/rust:ro")

step "build context: only what .dockerignore allows"
printf 'FROM %s\nCOPY . /ctx\n' "$RUNTIME_IMAGE" >"$work/Containerfile.context"
buildah bud --quiet --isolation chroot -f "$work/Containerfile.context" -t localhost/seenn-context:test . >/dev/null
c=$(buildah from localhost/seenn-context:test)
CONTAINERS+=("$c")
top=$(buildah run "$c" -- ls -A /ctx | sort | tr '\n' ' ')
[ "$top" = "Cargo.lock Cargo.toml benches build.rs models proto scripts src " ] || fail "context holds: $top"
[ "$(buildah run "$c" -- ls -A /ctx/scripts)" = fetch_ort.sh ] || fail "context scripts/: more than fetch_ort.sh"
ok "context: $top(scripts/fetch_ort.sh only; no target/, .venv/, .ort/, deploy/secrets/)"
buildah rm "$c" >/dev/null
buildah rmi localhost/seenn-context:test >/dev/null

step "build deploy/Dockerfile -> $IMAGE"
timed "CPU image build" "${BUD[@]}" --build-arg "RUNTIME_IMAGE=$RUNTIME_IMAGE" -f deploy/Dockerfile -t "$IMAGE" . \
  >"$work/build-cpu.log" 2>&1 || {
  tail -n 40 "$work/build-cpu.log"
  fail "CPU image build"
}
ok "built $IMAGE"

step "smoke test $IMAGE"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
HTTP=$(free_port)
GRPC=$(free_port)
URL=http://127.0.0.1:$HTTP
mkdir -p "$work/secrets"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/secrets/admin_token"
TOKEN=$(cat "$work/secrets/admin_token")
c=$(buildah from "$IMAGE")
CONTAINERS+=("$c")
read -r -a ENTRYPOINT <<<"$(buildah inspect --type image --format '{{range .OCIv1.Config.Entrypoint}}{{.}} {{end}}' "$IMAGE")"
[ "${ENTRYPOINT[*]}" = "seenn serve" ] || fail "entrypoint is ${ENTRYPOINT[*]}"
[ "$(buildah run "$c" -- id -u)" = 10001 ] || fail "the image's user is not uid 10001"
ok "entrypoint '${ENTRYPOINT[*]}', user uid 10001"
# The image's own environment (SEENN_ORT_LIB, SEENN_MODELS, SEENN_STATE_DIR) plus what compose and
# Kubernetes set: the token file, ports.
buildah config --env SEENN_HOST=127.0.0.1 --env "SEENN_HTTP_PORT=$HTTP" --env "SEENN_GRPC_PORT=$GRPC" \
  --env SEENN_ADMIN_TOKEN_FILE=/run/secrets/admin_token "$c"
buildah run --isolation chroot --network host -v "$work/secrets:/run/secrets:ro" "$c" -- "${ENTRYPOINT[@]}" \
  >"$work/server.log" 2>&1 &
runner=$!
ready=0
for _ in $(seq 1 240); do
  kill -0 "$runner" 2>/dev/null || {
    cat "$work/server.log"
    fail "the server exited before it was ready"
  }
  if [ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/readyz")" = 200 ]; then
    ready=1
    break
  fi
  sleep 0.25
done
[ $ready = 1 ] || fail "/readyz not 200 within 60 s"
ok "GET /readyz 200"

sample=$(python3 -c 'import json; s=json.load(open("models/fashion-mnist/golden.json"))["samples"][0]; print(s["file"], s["class_id"])')
read -r file class_id <<<"$sample"
answer=$(curl -sf -H 'content-type: image/png' --data-binary "@models/fashion-mnist/$file" "$URL/v1/models/fashion-mnist/classify")
got=$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(r["class_id"], r["label"], r["timesteps_used"])' "$answer")
[ "${got%% *}" = "$class_id" ] || fail "classify $file: $answer"
ok "classify models/fashion-mnist/$file -> class_id label timesteps: $got"

code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer wrong-token-0123456789" "$URL/admin/models/fashion-mnist/exit-policy")
[ "$code" = 401 ] || fail "admin GET with a wrong token: $code"
code=$(curl -s -o "$work/put.json" -w '%{http_code}' -X PUT -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
  -d '{"alpha": 0.9}' "$URL/admin/models/fashion-mnist/exit-policy")
[ "$code" = 200 ] || fail "admin PUT with the token from the secret file: $code $(cat "$work/put.json")"
ok "admin token read from /run/secrets/admin_token (wrong token 401, right token 200)"
owner=$(buildah run "$c" -- stat -c '%u' /srv/seenn/state/exit-policies.json) || fail "no state file written"
[ "$owner" = 10001 ] || fail "state file owned by uid $owner"
ok "the admin change persisted in /srv/seenn/state (written by uid 10001)"

# SIGTERM to the server itself: buildah run does not forward signals. The server is the innermost
# process under this runner (same PID namespace with chroot isolation).
pid=$runner
while next=$(ps -o pid= --ppid "$pid" | head -n1 | tr -d ' ') && [ -n "$next" ]; do pid=$next; done
[ "$(ps -o comm= -p "$pid")" = seenn ] || fail "cannot find the server process under $runner"
kill -TERM "$pid"
rc=0
wait "$runner" || rc=$?
[ $rc = 0 ] || {
  tail -n 20 "$work/server.log"
  fail "exit status $rc after SIGTERM"
}
grep -q '"stopped"' "$work/server.log" || fail "no 'stopped' in the log"
ok "SIGTERM: drained and exited 0"

mkdir -p "$work/placeholder"
echo replace-me-with-a-long-random-token >"$work/placeholder/admin_token"
rc=0
timeout 60 buildah run --isolation chroot --network host -v "$work/placeholder:/run/secrets:ro" "$c" -- "${ENTRYPOINT[@]}" \
  >"$work/placeholder.log" 2>&1 || rc=$?
[ $rc != 0 ] && [ $rc != 124 ] && grep -q 'placeholder' "$work/placeholder.log" ||
  fail "the placeholder token was not refused (exit $rc): $(tail -n 3 "$work/placeholder.log")"
ok "the example token is refused at start: $(grep -o 'the admin token is a placeholder[^;]*' "$work/placeholder.log" | head -n1)"

step "build deploy/Dockerfile.cuda -> $CUDA_IMAGE (build only: no GPU here)"
timed "CUDA image build" "${BUD[@]}" --build-arg "RUNTIME_IMAGE=$CUDA_RUNTIME_IMAGE" -f deploy/Dockerfile.cuda -t "$CUDA_IMAGE" . \
  >"$work/build-cuda.log" 2>&1 || {
  tail -n 40 "$work/build-cuda.log"
  fail "CUDA image build"
}
c=$(buildah from "$CUDA_IMAGE")
CONTAINERS+=("$c")
buildah run "$c" -- sh -ec 'cd /usr/local/lib/seenn; test -e libonnxruntime.so; test -e libonnxruntime_providers_cuda.so;
  case "$(readlink libonnxruntime.so)" in /*) exit 1;; esac' || fail "libonnxruntime.so or the CUDA provider missing, or an absolute link"
ok "libonnxruntime.so -> $(buildah run "$c" -- readlink /usr/local/lib/seenn/libonnxruntime.so), with libonnxruntime_providers_cuda.so"
ldp=$(buildah inspect --type image --format '{{range .OCIv1.Config.Env}}{{println .}}{{end}}' "$CUDA_IMAGE" | sed -n 's/^LD_LIBRARY_PATH=//p')
base_ldp=$(buildah inspect --type image --format '{{range .OCIv1.Config.Env}}{{println .}}{{end}}' "$CUDA_RUNTIME_IMAGE" | sed -n 's/^LD_LIBRARY_PATH=//p')
[ -n "$base_ldp" ] || echo "   note: $CUDA_RUNTIME_IMAGE sets no LD_LIBRARY_PATH: appending is not exercised"
[ "$ldp" = "/usr/local/lib/seenn${base_ldp:+:$base_ldp}" ] || fail "LD_LIBRARY_PATH=$ldp (base: $base_ldp)"
ok "LD_LIBRARY_PATH=$ldp (the base's ${base_ldp:-empty value} kept)"
# The GPU build of ONNX Runtime loads and serves on the CPU provider: the binary, the library and the
# models fit together; only the CUDA provider itself needs a GPU.
buildah run --isolation chroot "$c" -- seenn inspect --device cpu >"$work/inspect.json" 2>"$work/inspect.log" || {
  cat "$work/inspect.log"
  fail "seenn inspect in the CUDA image"
}
[ "$(wc -l <"$work/inspect.json")" -ge 1 ] || fail "seenn inspect printed no model"
ok "seenn inspect --device cpu (ONNX Runtime GPU build, CPU provider): $(wc -l <"$work/inspect.json") model(s) load"

step "summary"
for s in "${SUMMARY[@]}"; do echo "   $s"; done
buildah images --format '   {{.Name}}:{{.Tag}}  {{.Size}}' | grep -E 'seenn-serve:(test|cuda-test)'
echo "   total: $(($(date +%s) - T0)) s"
echo "TEST_IMAGE_OK"
