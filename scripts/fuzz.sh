#!/usr/bin/env bash
# Runs every fuzz target for FUZZ_SECONDS (default 600) each, one after another, on one core:
# the committed seeds and regressions (fuzz/seeds/<target>/, fuzz/regressions/<target>/) are
# read, new inputs go to the working corpus
# (fuzz/corpus/<target>/), crashes to fuzz/artifacts/<target>/, libFuzzer's output to
# fuzz/logs/<target>.log. See fuzz/README.md.
#
#   scripts/fuzz.sh                         # every target, 600 s each
#   FUZZ_SECONDS=60 scripts/fuzz.sh package_files
#   FUZZ_SANITIZER=none scripts/fuzz.sh     # where the AddressSanitizer runtime is missing
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-600}
sanitizer=${FUZZ_SANITIZER:-address}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(http_request image_preprocess package_files kserve_request)
fi
# cargo-fuzz passes -Z flags to rustc; this lets a stable toolchain accept them.
export RUSTC_BOOTSTRAP=1

mkdir -p fuzz/logs
status=0
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    dirs=("fuzz/corpus/$t")
    for d in "fuzz/seeds/$t" "fuzz/regressions/$t"; do
        if [ -d "$d" ]; then dirs+=("$d"); fi
    done
    args=(-max_total_time="$seconds" -timeout=60 -print_final_stats=1)
    if [ -f "fuzz/dicts/$t.dict" ]; then args+=(-dict="fuzz/dicts/$t.dict"); fi
    echo "== $t: ${seconds}s, sanitizer $sanitizer" >&2
    if ! cargo fuzz run -s "$sanitizer" "$t" "${dirs[@]}" -- "${args[@]}" \
        >"fuzz/logs/$t.log" 2>&1; then
        echo "   $t FAILED: see fuzz/logs/$t.log and fuzz/artifacts/$t/" >&2
        status=1
    fi
    grep -E '^(Done|stat::)' "fuzz/logs/$t.log" >&2 || true
done
exit $status
