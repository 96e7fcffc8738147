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
# A seed whose run stopped part-way (a checkpoint but no wall.txt) is resumed from its last finished epoch: its
# elapsed_sec still counts every finished epoch once, its wall time only the last process.
set -euo pipefail
out=$1
seeds=$2
shift 2
bin=${RESNET_BIN:-target/release/resnet}
[ -x "$bin" ] || cargo build --release
mkdir -p "$out"
for s in $seeds; do
    dir="$out/seed-$s"
    if [ -f "$dir/wall.txt" ]; then
        echo "seed $s: $dir already holds a finished run, kept"
        continue
    fi
    start=$(date +%s.%N)
    if [ -f "$dir/checkpoint.safetensors" ]; then
        # A run stopped part-way (killed, machine shut down): continue it from its last finished epoch. The
        # checkpoint holds the settings; the flags still matter for what it does not hold (--threads, --data).
        echo "seed $s: resuming $dir"
        "$bin" train "$@" --resume "$dir" --quiet >> "$out/seed-$s.log" 2>&1
        how=resumed
    else
        "$bin" train "$@" --seed "$s" --quiet --out "$dir" > "$out/seed-$s.log" 2>&1
        how=whole
    fi
    end=$(date +%s.%N)
    echo "$start $end $how" > "$dir/wall.txt"
done
python3 - "$out" $seeds <<'PY'
import json, statistics, sys
out, seeds = sys.argv[1], sys.argv[2:]
accs, walls, runs = [], [], []
for s in seeds:
    d = f"{out}/seed-{s}"
    m = [json.loads(l) for l in open(f"{d}/metrics.jsonl")]
    start, end, *how = open(f"{d}/wall.txt").read().split()
    wall = float(end) - float(start)
    last = m[-1]
    accs.append(last["test_acc"])
    runs.append(last["elapsed_sec"])
    if how == ["resumed"]:
        wall_text = f"resumed, its last process {wall:.0f} s"
    else:
        walls.append(wall)
        wall_text = f"{wall:.0f} s"
    print(f"seed {s}: {len(m)} epochs, final accuracy {last['test_acc']:.4f}, wall {wall_text}, "
          f"training + evaluation {last['elapsed_sec']:.0f} s")
sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
print(f"mean {statistics.mean(accs):.4f} ± {sd:.4f} over {len(accs)} seeds; training + evaluation mean "
      f"{statistics.mean(runs):.0f} s, max {max(runs):.0f} s", end="")
print(f"; wall time of the unbroken runs mean {statistics.mean(walls):.0f} s, max {max(walls):.0f} s" if walls else "")
PY
