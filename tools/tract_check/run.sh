#!/usr/bin/env bash
# tract (tract-onnx, a third runtime) on `resnet export --onnx` files:  tools/tract_check/run.sh [--bench]
#
# Fresh chapter, resnet18 and resnet50 model files (random batch-norm statistics, written by the onnx_logits
# example), exported, run by tract at batch 1 and 7 on a deterministic input and compared with our logits (the
# example's compiled network): max |tract − ours| / max |ours|. With --bench, tract's time per batch on resnet50 at
# 1×3×224×224 and 32×3×224×224 (ITERS runs each, default 3, after a warm-up run).
set -euo pipefail
cd "$(dirname "$0")/../.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cargo build --release -q --example onnx_logits --bin resnet
(cd tools/tract_check && cargo build --release -q)
tract=tools/tract_check/target/release/tract-check
for name in chapter resnet18 resnet50; do
    target/release/examples/onnx_logits --save "$name" "$tmp/$name.safetensors"
    target/release/resnet export --weights "$tmp/$name.safetensors" --onnx "$tmp/$name.onnx"
    if [ "$name" = chapter ]; then c=1 side=96; else c=3 side=224; fi
    for n in 1 7; do
        shape=${n}x${c}x${side}x${side}
        "$tract" --input "$shape" "$tmp/x.bin"
        target/release/examples/onnx_logits "$tmp/$name.safetensors" "$tmp/x.bin" "$shape" >"$tmp/ours.json"
        echo -n "$name $shape: "
        "$tract" "$tmp/$name.onnx" "$tmp/x.bin" "$shape" "$tmp/ours.json"
    done
done
if [ "${1:-}" = --bench ]; then
    for n in 1 32; do
        "$tract" --bench "$tmp/resnet50.onnx" "${n}x3x224x224" "${ITERS:-3}"
    done
fi
