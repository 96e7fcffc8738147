#!/usr/bin/env bash
# Fuzzes resnet's parsers with libFuzzer:  tools/fuzz.sh [SECONDS] [TARGET...]
#
# Targets (fuzz/fuzz_targets/): idx (IDX files, raw and gzip), checkpoint (model files and training checkpoints
# with metadata and optimizer state), image (PNG, JPEG, BMP, PNM, TIFF, WebP decoding for predict and image folders), cli (argument lists and --input
# shapes), pth (PyTorch .pth state dicts: zip, pickle, storages), cifar (CIFAR-10/100 binary records), request (`resnet serve`'s POST /v1/predict: query, multipart, image, limits), onnx (ONNX models read as the network they hold), quantized (`resnet quantize`'s int8 model files), explain_names (Grad-CAM's --layer and --class names). Each runs SECONDS (default 600) from the committed seeds in fuzz/seeds/TARGET, growing its corpus in
# fuzz/corpus/TARGET; logs go to fuzz/logs/TARGET.log and a crashing input to fuzz/artifacts/TARGET/.
# Every crash found becomes a regression test (tests/fuzz_regressions.rs).
#
# Needs the nightly toolchain and cargo-fuzz (installed here if missing: `cargo install cargo-fuzz --locked`).
# FUZZ_PARALLEL=1 runs the targets at the same time (one core each); FUZZ_BIN_DIR=DIR runs binaries built
# earlier by `cargo +nightly fuzz build -O` (e.g. on another machine) instead of building.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(idx checkpoint image cli pth cifar request onnx quantized explain_names)

bin_dir=${FUZZ_BIN_DIR:-}
if [ -z "$bin_dir" ]; then
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
    (cd fuzz && cargo +nightly fuzz build -O)
    bin_dir=fuzz/target/x86_64-unknown-linux-gnu/release
fi

max_len() {
    case $1 in
        idx) echo 8192 ;;
        checkpoint) echo 32768 ;;
        image) echo 8192 ;;
        cli) echo 512 ;;
        pth) echo 131072 ;;
        cifar) echo 16384 ;;
        onnx) echo 131072 ;;
        quantized) echo 32768 ;;
        explain_names) echo 256 ;;
    esac
}

run_one() {
    local t=$1
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t" fuzz/logs
    "$bin_dir/$t" "fuzz/corpus/$t" "fuzz/seeds/$t" \
        -max_total_time="$secs" -max_len="$(max_len "$t")" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 >"fuzz/logs/$t.log" 2>&1
}

declare -A status
if [ "${FUZZ_PARALLEL:-0}" = 1 ]; then
    declare -A pids
    for t in "${targets[@]}"; do run_one "$t" & pids[$t]=$!; done
    for t in "${targets[@]}"; do if wait "${pids[$t]}"; then status[$t]=0; else status[$t]=$?; fi; done
else
    for t in "${targets[@]}"; do if run_one "$t"; then status[$t]=0; else status[$t]=$?; fi; done
fi

failed=0
printf '%-11s %14s %9s %8s %s\n' target executions seconds corpus result
for t in "${targets[@]}"; do
    log=fuzz/logs/$t.log
    runs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | awk '{print $2}' | tail -1)
    time_s=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | awk '{print $5}' | tail -1)
    corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
    if [ "${status[$t]}" = 0 ]; then result=ok; else result="FAILED (exit ${status[$t]}, see $log)"; failed=1; fi
    printf '%-11s %14s %9s %8s %s\n' "$t" "${runs:-?}" "${time_s:-?}" "$corpus" "$result"
done
exit $failed
