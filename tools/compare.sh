#!/usr/bin/env bash
# Side-by-side benchmark: ours (`resnet bench`) and PyTorch's (tools/bench_pytorch.py), run alternately
# (A B A B …) on the same machine, then per configuration: ours, PyTorch (faster of NCHW and channels_last),
# ratio ours/PyTorch in images/s (medians of the per-round medians); then the peak memory of training at 96×96,
# each side measured in a fresh process. The chapter's inference configurations that were asked for (infer28,
# infer96, infer224, latency224) also run with ONNX Runtime (tools/bench_onnxruntime.py) and OpenVINO
# (tools/bench_openvino.py) each round (A B C D), each with its ours/X ratios; training rows show '-' there.
#
# The family section (ONLY=all, or a list that contains `family`) does the same for torchvision's networks at
# 3×224×224, alternating A B C D each round: ours, PyTorch, ONNX Runtime, OpenVINO (the last two inference only):
# resnet50 train224, infer224 (batch 32) and latency224 (batch 1), and resnet18 train224 at batch 64; then the
# peak memory of resnet50 train224 at batch 32, each side in a fresh process.
#
# The int8 section (ONLY=all, or a list that contains `int8`) times resnet50 infer224 (batch 32) and latency224
# (batch 1), alternating each round: ours f32, ours int8 (`resnet quantize`, then `bench --weights`), ONNX Runtime
# int8 (tools/bench_onnxruntime.py --int8: quantize_static, QDQ, per channel) and OpenVINO int8
# (tools/bench_openvino.py --int8: NNCF quantize), then ours f32 and int8 again with RESNET_AVX512=0 (the AVX2
# paths, approximating an AVX2-only CPU; skipped on a CPU without AVX-512, whose default run is that path); each
# side calibrated on the same CALIB_IMAGES (default 64: speed does not depend on it) RGB images of Fashion-MNIST's
# training set, the weights torchvision's resnet50 initialized with torch.manual_seed(0) (no ImageNet weights here).
#
# Batch-1 latency (latency224: one pass per iteration, 20–60 ms) is timed in a call of its own with LATENCY_ITERS
# passes (default 30, or ITERS if more): a median of three passes cannot tell a shared machine's slow spell from
# the engine.
#
#   tools/compare.sh [ROUNDS=3] [ITERS=3] [THREADS=2] [ONLY=all]
#   e.g. tools/compare.sh 3 3 2 family          (the family section alone)
#        tools/compare.sh 3 3 2 int8            (the int8 section alone)
#        tools/compare.sh 3 3 2 train96,infer96  (two chapter configurations, no family section)
# The positional arguments default to the environment variables ROUNDS, ITERS, THREADS and ONLY, then to the
# values above.
# Needs: cargo, python3 with the pinned PyTorch, torchvision, onnx, onnxruntime and openvino
# (pip install -r tools/requirements.txt); without onnxruntime the ONNX Runtime columns show '-', without openvino
# the OpenVINO columns.
set -euo pipefail
cd "$(dirname "$0")/.."
printf 'command:'
printf ' %q' "$0" "$@"
echo
rounds=${1:-${ROUNDS:-3}}
iters=${2:-${ITERS:-3}}
threads=${3:-${THREADS:-2}}
only=${4:-${ONLY:-all}}
lat_iters=${LATENCY_ITERS:-$((iters > 30 ? iters : 30))}
# The chapter's configurations (all, a list, or nothing) and whether the family section runs.
family=no
int8=no
if [[ $only == all ]]; then
  chapter=train28,train96,infer28,infer96,train224,infer224,latency224
  family=yes
  int8=yes
else
  chapter=
  IFS=, read -ra items <<< "$only"
  for item in "${items[@]}"; do
    if [[ $item == family ]]; then
      family=yes
    elif [[ $item == int8 ]]; then
      int8=yes
    else
      chapter=${chapter:+$chapter,}$item
    fi
  done
fi
echo "rounds $rounds, iters $iters (latency224: $lat_iters), threads $threads, only $only"
out=$(mktemp -d)
cargo build --release --quiet
resnet=${CARGO_TARGET_DIR:-target}/release/resnet
ort_version=$(python3 -c 'import onnxruntime; print(onnxruntime.__version__)' 2>/dev/null || echo none)
ov_version=$(python3 -c 'import openvino; print(openvino.__version__)' 2>/dev/null || echo none)
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cpus; torch $(python3 -c 'import torch; print(torch.__version__)'); onnxruntime $ort_version; openvino $ov_version; threads $threads; $(date -u +%F)"

# bench FILE LIST COMMAND…: runs `COMMAND --iters ITERS --only LIST` (a benchmark printing --json) into FILE.json,
# except latency224, which runs in a call of its own with LATENCY_ITERS passes; its result joins FILE.json's.
bench() {
  local file=$1 list=$2 rest= lat=no item
  shift 2
  IFS=, read -ra items <<< "$list"
  for item in "${items[@]}"; do
    if [[ $item == latency224 ]]; then lat=yes; else rest=${rest:+$rest,}$item; fi
  done
  if [[ -n $rest ]]; then "$@" --iters "$iters" --only "$rest" > "$file.json"; fi
  if [[ $lat == yes ]]; then
    "$@" --iters "$lat_iters" --only latency224 > "$file.lat.json"
    python3 - "$file" <<'PY'
import json, os, sys
file = sys.argv[1]
lat = json.load(open(f"{file}.lat.json"))
if os.path.exists(f"{file}.json"):
    joined = json.load(open(f"{file}.json"))
    joined["results"] += lat["results"]
else:
    joined = lat
json.dump(joined, open(f"{file}.json", "w"))
os.remove(f"{file}.lat.json")
PY
  fi
}

# Peak RSS (MiB, rounded) of the one result that a `--json` benchmark prints on standard input.
rss() {
  python3 -c 'import json,sys; print(round(json.load(sys.stdin)["results"][0]["peak_rss_mib"]))'
}

if [[ -n $chapter ]]; then
  echo "== the chapter's ResNet-18 ($chapter)"
  # The inference configurations among those asked for: ONNX Runtime and OpenVINO run these (inference only).
  chapter_infer=
  IFS=, read -ra items <<< "$chapter"
  for item in "${items[@]}"; do
    case $item in
      infer28 | infer96 | latency224) chapter_infer=${chapter_infer:+$chapter_infer,}$item ;;
    esac
  done
  for r in $(seq 1 "$rounds"); do
    bench "$out/ours.$r" "$chapter" "$resnet" --threads "$threads" bench --json
    bench "$out/torch.$r" "$chapter" python3 tools/bench_pytorch.py --json --threads "$threads"
    if [[ -n $chapter_infer && $ort_version != none ]]; then
      bench "$out/ort.$r" "$chapter_infer" python3 tools/bench_onnxruntime.py --json --threads "$threads" --arch chapter
    fi
    if [[ -n $chapter_infer && $ov_version != none ]]; then
      bench "$out/ov.$r" "$chapter_infer" python3 tools/bench_openvino.py --json --threads "$threads" --arch chapter
    fi
    echo "round $r done" >&2
  done
  python3 - "$out" "$rounds" <<'PY'
import json, os, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def load(kind):
    """{name: [result of round 1, round 2, …]}; rounds whose file is missing (ORT or OpenVINO not installed, or
    only training asked for) are skipped."""
    res = {}
    for r in range(1, rounds + 1):
        path = f"{out}/{kind}.{r}.json"
        if os.path.exists(path):
            for x in json.load(open(path))["results"]:
                res.setdefault(x["name"], []).append(x)
    return res
ours, torch, ort, ov = load("ours"), load("torch"), load("ort"), load("ov")
med = statistics.median
def speed(rs):
    return f"{med(x['images_per_s'] for x in rs):.1f}" if rs else "-"
def ratios(o, t):
    """ours/other: of the two medians, and the median of the rounds' own ratios."""
    if not o or not t:
        return "-", "-"
    a = med(x["images_per_s"] for x in o) / med(x["images_per_s"] for x in t)
    b = med(x["images_per_s"] / y["images_per_s"] for x, y in zip(o, t))
    return f"{a:.2f}", f"{b:.2f}"
print("ours:", json.load(open(f"{out}/ours.1.json")).get("engine", "?"))
# ratio: of the two medians; per round: the median of the rounds' own ratios (each round runs the sides a
# minute apart, so that ratio is less exposed to the shared machine's slow drifts). ORT, OV: inference only.
print(f"{'config':<11} {'ours img/s':>11} {'torch img/s':>12} {'ratio':>6} {'per round':>10} "
      f"{'ORT img/s':>10} {'ours/ORT':>8} {'per round':>9} {'OV img/s':>10} {'ours/OV':>7} {'per round':>9} "
      f"{'ours GFLOP/s':>13} {'torch GFLOP/s':>14}  torch layout")
for name in ours:
    o, t, x, v = ours[name], torch.get(name, []), ort.get(name, []), ov.get(name, [])
    pt, pt_round = ratios(o, t)
    ox, ox_round = ratios(o, x)
    ov_, ov_round = ratios(o, v)
    og = f"{med(r['gflops'] for r in o):.1f}"
    tg = f"{med(r['gflops'] for r in t):.1f}" if t else "-"
    fmts = [r["format"] for r in t]
    fmt = max(set(fmts), key=fmts.count) if fmts else "-"
    print(f"{name:<11} {speed(o):>11} {speed(t):>12} {pt:>6} {pt_round:>10} "
          f"{speed(x):>10} {ox:>8} {ox_round:>9} {speed(v):>10} {ov_:>7} {ov_round:>9} "
          f"{og:>13} {tg:>14}  {fmt}")
print("(ONNX Runtime and OpenVINO: inference only; per-round values in", out, ")")
PY
  # Peak memory of training at 96×96, batch 256: each side in a fresh process that runs only that configuration
  # (one warm-up and one timed step), PyTorch once per layout, so no earlier configuration's peak is counted.
  if [[ $chapter == all || $chapter == *train96* ]]; then
    ours_rss=$("$resnet" --threads "$threads" bench --json --iters 1 --warmup 1 --only train96 | rss)
    rss_line="peak RSS, train96 alone: ours $ours_rss MiB"
    for fmt in nchw channels_last; do
      t_rss=$(python3 tools/bench_pytorch.py --json --threads "$threads" --iters 1 --warmup 1 --only train96 --formats "$fmt" | rss)
      rss_line="$rss_line, PyTorch $fmt $t_rss MiB"
    done
    echo "$rss_line"
  fi
fi

if [[ $family == yes ]]; then
  echo "== torchvision's networks at 3×224×224: resnet50 train224, infer224 (batch 32), latency224 (batch 1); resnet18 train224 (batch 64)"
  r50=train224,infer224,latency224
  for r in $(seq 1 "$rounds"); do
    bench "$out/fam.ours.r50.$r" "$r50" "$resnet" --threads "$threads" bench --json --arch resnet50
    bench "$out/fam.ours.r18.$r" train224 "$resnet" --threads "$threads" bench --json --arch resnet18 --batch 64
    bench "$out/fam.torch.r50.$r" "$r50" python3 tools/bench_pytorch.py --json --threads "$threads" --arch resnet50
    bench "$out/fam.torch.r18.$r" train224 python3 tools/bench_pytorch.py --json --threads "$threads" --arch resnet18 --batch 64
    if [[ $ort_version != none ]]; then
      bench "$out/fam.ort.r50.$r" infer224,latency224 python3 tools/bench_onnxruntime.py --json --threads "$threads" --arch resnet50
    fi
    if [[ $ov_version != none ]]; then
      bench "$out/fam.ov.r50.$r" infer224,latency224 python3 tools/bench_openvino.py --json --threads "$threads" --arch resnet50
    fi
    echo "family round $r done" >&2
  done
  python3 - "$out" "$rounds" <<'PY'
import json, os, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
ROWS = [("resnet50", "train224", 32), ("resnet50", "infer224", 32), ("resnet50", "latency224", 1), ("resnet18", "train224", 64)]
def load(kind):
    """{(arch, name, batch): [result of round 1, round 2, …]}; rounds whose file is missing are skipped."""
    res = {}
    for r in range(1, rounds + 1):
        for net in ("r50", "r18"):
            path = f"{out}/fam.{kind}.{net}.{r}.json"
            if os.path.exists(path):
                for x in json.load(open(path))["results"]:
                    res.setdefault((x["arch"], x["name"], x["batch"]), []).append(x)
    return res
ours, torch, ort, ov = load("ours"), load("torch"), load("ort"), load("ov")
med = statistics.median
def speed(rs):
    """Median images/s of the rounds, with the median latency in ms for batch 1."""
    if not rs:
        return "-"
    s = f"{med(x['images_per_s'] for x in rs):.1f}"
    if rs[0]["batch"] == 1:
        s += f" ({med(x['median_s'] for x in rs) * 1e3:.1f} ms)"
    return s
def ratios(o, t):
    """ours/other: of the medians, and the median of the rounds' own ratios."""
    if not o or not t:
        return "-", "-"
    a = med(x["images_per_s"] for x in o) / med(x["images_per_s"] for x in t)
    b = med(x["images_per_s"] / y["images_per_s"] for x, y in zip(o, t))
    return f"{a:.2f}", f"{b:.2f}"
print("ours:", json.load(open(f"{out}/fam.ours.r50.1.json")).get("engine", "?"))
# ratio: of the two medians; per round: the median of the rounds' own ratios (see the chapter's table).
print(f"{'config':<23} {'ours img/s':>17} {'PyTorch img/s':>17} {'ours/PT':>7} {'per round':>9} "
      f"{'ORT img/s':>17} {'ours/ORT':>8} {'per round':>9} {'OV img/s':>17} {'ours/OV':>7} {'per round':>9} "
      f"{'GFLOP/s ours':>12} {'torch':>6}  torch layout")
for key in ROWS:
    arch, name, batch = key
    o, t, x, v = ours.get(key, []), torch.get(key, []), ort.get(key, []), ov.get(key, [])
    pt, pt_round = ratios(o, t)
    ox, ox_round = ratios(o, x)
    ov_, ov_round = ratios(o, v)
    og = f"{med(r['gflops'] for r in o):.1f}" if o else "-"
    tg = f"{med(r['gflops'] for r in t):.1f}" if t else "-"
    fmts = [r["format"] for r in t]
    fmt = max(set(fmts), key=fmts.count) if fmts else "-"
    label = f"{arch} {name} b{batch}"
    print(f"{label:<23} {speed(o):>17} {speed(t):>17} {pt:>7} {pt_round:>9} "
          f"{speed(x):>17} {ox:>8} {ox_round:>9} {speed(v):>17} {ov_:>7} {ov_round:>9} {og:>12} {tg:>6}  {fmt}")
print("(ONNX Runtime and OpenVINO: inference only; per-round values in", out, ")")
PY
  # Peak memory of resnet50 training at 224×224, batch 32: each side in a fresh process that runs only that
  # configuration (one warm-up and one timed step), PyTorch once per layout.
  ours_rss=$("$resnet" --threads "$threads" bench --json --iters 1 --warmup 1 --arch resnet50 --only train224 | rss)
  rss_line="peak RSS, resnet50 train224 b32 alone: ours $ours_rss MiB"
  for fmt in nchw channels_last; do
    t_rss=$(python3 tools/bench_pytorch.py --json --threads "$threads" --iters 1 --warmup 1 --arch resnet50 --only train224 --formats "$fmt" | rss)
    rss_line="$rss_line, PyTorch $fmt $t_rss MiB"
  done
  echo "$rss_line"
fi

if [[ $int8 == yes ]]; then
  calib_images=${CALIB_IMAGES:-64}
  echo "== int8: resnet50 infer224 (batch 32) and latency224 (batch 1); $calib_images calibration images"
  # The calibration folder (RGB PNGs of Fashion-MNIST's training images, in class folders) and the f32 weights.
  python3 - "$out" "$calib_images" <<'PY'
import gzip, os, sys
import numpy as np
import torch, torchvision
from PIL import Image
out, count = sys.argv[1], int(sys.argv[2])
images = np.frombuffer(gzip.decompress(open("data/fashion-mnist/train-images-idx3-ubyte.gz", "rb").read())[16:], np.uint8)
labels = np.frombuffer(gzip.decompress(open("data/fashion-mnist/train-labels-idx1-ubyte.gz", "rb").read())[8:], np.uint8)
for i in range(count):
    d = f"{out}/calib/{labels[i]}"
    os.makedirs(d, exist_ok=True)
    Image.fromarray(images[i * 784:(i + 1) * 784].reshape(28, 28)).convert("RGB").save(f"{d}/{i:05d}.png")
torch.manual_seed(0)
torch.save(torchvision.models.resnet50().eval().state_dict(), f"{out}/r50.pth")
PY
  "$resnet" quantize --weights "$out/r50.pth" --calib "$out/calib" --images "$calib_images" --out "$out/r50.int8.safetensors"
  q=infer224,latency224
  # On a CPU without AVX-512 the default run already is the AVX2 path: RESNET_AVX512=0 would time it twice.
  has_avx512=no
  grep -qw avx512f /proc/cpuinfo 2>/dev/null && has_avx512=yes
  for r in $(seq 1 "$rounds"); do
    bench "$out/q.f32.$r" "$q" "$resnet" --threads "$threads" bench --json --weights "$out/r50.pth" --batch 32
    bench "$out/q.int8.$r" "$q" "$resnet" --threads "$threads" bench --json --weights "$out/r50.int8.safetensors" --batch 32
    if [[ $ort_version != none ]]; then
      bench "$out/q.ort.$r" "$q" python3 tools/bench_onnxruntime.py --json --threads "$threads" --arch resnet50 \
        --int8 "$out/calib" --calib-images "$calib_images"
    fi
    if [[ $ov_version != none ]]; then
      bench "$out/q.ov.$r" "$q" python3 tools/bench_openvino.py --json --threads "$threads" --arch resnet50 \
        --int8 "$out/calib" --calib-images "$calib_images"
    fi
    if [[ $has_avx512 == yes ]]; then
      RESNET_AVX512=0 bench "$out/q.f32avx2.$r" "$q" "$resnet" --threads "$threads" bench --json --weights "$out/r50.pth" --batch 32
      RESNET_AVX512=0 bench "$out/q.int8avx2.$r" "$q" "$resnet" --threads "$threads" bench --json --weights "$out/r50.int8.safetensors" --batch 32
    fi
    echo "int8 round $r done" >&2
  done
  python3 - "$out" "$rounds" <<'PY'
import json, os, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
med = statistics.median
def load(kind):
    """{name: [result of round 1, round 2, …]}; rounds whose file is missing are skipped."""
    res = {}
    for r in range(1, rounds + 1):
        path = f"{out}/q.{kind}.{r}.json"
        if os.path.exists(path):
            for x in json.load(open(path))["results"]:
                res.setdefault(x["name"], []).append(x)
    return res
runs = {k: load(k) for k in ("f32", "int8", "ort", "ov", "f32avx2", "int8avx2")}
avx2 = f"{out}/q.int8avx2.1.json"
print("ours int8:", json.load(open(f"{out}/q.int8.1.json")).get("precision", "?"), "| RESNET_AVX512=0:",
      json.load(open(avx2)).get("precision", "?") if os.path.exists(avx2)
      else "not run: this CPU has no AVX-512, the columns before it are its AVX2 path")
def speed(rs):
    return f"{med(x['images_per_s'] for x in rs):.1f}" if rs else "-"
def ratio(a, b):
    """a/b: of the medians, and (in brackets) the median of the rounds' own ratios."""
    if not a or not b:
        return "-"
    m = med(x["images_per_s"] for x in a) / med(x["images_per_s"] for x in b)
    p = med(x["images_per_s"] / y["images_per_s"] for x, y in zip(a, b))
    return f"{m:.2f} ({p:.2f})"
print(f"{'config':<18} {'f32':>8} {'int8':>8} {'ORT int8':>9} {'OV int8':>8} {'int8/f32':>13} {'int8/ORT':>13} "
      f"{'int8/OV':>13} | {'AVX2 f32':>8} {'AVX2 int8':>9} {'int8/f32':>13}")
for name, batch in (("infer224", 32), ("latency224", 1)):
    g = {k: v.get(name, []) for k, v in runs.items()}
    print(f"{'resnet50 ' + name:<18} {speed(g['f32']):>8} {speed(g['int8']):>8} {speed(g['ort']):>9} "
          f"{speed(g['ov']):>8} {ratio(g['int8'], g['f32']):>13} {ratio(g['int8'], g['ort']):>13} "
          f"{ratio(g['int8'], g['ov']):>13} | {speed(g['f32avx2']):>8} {speed(g['int8avx2']):>9} "
          f"{ratio(g['int8avx2'], g['f32avx2']):>13}")
print("(images/s, medians of the rounds; ratios of the medians, per-round median in brackets; per-round values in", out, ")")
PY
fi
