#!/usr/bin/env python3
"""Checks `resnet export --onnx` by hand: the ONNX checker, then ONNX Runtime's and OpenVINO's logits against ours.

    python3 tools/check_onnx.py                       # fresh chapter, resnet18 and resnet50 model files
    python3 tools/check_onnx.py --model runs/quick/model.safetensors [--model ...]
    python3 tools/check_onnx.py --names chapter,bottleneck --fold-bn

For each model file: `resnet export` (dynamic batch, plus `--fold-bn` when asked), `onnx.checker.check_model(...,
full_check=True)`, then each runtime on the export at batch 1 and 7 with a deterministic input; our logits come
from `cargo run --release --example onnx_logits` (the library's compiled network on the same raw input). Prints
max |difference| / max |logit| per runtime and batch. Needs onnx, onnxruntime, openvino and numpy (not the Rust
tests). Fresh model files (`--names`) are written by the same example, with random batch-norm statistics.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cargo(*args):
    out = subprocess.run(["cargo", "run", "--release", "-q", *args], cwd=ROOT, check=True,
                         capture_output=True, text=True)
    return out.stdout


def input_shape(model, batch):
    """[N, C, H, W] from the export's input, the dynamic H and W taken as 64."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    c = dims[1].dim_value
    h = dims[2].dim_value or 64
    w = dims[3].dim_value or 64
    return [batch, c, h, w]


def deterministic_input(shape):
    n = int(np.prod(shape))
    i = np.arange(n, dtype=np.int64)
    return (((i * 7919) % 1013) / 1013.0 - 0.5).astype(np.float32).reshape(shape)


def ours(model_file, x, tmp):
    path = os.path.join(tmp, "input.bin")
    x.astype("<f4").tofile(path)
    rows = json.loads(cargo("--example", "onnx_logits", "--", model_file, path,
                            "x".join(str(d) for d in x.shape)))
    return np.array(rows, dtype=np.float32)


def onnxruntime_logits(onnx_path, x):
    import onnxruntime as ort
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x})[0]


def openvino_logits(onnx_path, x):
    import openvino as ov
    core = ov.Core()
    compiled = core.compile_model(core.read_model(onnx_path), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})
    return compiled([x])[compiled.output(0)]


def check(model_file, fold_bn, tmp):
    name = os.path.basename(model_file)
    onnx_path = os.path.join(tmp, name + (".fold" if fold_bn else "") + ".onnx")
    flags = ["--fold-bn"] if fold_bn else []
    print(cargo("--", "export", "--weights", model_file, "--onnx", onnx_path, *flags).strip())
    model = onnx.load(onnx_path)
    onnx.checker.check_model(model, full_check=True)
    ops = sorted({n.op_type for n in model.graph.node})
    print(f"  checker (full_check): ok; ops {', '.join(ops)}")
    for batch in (1, 7):
        x = deterministic_input(input_shape(model, batch))
        ref = ours(model_file, x, tmp)
        scale = float(np.abs(ref).max())
        for runtime, run in (("onnxruntime", onnxruntime_logits), ("openvino", openvino_logits)):
            got = run(onnx_path, x)
            assert got.shape == ref.shape, (got.shape, ref.shape)
            diff = float(np.abs(got - ref).max())
            print(f"  batch {batch} input {list(x.shape)} {runtime:<11} max|diff| {diff:.3e}  "
                  f"max|logit| {scale:.3e}  ratio {diff / scale:.2e}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", default=[], help="a model file (repeatable)")
    p.add_argument("--names", default="chapter,resnet18,resnet50",
                   help="fresh model files to write when no --model is given (chapter, resnet18, "
                        "resnet50, bottleneck)")
    p.add_argument("--fold-bn", action="store_true", help="also check the --fold-bn export")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models = args.model
        if not models:
            for n in args.names.split(","):
                path = os.path.join(tmp, n + ".safetensors")
                cargo("--example", "onnx_logits", "--", "--save", n, path)
                models.append(path)
        for m in models:
            for fold in ([False, True] if args.fold_bn else [False]):
                check(m, fold, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
