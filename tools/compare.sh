#!/usr/bin/env bash
# Side-by-side benchmark: ours (`resnet bench`) and PyTorch's (tools/bench_pytorch.py), run alternately
# (A B A B …) on the same machine, then per configuration: ours, PyTorch (faster of NCHW and channels_last),
# ratio ours/PyTorch in images/s (medians of the per-round medians); then the peak memory of training at 96×96,
# each side measured in a fresh process.
#
#   tools/compare.sh [ROUNDS=3] [ITERS=3] [THREADS=2] [ONLY=all]
# Needs: cargo, python3 with the pinned PyTorch (pip install -r tools/requirements.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
iters=${2:-3}
threads=${3:-2}
only=${4:-all}
out=$(mktemp -d)
cargo build --release --quiet
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cpus; torch $(python3 -c 'import torch; print(torch.__version__)'); threads $threads; $(date -u +%F)"
for r in $(seq 1 "$rounds"); do
  ./target/release/resnet --threads "$threads" bench --json --iters "$iters" --only "$only" > "$out/ours.$r.json"
  python3 tools/bench_pytorch.py --json --threads "$threads" --iters "$iters" --only "$only" > "$out/torch.$r.json"
  echo "round $r done" >&2
done
python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def load(kind):
    runs = [json.load(open(f"{out}/{kind}.{r}.json"))["results"] for r in range(1, rounds + 1)]
    res = {}
    for run in runs:
        for x in run:
            res.setdefault(x["name"], []).append(x)
    return res
ours, torch = load("ours"), load("torch")
print("ours:", json.load(open(f"{out}/ours.1.json")).get("engine", "?"))
# ratio: of the two medians; per round: the median of the rounds' own ratios (each round runs the two sides a
# minute apart, so that ratio is less exposed to the shared machine's slow drifts).
print(f"{'config':<11} {'ours img/s':>11} {'torch img/s':>12} {'ratio':>6} {'per round':>10} {'ours GFLOP/s':>13} {'torch GFLOP/s':>14}  torch layout")
for name in ours:
    o, t = ours[name], torch.get(name)
    oi = statistics.median(x["images_per_s"] for x in o)
    og = statistics.median(x["gflops"] for x in o)
    if not t:
        print(f"{name:<11} {oi:>11.1f}"); continue
    ti = statistics.median(x["images_per_s"] for x in t)
    tg = statistics.median(x["gflops"] for x in t)
    fmt = max(set(x["format"] for x in t), key=[x["format"] for x in t].count)
    per_round = statistics.median(a["images_per_s"] / b["images_per_s"] for a, b in zip(o, t))
    print(f"{name:<11} {oi:>11.1f} {ti:>12.1f} {oi/ti:>6.2f} {per_round:>10.2f} {og:>13.1f} {tg:>14.1f}  {fmt}")
print("(per-round values in", out, ")")
PY
# Peak memory of training at 96×96, batch 256: each side in a fresh process that runs only that configuration
# (one warm-up and one timed step), PyTorch once per layout, so no earlier configuration's peak is counted.
if [[ $only == all || $only == *train96* ]]; then
  ours_rss=$(./target/release/resnet --threads "$threads" bench --json --iters 1 --warmup 1 --only train96 |
    python3 -c 'import json,sys; print(round(json.load(sys.stdin)["results"][0]["peak_rss_mib"]))')
  rss_line="peak RSS, train96 alone: ours $ours_rss MiB"
  for fmt in nchw channels_last; do
    t_rss=$(python3 tools/bench_pytorch.py --json --threads "$threads" --iters 1 --warmup 1 --only train96 --formats $fmt |
      python3 -c 'import json,sys; print(round(json.load(sys.stdin)["results"][0]["peak_rss_mib"]))')
    rss_line="$rss_line, PyTorch $fmt $t_rss MiB"
  done
  echo "$rss_line"
fi
