#!/usr/bin/env python3
"""Does Grad-CAM point at the object? Fashion-MNIST items placed at random on a 3×-wide black canvas, a model
trained on such canvases by `resnet train`, and the share of each heatmap's mass that falls inside the item's box.

  1. Writes an image folder (tools/ only, nothing committed): DIR/train/<class>/*.png from the first --train
     Fashion-MNIST training items and DIR/test/<class>/*.png from the first --test test items, each 28×28 item
     pasted at a random column of a black 28×84 canvas (seeded), its column recorded;
  2. trains `resnet train --data DIR --format folder --stem small --widths 16,32,64,128 --resize 56` (the chapter's
     net with the 3×3 stride-1 stem, seeing each canvas at 56×168, so the last stage's map is 7×21: a cell per 4
     canvas pixels) for --epochs, timed;
  3. runs `resnet predict --json --explain` on the first 200 test canvases (the predicted class, the last stage),
     upsamples each raw map bilinearly to the network's input (as ours does, `align_corners=False`), and measures
     the share of the map's mass inside the item's 28×28 box scaled alike (and inside the tight box of its non-zero
     pixels).
Prints the mean share over the 200, the median, and how many images reach 90 %. With --figure PATH it also
composes the first 8 canvases, the heatmaps `resnet predict --explain` wrote for them (unchanged, enlarged 4×
without smoothing) and the predictions into one picture (docs/gradcam-canvases.png).

Run from the repository root after `cargo build --release`:
    python3 tools/object_mass.py [--train 12000] [--epochs 2] [--keep DIR]
"""

import argparse
import gzip
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent.parent
BINARY = ROOT / "target" / "release" / "resnet"
DATA = ROOT / "data" / "fashion-mnist"
CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
WIDTH = 84


def load(split):
    images = np.frombuffer(gzip.open(DATA / f"{split}-images-idx3-ubyte.gz").read()[16:], np.uint8)
    labels = np.frombuffer(gzip.open(DATA / f"{split}-labels-idx1-ubyte.gz").read()[8:], np.uint8)
    return images.reshape(-1, 28, 28), labels


def placements(images, rng):
    """(left column, item) of each item: one draw each, in order."""
    return [(int(rng.integers(0, WIDTH - 28 + 1)), item) for item in images]


def write_split(root, split, images, labels, rng):
    placed = []
    for i, (label, (left, item)) in enumerate(zip(labels, placements(images, rng))):
        canvas = np.zeros((28, WIDTH), np.uint8)
        canvas[:, left:left + 28] = item
        path = root / split / CLASSES[label].replace(" ", "_") / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(canvas, "L").save(path)
        placed.append((path, left, item))
    return placed


def figure(path, chosen, labels, lines, cams):
    from PIL import ImageDraw
    scale, pad, text_h = 4, 6, 16
    cell_w, cell_h = WIDTH * scale, 28 * scale
    rows = len(chosen)
    fig = Image.new("RGB", (2 * cell_w + 3 * pad, rows * (cell_h + text_h + pad) + pad), "white")
    draw = ImageDraw.Draw(fig)
    for r, (line, (img_path, _left, _item), label) in enumerate(zip(lines, chosen, labels)):
        v = json.loads(line)
        y = pad + r * (cell_h + text_h + pad)
        canvas = Image.open(img_path).convert("RGB").resize((cell_w, cell_h), Image.NEAREST)
        cam = Image.open(cams / f"{pathlib.Path(img_path).stem}.cam.png").convert("RGB")
        fig.paste(canvas, (pad, y))
        fig.paste(cam.resize((cell_w, cell_h), Image.NEAREST), (2 * pad + cell_w, y))
        pred = v["class"]
        prob = v["probabilities"][v["predicted"]]
        truth = CLASSES[label].replace(" ", "_")
        mark = "" if v["class"] == truth else f"  (truth: {truth})"
        draw.text((pad, y + cell_h + 2), f"predicted {pred} {prob:.0%}{mark}; heatmap of {pred} at "
                  f"{v['explain']['layer']}", fill="black")
    fig.save(path)
    print(f"figure: {path}")


def background(tmp, run, lines, shares):
    """Per predicted class: the images, their mean share inside the box, and the map of an all-black canvas for
    that class (the raw grid's median: its level away from the canvas's edges, where the zero padding shows).
    Where that floor is not zero, the classifier weighs the background's features (the same wherever the canvas
    is black and far from the item) positively for that class: every map of it carries the floor over the
    whole canvas."""
    black = tmp / "black.png"
    Image.fromarray(np.zeros((28, WIDTH), np.uint8), "L").save(black)
    by_class = {}
    for line, share in zip(lines, shares):
        v = json.loads(line)
        by_class.setdefault(v["class"], []).append((share, max(max(r) for r in v["explain"]["grid"])))
    clean = []
    print("predicted class: images, mean share inside; the floor: an all-black canvas's map for the class (the "
          "grid's median; the class's maps' mean peak)")
    for name in sorted(by_class):
        got = subprocess.run([str(BINARY), "predict", "--json", "--weights", str(run / "model.safetensors"),
                              "--explain", str(tmp / "cams-black"), "--class", name, str(black)],
                             check=True, capture_output=True, text=True).stdout
        grid = np.array(json.loads(got)["explain"]["grid"])
        items = by_class[name]
        floor = float(np.median(grid))
        if floor == 0:
            clean += [s for s, _ in items]
        print(f"  {name:<11} {len(items):>3}  {np.mean([s for s, _ in items]):6.1%}   floor {floor:.4f} "
              f"(peak {np.mean([p for _, p in items]):.4f})")
    if clean:
        print(f"over the {len(clean)} images of the classes without a floor: mean {np.mean(clean):.1%}, "
              f"{sum(s >= 0.9 for s in clean)} at 90 % or more")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=12000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--resize", type=int, default=56, help="the canvas's height as the network sees it")
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--keep", help="a directory to keep the data, the run and the maps in")
    ap.add_argument("--layer", help="the layer to explain (default: the last stage)")
    ap.add_argument("--reuse", action="store_true", help="reuse the data and the run in --keep DIR")
    ap.add_argument("--figure", help="write a grid of canvases, heatmaps and predictions here (PNG)")
    ap.add_argument("--widths", default="16,32,64,128", help="the stages' widths (`resnet train --widths`; three "
                    "stages end at a quarter of the input's resolution, four at an eighth)")
    ap.add_argument("--recipe", help="train with `resnet train --recipe NAME` (its batch size and schedule; the stem, "
                    "widths and resize stay this tool's)")
    a = ap.parse_args()
    tmp = pathlib.Path(a.keep) if a.keep else pathlib.Path(tempfile.mkdtemp())
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        rng = np.random.default_rng(0)
        tr_x, tr_y = load("train")
        te_x, te_y = load("t10k")
        data = tmp / "canvases"
        run = tmp / "run"
        if a.reuse:
            # The same draws as when they were written: the boxes are recomputed, not read back.
            write = lambda split, x, y: [(data / split / CLASSES[l].replace(" ", "_") / f"{i:05d}.png", *rest)
                                         for i, (l, rest) in enumerate(zip(y, placements(x, rng)))]
            write("train", tr_x[:a.train], tr_y[:a.train])
            test = write("test", te_x[:a.test], te_y[:a.test])
        else:
            if data.exists():
                shutil.rmtree(data)
            write_split(data, "train", tr_x[:a.train], tr_y[:a.train], rng)
            test = write_split(data, "test", te_x[:a.test], te_y[:a.test], rng)
        train = None if a.reuse else [str(BINARY), "train", "--data", str(data), "--format", "folder", "--stem", "small", "--widths",
                 a.widths, "--resize", str(a.resize), "--epochs", str(a.epochs), "--quiet", "--out", str(run)]
        train = train and train + (["--recipe", a.recipe] if a.recipe else ["--batch-size", "64"])
        if train:
            print("$ " + " ".join(["resnet"] + train[1:]).replace(str(tmp), "TMP"), flush=True)
            started = time.time()
            subprocess.run(train, check=True)
            print(f"trained in {time.time() - started:.0f} s", flush=True)
        metrics = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
        if metrics:
            print("last epoch:", json.dumps(metrics[-1]))
        chosen = test[:a.count]
        predict = [str(BINARY), "predict", "--json", "--weights", str(run / "model.safetensors"), "--explain",
                   str(tmp / "cams")] + (["--layer", a.layer] if a.layer else []) + [str(p) for p, *_ in chosen]
        started = time.time()
        out = subprocess.run(predict, check=True, capture_output=True, text=True).stdout.splitlines()
        print(f"explained {len(chosen)} canvases in {time.time() - started:.1f} s", flush=True)
        shares, tight_shares, far_shares, correct, rights = [], [], [], 0, []
        for line, (_path, left, item), label in zip(out, chosen, te_y):
            v = json.loads(line)
            e = v["explain"]
            grid = torch.tensor(e["grid"], dtype=torch.float64)
            h, w = e["input_size"]
            heat = F.interpolate(grid[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
            heat = heat.numpy()
            total = heat.sum()
            if total <= 0:
                shares.append(0.0)
                tight_shares.append(0.0)
                far_shares.append(0.0)
                continue
            # The box in the input's pixels (the network may see the canvas enlarged: --resize).
            sy, sx = h / 28, w / WIDTH
            x0, x1 = round(left * sx), round((left + 28) * sx)
            shares.append(heat[:, x0:x1].sum() / total)
            band = round(8 * sx)
            far_shares.append((heat[:, :max(0, x0 - band)].sum() + heat[:, x1 + band:].sum()) / total)
            rows, cols = np.nonzero(item)
            r0, r1 = round(rows.min() * sy), round((rows.max() + 1) * sy)
            c0, c1 = round((left + cols.min()) * sx), round((left + cols.max() + 1) * sx)
            tight_shares.append(heat[r0:r1, c0:c1].sum() / total)
            # The folder's classes are its sorted folder names, not Fashion-MNIST's label order.
            right = v["class"] == CLASSES[label].replace(" ", "_")
            correct += right
            rights.append(right)
        shares = np.array(shares)
        tight_shares = np.array(tight_shares)
        print(f"accuracy on these {len(chosen)}: {correct / len(chosen):.1%}")
        print(f"heatmap mass inside the item's 28×28 box: mean {shares.mean():.1%}, median {np.median(shares):.1%}, "
              f"{(shares >= 0.9).sum()} of {len(shares)} images at 90 % or more")
        right = shares[np.array(rights, dtype=bool)]
        if len(right):
            print(f"on the {len(right)} classified right: mean {right.mean():.1%}, median {np.median(right):.1%}")
        print(f"inside the tight box of the item's non-zero pixels: mean {tight_shares.mean():.1%}, "
              f"median {np.median(tight_shares):.1%}")
        print(f"the box covers 28 of {WIDTH} columns: a map spread evenly would put {28 / WIDTH:.1%} inside")
        print(f"farther than 8 canvas pixels outside the box: mean {np.mean(far_shares):.1%}")
        background(tmp, run, out, shares)
        if a.figure:
            figure(a.figure, chosen[:8], te_y[:8], out[:8], tmp / "cams")
        return 0 if shares.mean() >= 0.9 else 1
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
