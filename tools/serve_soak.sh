#!/usr/bin/env bash
# Soak test of `resnet serve`: S seconds of C connections sending, in rotation, valid uploads (PNG, PNG with
# ?logits, multipart of two) and hostile ones (random bytes, a truncated PNG, a PNG header claiming 100000x100000
# pixels, an empty body, a bad query, a broken multipart body, a 20 MiB body over the 16 MiB limit) and bad
# requests (wrong methods, unknown paths), with wrk (apt-get install wrk). Samples the server's resident memory
# every 10 s, then checks that it still answers, and prints the statuses seen: anything 5xx but 503 is a failure.
#
#   tools/serve_soak.sh [S=300] [C=32] [MODEL=chapter]
set -euo pipefail
secs=${1:-300}
conns=${2:-32}
model=${3:-chapter}
source "$(dirname "$0")/serve_common.sh"
port=18183
model_files "$model"
start_ours $port /tmp/serve-soak.log
trap 'kill $pid 2>/dev/null || true' EXIT
wait_healthy $port
rss() { awk '/VmRSS/ {printf "%.1f", $2 / 1024}' /proc/$pid/status; }
echo "start: RSS $(rss) MiB"
(
    for t in $(seq 10 10 "$secs"); do
        sleep 10
        [ -d /proc/$pid ] || exit 0
        echo "t=${t}s RSS $(rss) MiB"
    done
) &
sampler=$!
out=$(FIXTURES=$fx GOOD=$image OVERSIZED=1 wrk -t1 -c"$conns" -d"$secs"s --timeout 60s -s tools/wrk/soak.lua "http://127.0.0.1:$port/")
wait $sampler || true
echo "$out" | grep -E "requests in|Socket errors|Non-2xx|statuses"
kill -0 $pid 2>/dev/null || { echo "FAIL: the server died"; exit 1; }
curl -sf http://127.0.0.1:$port/healthz >/dev/null || { echo "FAIL: no answer after the soak"; exit 1; }
echo "end: RSS $(rss) MiB, peak $(awk '/VmHWM/ {printf "%.1f", $2 / 1024}' /proc/$pid/status) MiB; still answering"
curl -s http://127.0.0.1:$port/metrics | grep -E "^resnet_http_errors_total|^resnet_images_total|^resnet_forward_passes_total|^resnet_batch_size_(sum|count)"
if grep -Eo '(^| )5[0-9][0-9]=' <<<"$(grep statuses <<<"$out")" | grep -v 503 >/dev/null; then
    echo "FAIL: 5xx answers other than 503"
    exit 1
fi
if grep -q panicked /tmp/serve-soak.log; then echo "FAIL: a panic in the log"; exit 1; fi
echo "PASS: no 5xx but 503, no crash"
