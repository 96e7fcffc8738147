#!/usr/bin/env bash
# Throughput and latency of `resnet serve` against a minimal PyTorch server (tools/serve_pytorch.py), on loopback,
# the two runs of each setting alternating, with wrk (Debian: apt-get install wrk) as a closed-loop load generator:
# C connections, each sending its next request when the previous answer arrives, for D seconds.
#
#   tools/serve_load.sh [D=15] [MODELS="chapter resnet50"] [CLIENTS="1 8 64"] [REPEATS=2]
#
# chapter: the chapter's network at 96x96 (a Fashion-MNIST PNG, --resize 96; PyTorch: Resize(96) + ToTensor);
# resnet50: torchvision's at 224 (a 500x375 JPEG; ImageNet's Resize(256) + CenterCrop(224) + Normalize). The
# weights are PyTorch's default initialization (tools/serve_fixtures.py): the speed does not depend on them.
# Prints one row per run (requests/s, p50/p90/p99 latency, the statuses answered) and each server's peak
# resident memory (VmHWM). Extra `resnet serve` flags: $SERVE_FLAGS.
set -euo pipefail
dur=${1:-15}
models=${2:-"chapter resnet50"}
clients=${3:-"1 8 64"}
repeats=${4:-2}
source "$(dirname "$0")/serve_common.sh"
rs_port=18181
py_port=18182
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT

# run NAME PORT BODY CLIENTS SECONDS: one wrk run, one row.
run() {
    local out
    out=$(BODY=$3 wrk -t1 -c"$4" -d"$5"s --timeout 60s --latency -s tools/wrk/post.lua "http://127.0.0.1:$2/v1/predict")
    # wrk stops with up to C requests still being computed, which would then run during the other server's next run
    # (after the 8-client warm-up: a few of its requests at 300 ms and more). One more request waits them out: ours
    # answers it after them (one queue); the PyTorch server's threads run it beside them, so it ends with them.
    curl -s -o /dev/null --data-binary @"$3" -H 'Content-Type: application/octet-stream' "http://127.0.0.1:$2/v1/predict"
    local rps statuses lat
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    statuses=$(grep '^statuses' <<<"$out" | cut -d' ' -f2-)
    lat=$(grep '^latency_us' <<<"$out" | cut -d' ' -f2-)
    printf '%-9s %-8s clients %3d  %8.2f req/s  %s  [%s]\n' "$model" "$1" "$4" "$rps" \
        "$(awk '{for (i = 1; i <= NF; i++) {split($i, kv, "="); printf "%s %.1f ms  ", kv[1], kv[2] / 1000}}' <<<"$lat")" \
        "$statuses"
}

for model in $models; do
    model_files "$model"
    body=$fx/$image
    start_ours $rs_port /tmp/serve-load-rs.log
    rs=$pid
    python3 tools/serve_pytorch.py --model "$model" --weights "$weights" --port $py_port >/tmp/serve-load-py.log 2>&1 &
    py=$!
    pids=("$rs" "$py")
    wait_healthy $rs_port
    wait_healthy $py_port
    # Warm-up (first-use allocations, plans, caches), not reported.
    run resnet $rs_port "$body" 8 3 >/dev/null
    run pytorch $py_port "$body" 8 3 >/dev/null
    for c in $clients; do
        for _ in $(seq "$repeats"); do
            run resnet $rs_port "$body" "$c" "$dur"
            run pytorch $py_port "$body" "$c" "$dur"
        done
    done
    echo "$model peak memory (VmHWM): resnet $(awk '/VmHWM/ {print $2 / 1024 " MiB"}' /proc/$rs/status), pytorch $(awk '/VmHWM/ {print $2 / 1024 " MiB"}' /proc/$py/status)"
    kill "$rs" "$py"
    wait "$rs" "$py" 2>/dev/null || true
done
