#!/usr/bin/env python3
"""Checks `resnet export --onnx` by hand: the ONNX checker, then ONNX Runtime's and OpenVINO's logits against ours.

    python3 tools/check_onnx.py                       # fresh chapter, resnet18 and resnet50 model files
    python3 tools/check_onnx.py --model runs/quick/model.safetensors [--model ...]
    python3 tools/check_onnx.py --names chapter,bottleneck --fold-bn
    python3 tools/check_onnx.py --pytorch                 # ONNX in: torchvision's resnet50 exported by PyTorch

For each model file: `resnet export` (dynamic batch, plus `--fold-bn` when asked), `onnx.checker.check_model(...,
full_check=True)`, then each runtime on the export at batch 1 and 7 with a deterministic input; our logits come
from `cargo run --release --example onnx_logits` (the library's compiled network on the same raw input). Prints
max |difference| / max |logit| per runtime and batch. Needs onnx, onnxruntime, openvino and numpy (not the Rust
tests). Fresh model files (`--names`) are written by the same example, with random batch-norm statistics.

`--pytorch` checks the other direction: torchvision's resnet50 (random init, random batch-norm statistics: no
pretrained weights exist here) exported by `torch.onnx.export` (the TorchScript exporter at opset 17, the dynamo
exporter at opset 18 with its weights in a `.onnx.data` file beside it) is read by us as a model file. On Fashion-MNIST
test images (the only images here) prepared by torchvision's ImageNet evaluation transform, ONNX Runtime's logits are
compared with ours (the example on the .onnx file) at batch 1 and 7, and `resnet predict --json` on the PNG files
(our own preprocessing, the ImageNet default for a 3-channel 1000-class graph) with ONNX Runtime's top-5.
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


def fashion_pngs(tmp, count):
    """The first `count` Fashion-MNIST test images as RGB PNG files."""
    import gzip
    from PIL import Image
    raw = gzip.open(os.path.join(ROOT, "data", "fashion-mnist", "t10k-images-idx3-ubyte.gz")).read()[16:]
    paths = []
    for i in range(count):
        img = Image.frombytes("L", (28, 28), raw[i * 784:(i + 1) * 784]).convert("RGB")
        paths.append(os.path.join(tmp, f"fashion{i}.png"))
        img.save(paths[-1])
    return paths


def check_pytorch(tmp):
    import onnxruntime as ort
    import torch
    import torchvision
    from PIL import Image
    from torchvision import transforms
    torch.manual_seed(0)
    net = torchvision.models.resnet50()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = 0.75 + 0.5 * torch.rand(c)
            m.bias.data = torch.rand(c) - 0.5
            m.running_mean.data = torch.rand(c) - 0.5
            m.running_var.data = 0.5 + torch.rand(c)
    net.eval()
    pngs = fashion_pngs(tmp, 7)
    prep = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                               transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    x = torch.stack([prep(Image.open(p).convert("RGB")) for p in pngs])
    for name, kwargs in (("torchscript, opset 17", dict(dynamo=False, opset_version=17,
                                                        dynamic_axes={"input": {0: "N"}})),
                         ("dynamo, opset 18", dict(dynamo=True, opset_version=18,
                                                   dynamic_shapes=({0: torch.export.Dim("N")},)))):
        path = os.path.join(tmp, f"resnet50-{name.split(',')[0]}.onnx")
        torch.onnx.export(net, (x[:1],), path, input_names=["input"], output_names=["logits"], **kwargs)
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        print(f"torchvision resnet50 exported by PyTorch ({name}): {os.path.basename(path)}")
        for batch in (1, 7):
            xb = x[:batch].numpy()
            want = sess.run(["logits"], {"input": xb})[0]
            got = ours(path, xb, tmp)
            scale = float(np.abs(want).max())
            diff = float(np.abs(got - want).max())
            print(f"  batch {batch} ours vs onnxruntime max|diff| {diff:.3e}  max|logit| {scale:.3e}  "
                  f"ratio {diff / scale:.2e}")
        out = cargo("--", "predict", "--weights", path, *pngs, "--json", "--topk", "5")
        predicted = [json.loads(line) for line in out.splitlines()]
        want = sess.run(["logits"], {"input": x.numpy()})[0]
        same = 0
        for row, logits in zip(predicted, want):
            ours_top = [t["index"] for t in row["top"]]
            same += ours_top == list(np.argsort(-logits)[:5])
        print(f"  resnet predict --json on {len(pngs)} PNG files: top-5 equal to onnxruntime's on {same} of {len(pngs)}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", default=[], help="a model file (repeatable)")
    p.add_argument("--names", default="chapter,resnet18,resnet50",
                   help="fresh model files to write when no --model is given (chapter, resnet18, "
                        "resnet50, bottleneck)")
    p.add_argument("--fold-bn", action="store_true", help="also check the --fold-bn export")
    p.add_argument("--pytorch", action="store_true",
                   help="instead: torchvision's resnet50 exported by PyTorch, read by us, against onnxruntime")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.pytorch:
            check_pytorch(tmp)
            return 0
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
