# Sourced by tools/serve_load.sh, serve_soak.sh and serve_slowloris.sh: the binary, the fixtures and wrk checked or
# made, which weights, image and flags each model is served with, our server started, and a wait for its /healthz.
bin=${RESNET_BIN:-target/release/resnet}
fx=${FIXTURES:-/tmp/serve-fixtures}
command -v wrk >/dev/null || { echo "$(basename "$0"): needs wrk (apt-get install wrk)" >&2; exit 1; }
[ -x "$bin" ] || cargo build --release
[ -f "$fx/resnet50.pth" ] || python3 tools/serve_fixtures.py "$fx"

# model_files MODEL: sets weights, image (a file name in $fx) and flags (for `resnet serve`).
model_files() {
    case $1 in
        chapter) weights=$fx/chapter.safetensors image=fmnist.png flags="--resize 96" ;;
        resnet50) weights=$fx/resnet50.pth image=photo.jpg flags="" ;;
        *) echo "unknown model $1" >&2; exit 1 ;;
    esac
}

# start_ours PORT LOG: `resnet serve` on the weights and flags model_files chose (plus $SERVE_FLAGS), in the
# background, its output in LOG; sets pid.
start_ours() {
    # shellcheck disable=SC2086
    "$bin" serve --weights "$weights" $flags ${SERVE_FLAGS:-} --addr 127.0.0.1:$1 >"$2" 2>&1 &
    pid=$!
}

# wait_healthy PORT: until the server there answers /healthz (a minute at most).
wait_healthy() {
    for _ in $(seq 600); do
        curl -sf "http://127.0.0.1:$1/healthz" >/dev/null && return 0
        sleep 0.1
    done
    echo "server on port $1 did not start" >&2
    exit 1
}
