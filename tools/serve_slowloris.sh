#!/usr/bin/env bash
# Slowloris against `resnet serve`: L connections each sending a request header one byte a second (reconnecting
# when the server hangs up, as an attacker would) for S seconds, while wrk's C normal clients send predictions.
# The same wrk run is made first on the quiet server. Prints both p99 latencies and the connections the server
# cut (--header-timeout); passes when the p99 under slowloris is within 2x of the quiet one, the server still
# answers and nothing 5xx but 503 was seen.
#
#   tools/serve_slowloris.sh [S=60] [L=50] [C=8] [MODEL=chapter]
set -euo pipefail
secs=${1:-60}
loris=${2:-50}
conns=${3:-8}
model=${4:-chapter}
source "$(dirname "$0")/serve_common.sh"
port=18184
model_files "$model"
start_ours $port /tmp/serve-slowloris.log
slow=()
trap 'kill $pid "${slow[@]}" 2>/dev/null || true' EXIT
wait_healthy $port

# p99 S: a wrk run of S seconds; prints its p99 latency in ms, and fails on 5xx other than 503.
p99() {
    local out
    out=$(BODY=$fx/$image wrk -t1 -c"$conns" -d"$1"s --timeout 60s --latency -s tools/wrk/post.lua "http://127.0.0.1:$port/v1/predict")
    if grep -Eo '(^| )5[0-9][0-9]=' <<<"$(grep '^statuses' <<<"$out")" | grep -v 503 >/dev/null; then
        echo "FAIL: 5xx answers other than 503: $(grep '^statuses' <<<"$out")" >&2
        exit 1
    fi
    grep '^latency_us' <<<"$out" | tr ' ' '\n' | awk -F= '$1 == "p99" {printf "%.1f", $2 / 1000}'
}

# loris N S: one slow client for S seconds, reconnecting whenever the server closes; writes its connection count
# to /tmp/serve-slowloris.N.
loris() {
    trap '' PIPE
    local n=0 end=$((SECONDS + $2))
    while ((SECONDS < end)); do
        exec 3<>/dev/tcp/127.0.0.1/$port 2>/dev/null || { sleep 1; continue; }
        n=$((n + 1))
        printf 'GET /healthz HTTP/1.1\r\n' >&3 || true
        while ((SECONDS < end)) && printf 'X' >&3 2>/dev/null; do
            sleep 1
        done
        exec 3>&-
    done
    echo $n >/tmp/serve-slowloris.$1
}

p99 3 >/dev/null # warm-up
quiet=$(p99 "$secs")
echo "quiet: p99 $quiet ms ($conns clients, $secs s)"
for i in $(seq "$loris"); do
    loris "$i" "$secs" &
    slow+=($!)
done
sleep 2 # the slow clients connect first
under=$(p99 $((secs - 2)))
wait "${slow[@]}" || true
opened=$(cat /tmp/serve-slowloris.* | awk '{s += $1} END {print s}')
rm -f /tmp/serve-slowloris.[0-9]*
echo "under slowloris: p99 $under ms ($loris slow connections sending a header byte a second; they opened $opened connections: each cut by the header timeout)"
kill -0 $pid 2>/dev/null || { echo "FAIL: the server died"; exit 1; }
curl -sf http://127.0.0.1:$port/healthz >/dev/null || { echo "FAIL: no answer after the attack"; exit 1; }
curl -s http://127.0.0.1:$port/metrics | grep -E "^resnet_http_errors_total|^resnet_http_connections"
if awk -v q="$quiet" -v u="$under" 'BEGIN {exit !(u <= 2 * q)}'; then
    echo "PASS: p99 under slowloris within 2x of the quiet run's"
else
    echo "FAIL: p99 under slowloris more than 2x the quiet run's"
    exit 1
fi
