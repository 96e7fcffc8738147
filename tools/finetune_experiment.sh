#!/usr/bin/env bash
# Fine-tuning against training from scratch, on data every clone has: pretrain the chapter's network on
# Fashion-MNIST classes 0-4 (10,000 images), then train on 500 images of classes 5-9 twice, from the pretrained
# weights with a new classifier (--init --reset-head) and from a fresh initialization, with the same flags and
# seeds; both are evaluated on all 5,000 test images of classes 5-9.
#
#   tools/finetune_experiment.sh [OUT_DIR] [SEEDS...]      (default /tmp/finetune, seeds 0 1 2)
#
# Needs python3 with numpy and Pillow (tools/requirements.txt) to write the folders, and a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/finetune}
shift || true
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(0 1 2)
bin=target/release/resnet
cargo build --release --quiet
rm -rf "$out"
python3 tools/make_class_split_folders.py "$out" 10000 500
common=(--resize 28 --batch-size 64 --quiet)
"$bin" train --data "$out/pretrain" --epochs 3 "${common[@]}" --out "$out/runs/pretrain" | tail -1
for seed in "${seeds[@]}"; do
    ft=$("$bin" train --data "$out/finetune" --epochs 15 --seed "$seed" "${common[@]}" \
        --init "$out/runs/pretrain/model.safetensors" --reset-head --out "$out/runs/finetune-$seed" | grep '^epoch' | tail -1)
    sc=$("$bin" train --data "$out/finetune" --epochs 15 --seed "$seed" "${common[@]}" \
        --out "$out/runs/scratch-$seed" | grep '^epoch' | tail -1)
    echo "seed $seed  fine-tuned: $ft"
    echo "seed $seed  scratch:    $sc"
done
