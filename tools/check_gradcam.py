#!/usr/bin/env python3
"""Checks our Grad-CAM (`resnet predict --explain DIR --json`) against Grad-CAM computed in PyTorch with hooks.

PyTorch's side is the usual recipe: a forward hook on the module (by its state-dict name) keeps its output A and
registers a tensor hook for dScore/dA; `logits[0, class].backward()` on the model in `eval()`; channel weights =
the spatial mean of the gradient; map = relu(sum_c w_c A_c); bilinear upsampling with
`F.interpolate(..., align_corners=False)`. The maps must agree within 1e-4 of the largest value of PyTorch's map,
and the class explained must be the same.

Networks (each at several layers and classes):
  chapter    the chapter's nn.Sequential ResNet-18 (tools/chapter_model.py), random init, 1 channel;
  resnet18   torchvision's, random init (torch's own), 3 channels, ImageNet preprocessing;
  resnet50   the same;
  trained    a chapter net trained briefly by `resnet train` on the bundled Fashion-MNIST (widths 16..128, at 64×64), loaded
             into tools/chapter_model.py with load_state_dict(strict=True).
Random-init batch norms get non-trivial running statistics from a few training-mode forwards first.

With --write-golden it also writes tests/golden/gradcam.safetensors for tests/golden_gradcam.rs: the formula weights
of tools/make_torchvision_golden.py (computed the same way on the Rust side, so the file holds no weights), a
96×96 input per network, and PyTorch's maps (and one upsampled map per network).

Run from the repository root after `cargo build --release`:
    python3 tools/check_gradcam.py [--write-golden] [--skip-trained]
"""

import argparse
import copy
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torchvision import transforms

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import chapter_model  # noqa: E402
from make_torchvision_golden import SEED, formula, key_list  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
BINARY = ROOT / "target" / "release" / "resnet"
TOLERANCE = 1e-4


def grad_cam(model, layer, x, cls=None):
    """Grad-CAM of x [1, c, h, w] at the module named `layer`: (class, map [h', w'], upsampled [h, w])."""
    module = dict(model.named_modules())[layer]
    store = {}

    def forward_hook(_m, _i, out):
        store["a"] = out
        out.register_hook(lambda g: store.__setitem__("g", g))

    handle = module.register_forward_hook(forward_hook)
    try:
        model.zero_grad()
        logits = model(x)
        c = int(logits[0].argmax()) if cls is None else cls
        logits[0, c].backward()
    finally:
        handle.remove()
    a, g = store["a"][0].detach(), store["g"][0].detach()
    w = g.mean(dim=(1, 2))
    cam = F.relu((w[:, None, None] * a).sum(0))
    up = F.interpolate(cam[None, None], size=x.shape[2:], mode="bilinear", align_corners=False)[0, 0]
    return c, cam, up


def warm_batch_norms(model, c, side):
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, c, side, side))
    model.eval()


def ours(weights, image, layer, cls, extra):
    args = [str(BINARY), "--threads", "2", "predict", "--json", "--weights", str(weights), "--explain",
            str(image.parent / "cams"), *extra]
    if layer is not None:
        args += ["--layer", layer]
    if cls is not None:
        args += ["--class", str(cls)]
    out = subprocess.run(args + [str(image)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"resnet failed: {out.stderr.strip()}")
    e = json.loads(out.stdout)["explain"]
    return e["index"], np.array(e["grid"], dtype=np.float64), e["layer"]


def compare(what, model, weights, image, x, cases, extra=()):
    """Our map against PyTorch's (float32, the tolerance applies) and both against PyTorch's in float64: where
    float32 PyTorch itself strays from float64 (a ReLU input within rounding of zero taking the other side, deep
    below the classifier), the same tolerance cannot hold for anyone, and the line says so."""
    ok = True
    model64 = copy.deepcopy(model).double()
    for layer, cls in cases:
        name = layer or default_layer(model)
        want_c, cam, _ = grad_cam(model, name, x, cls)
        _, cam64, _ = grad_cam(model64, name, x.double(), want_c)
        got_c, grid, got_layer = ours(weights, image, layer, cls, list(extra))
        want, exact = cam.numpy().astype(np.float64), cam64.numpy()
        scale = np.abs(exact).max()
        if grid.shape != want.shape:
            print(f"{what} {name}: map {grid.shape} vs PyTorch's {want.shape}: FAILED")
            ok = False
            continue
        if scale == 0:
            good = np.abs(grid).max() == 0 and got_c == want_c
            print(f"{what:9s} {name:16s} class {got_c:3d} (PyTorch {want_c:3d})  map all zero in float64 PyTorch, "
                  f"ours max {np.abs(grid).max():.2e}: {'ok' if good else 'FAILED'}")
            ok = ok and good
            continue
        rel = np.abs(grid - want).max() / scale
        ours64 = np.abs(grid - exact).max() / scale
        torch64 = np.abs(want - exact).max() / scale
        conditioned = torch64 <= TOLERANCE / 10
        good = got_c == want_c and got_layer == name and (rel <= TOLERANCE or not conditioned)
        verdict = "ok" if rel <= TOLERANCE else ("ill-conditioned (PyTorch f32 strays as far)" if good else "FAILED")
        print(f"{what:9s} {name:16s} class {got_c:3d} (PyTorch {want_c:3d})  map {grid.shape[0]}×{grid.shape[1]}  "
              f"ours vs PyTorch {rel:.2e} of scale (tolerance {TOLERANCE:g}); vs float64: ours {ours64:.2e}, "
              f"PyTorch f32 {torch64:.2e}: {verdict}")
        ok = ok and good
    return ok


def default_layer(model):
    return "layer4" if hasattr(model, "layer4") else "resnet_block4"


def test_image(tmp, c, h, w, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    blob = 255 * np.exp(-(((xx - 0.35 * w) / (0.15 * w)) ** 2 + ((yy - 0.6 * h) / (0.2 * h)) ** 2))
    base = np.stack([blob, (xx * 255 // w), (yy * 255 // h)], axis=-1)[..., :c]
    pixels = np.clip(base + rng.integers(-30, 30, size=base.shape), 0, 255).astype(np.uint8)
    path = tmp / f"image{c}_{seed}.png"
    Image.fromarray(pixels[..., 0] if c == 1 else pixels, "L" if c == 1 else "RGB").save(path)
    return path


def check_random(tmp):
    ok = True
    torch.manual_seed(0)
    # The chapter's net, 1 channel, seen at 96 on the shorter side.
    net = chapter_model.resnet18()
    warm_batch_norms(net, 1, 96)
    weights = tmp / "chapter.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    image = test_image(tmp, 1, 110, 97, 1)
    x = transforms.Compose([transforms.Resize(96), transforms.ToTensor()])(Image.open(image).convert("L"))[None]
    cases = [(None, None), ("resnet_block3", 3), ("resnet_block4.0", 7), ("resnet_block2", None)]
    ok &= compare("chapter", net, weights, image, x, cases, ["--resize", "96"])
    for name in ["resnet18", "resnet50"]:
        torch.manual_seed(1)
        model = getattr(torchvision.models, name)()
        warm_batch_norms(model, 3, 64)
        weights = tmp / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
        image = test_image(tmp, 3, 300, 341, 2)
        pre = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                  transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
        x = pre(Image.open(image).convert("RGB"))[None]
        cases = [(None, None), ("layer3", 281), ("layer4.0", None), ("layer4.1", 7), ("layer2.1", None)]
        ok &= compare(name, model, weights, image, x, cases)
    return ok


def check_trained(tmp):
    run = tmp / "run"
    args = [str(BINARY), "--threads", "2", "train", "--resize", "64", "--widths", "16,32,64,128", "--limit-train",
            "2000", "--limit-test", "200", "--batch-size", "32", "--epochs", "1", "--quiet", "--out", str(run)]
    out = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"train failed: {out.stderr.strip()}")
    weights = run / "model.safetensors"
    net = chapter_model.resnet18(widths=(16, 32, 64, 128))
    net.load_state_dict(load_file(str(weights)), strict=True)
    net.eval()
    with safe_open(str(weights), "pt") as f:
        meta = f.metadata()
    pipeline = json.loads(meta["resnet.eval_transform"])
    mean, std = pipeline.get("normalize") or ([0.0], [1.0])
    import gzip
    raw = gzip.open(ROOT / "data" / "fashion-mnist" / "t10k-images-idx3-ubyte.gz").read()[16:]
    ok = True
    for i in [0, 1]:
        image = tmp / f"fm{i}.png"
        Image.fromarray(np.frombuffer(raw, np.uint8)[i * 784:(i + 1) * 784].reshape(28, 28), "L").save(image)
        steps = [transforms.Resize(s["resize"]) for s in pipeline["steps"] if "resize" in s]
        x = transforms.Compose(steps + [transforms.ToTensor(), transforms.Normalize(mean, std)])(
            Image.open(image).convert("L"))[None]
        ok &= compare(f"trained{i}", net, weights, image, x, [(None, None), ("resnet_block2", 1)])
    return ok


def write_golden():
    """tests/golden/gradcam.safetensors: formula weights (not stored), an input and PyTorch's maps per network."""
    torch.manual_seed(5)
    out, cases, keys = {}, [], {}
    nets = [("chapter", chapter_model.resnet18(), 1, ["resnet_block4", "resnet_block3", "resnet_block4.0"]),
            ("resnet18", torchvision.models.resnet18(num_classes=10), 3, ["layer4", "layer3", "layer4.1"]),
            ("resnet50", torchvision.models.resnet50(num_classes=10), 3, ["layer4", "layer3", "layer4.0"])]
    for name, model, c, layers in nets:
        sd = model.state_dict()
        with torch.no_grad():
            for k, key in enumerate(sd):
                sd[key].copy_(formula(k, key, list(sd[key].shape)))
        model.eval()
        keys[name] = key_list(model)
        x = torch.randn(1, c, 96, 96)
        out[f"{name}.input"] = x
        for i, (layer, cls) in enumerate(zip(layers, [None, 3, None])):
            got_c, cam, up = grad_cam(model, layer, x, cls)
            out[f"{name}.{i}.map"] = cam
            out[f"{name}.{i}.class"] = torch.tensor([got_c], dtype=torch.int64)
            if i == 0:
                out[f"{name}.{i}.upsampled"] = up
            cases.append([name, i, layer, cls])
    path = ROOT / "tests" / "golden" / "gradcam.safetensors"
    meta = {"torch": torch.__version__, "torchvision": torchvision.__version__, "seed": SEED, "cases": cases,
            "keys": keys}
    save_file({k: v.detach().contiguous() for k, v in out.items()}, str(path),
              metadata={"golden": json.dumps(meta, sort_keys=True)})
    print(f"wrote {path.relative_to(ROOT)}: {len(out)} tensors, {path.stat().st_size:,} bytes")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write-golden", action="store_true")
    parser.add_argument("--skip-trained", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.write_golden:
        write_golden()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        ok = check_random(tmp)
        if not args.skip_trained:
            ok &= check_trained(tmp)
    print("all agree" if ok else "DISAGREEMENT")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
