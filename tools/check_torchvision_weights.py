#!/usr/bin/env python3
"""Checks that `resnet predict` on a torchvision state dict gives torchvision's own logits.

For each model named on the command line (default: resnet50), it
  1. builds `torchvision.models.<name>()` (1000 classes) with a fixed seed, gives its batch norms non-trivial
     running statistics (a few training-mode forwards on random images), switches to eval mode;
  2. saves `model.state_dict()` with `torch.save` (the zip + pickle `.pth` format torchvision distributes
     its weights in) and with `safetensors.torch.save_file`;
  3. writes a test image (a seeded RGB PNG of an odd size, so Resize(256) and CenterCrop(224) both work);
  4. runs torchvision's ImageNet evaluation transform on it with PIL (Resize(256), CenterCrop(224), ToTensor,
     Normalize) and the model, in float32, one thread;
  5. runs `resnet predict --json --weights FILE IMAGE` for both files and compares the logits: the largest
     difference over the largest |logit| must be at most 1e-4;
and the other way: a `resnet train --arch resnet18` model.safetensors loads into torchvision's resnet18 (with a
one-channel conv1, as Fashion-MNIST is grayscale) with `load_state_dict(strict=True)` and gives the same logits.

Nothing is committed: the files (100 MB for resnet50) go to a temporary directory.

Run from the repository root after `cargo build --release` (versions in tools/requirements.txt; torchvision is
installed with `pip install --no-deps torchvision==0.29.2`):
    python3 tools/check_torchvision_weights.py [resnet18 resnet50 ...]
"""

import json
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file
from torchvision import transforms

ROOT = pathlib.Path(__file__).resolve().parent.parent
BINARY = ROOT / "target" / "release" / "resnet"


def check(name: str, tmp: pathlib.Path) -> bool:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)()
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, 64, 64))
    model.eval()
    sd = model.state_dict()
    pth = tmp / f"{name}.pth"
    st = tmp / f"{name}.safetensors"
    torch.save(sd, pth)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(st))

    rng = np.random.default_rng(1)
    h, w = 300, 341
    yy, xx = np.mgrid[0:h, 0:w]
    pixels = np.stack(
        [(xx * 255 // w), (yy * 255 // h), ((xx + yy) * 7) % 256], axis=-1
    ).astype(np.int16)
    pixels = np.clip(pixels + rng.integers(-40, 40, size=pixels.shape), 0, 255).astype(np.uint8)
    image = tmp / "image.png"
    Image.fromarray(pixels, "RGB").save(image)

    preprocess = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )
    x = preprocess(Image.open(image).convert("RGB")).unsqueeze(0)
    with torch.no_grad():
        want = model(x)[0].numpy().astype(np.float64)

    ok = True
    for weights in [pth, st]:
        out = subprocess.run(
            [str(BINARY), "--threads", "2", "predict", "--json", "--weights", str(weights), str(image)],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            print(f"{name} {weights.suffix}: resnet failed: {out.stderr.strip()}")
            ok = False
            continue
        got = np.array(json.loads(out.stdout)["logits"], dtype=np.float64)
        scale = np.abs(want).max()
        diff = np.abs(got - want).max()
        rel = diff / scale
        top_ours = int(got.argmax())
        top_tv = int(want.argmax())
        verdict = "ok" if rel <= 1e-4 and top_ours == top_tv else "FAILED"
        print(
            f"{name} {weights.suffix:<12} logits max |Δ| {diff:.3e}, scale {scale:.3e}, "
            f"{rel:.3e} of scale (tolerance 1e-4); top-1 ours {top_ours}, torchvision {top_tv}: {verdict}"
        )
        ok = ok and verdict == "ok"
    return ok


def check_ours_into_torchvision(tmp: pathlib.Path) -> bool:
    """Trains `--arch resnet18` briefly on Fashion-MNIST (one channel, 10 classes), loads its
    model.safetensors into torchvision's resnet18 (conv1 made one-channel) with strict=True, and compares
    logits on a PNG with `resnet predict --json` (grayscale, Resize(32), ToTensor)."""
    run = tmp / "run"
    args = [str(BINARY), "--threads", "2", "train", "--arch", "resnet18", "--resize", "32", "--epochs", "1",
            "--limit-train", "256", "--limit-test", "64", "--batch-size", "32", "--quiet", "--out", str(run)]
    out = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        print(f"train --arch resnet18 failed: {out.stderr.strip()}")
        return False
    from safetensors.torch import load_file

    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    model.load_state_dict(load_file(str(run / "model.safetensors")), strict=True)
    model.eval()
    rng = np.random.default_rng(2)
    image = tmp / "gray.png"
    Image.fromarray(rng.integers(0, 256, size=(45, 37), dtype=np.uint8), "L").save(image)
    x = transforms.Compose([transforms.Resize(32), transforms.ToTensor()])(Image.open(image).convert("L"))
    with torch.no_grad():
        want = model(x.unsqueeze(0))[0].numpy().astype(np.float64)
    out = subprocess.run(
        [str(BINARY), "--threads", "2", "predict", "--json", "--weights", str(run / "model.safetensors"), str(image)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        print(f"predict failed: {out.stderr.strip()}")
        return False
    got = np.array(json.loads(out.stdout)["logits"], dtype=np.float64)
    rel = np.abs(got - want).max() / np.abs(want).max()
    verdict = "ok" if rel <= 1e-4 else "FAILED"
    print(f"ours -> torchvision resnet18 (strict=True): logits {rel:.3e} of scale (tolerance 1e-4): {verdict}")
    return verdict == "ok"


def main() -> int:
    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = True
    names = sys.argv[1:] or ["resnet50"]
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")
    with tempfile.TemporaryDirectory() as d:
        results = [check(n, pathlib.Path(d)) for n in names]
        results.append(check_ours_into_torchvision(pathlib.Path(d)))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
