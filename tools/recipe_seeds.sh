#!/usr/bin/env bash
# Runs one training recipe over several seeds, one run after another, and summarizes them.
#
#   tools/recipe_seeds.sh OUT_DIR "SEEDS" [resnet train flags...]
#   e.g. tools/recipe_seeds.sh runs/fast "0 1 2" --recipe fast
#        tools/recipe_seeds.sh runs/fast-val "0 1 2" --recipe fast --val-split 0.1 --label-smoothing 0
#
# Each run goes to OUT_DIR/seed-S (its log in OUT_DIR/seed-S.log). The summary gives, per seed, the final
# evaluation's accuracy, the process's wall time (start-up and data loading included) and the run's own
# training + evaluation time (metrics.jsonl's elapsed_sec), then the mean ± sample standard deviation.
set -euo pipefail
out=$1
seeds=$2
shift 2
bin=${RESNET_BIN:-target/release/resnet}
[ -x "$bin" ] || cargo build --release
mkdir -p "$out"
for s in $seeds; do
    dir="$out/seed-$s"
    if [ -f "$dir/metrics.jsonl" ]; then
        echo "seed $s: $dir already holds a run, kept"
        continue
    fi
    start=$(date +%s.%N)
    "$bin" train "$@" --seed "$s" --quiet --out "$dir" > "$out/seed-$s.log" 2>&1
    end=$(date +%s.%N)
    echo "$start $end" > "$dir/wall.txt"
done
python3 - "$out" $seeds <<'PY'
import json, statistics, sys
out, seeds = sys.argv[1], sys.argv[2:]
accs, walls = [], []
for s in seeds:
    d = f"{out}/seed-{s}"
    m = [json.loads(l) for l in open(f"{d}/metrics.jsonl")]
    start, end = map(float, open(f"{d}/wall.txt").read().split())
    last = m[-1]
    accs.append(last["test_acc"])
    walls.append(end - start)
    print(f"seed {s}: {len(m)} epochs, final accuracy {last['test_acc']:.4f}, wall {end - start:.0f} s, "
          f"training + evaluation {last['elapsed_sec']:.0f} s")
sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
print(f"mean {statistics.mean(accs):.4f} ± {sd:.4f} over {len(accs)} seeds; wall time mean {statistics.mean(walls):.0f} s, max {max(walls):.0f} s")
PY
