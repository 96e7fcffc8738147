#!/usr/bin/env python3
"""Writes two grayscale PNG image folders from the bundled Fashion-MNIST, for the fine-tuning experiment:

  OUT/pretrain/{train,val}/<class>/NNNNN.png   classes 0-4 (t-shirt, trouser, pullover, dress, coat):
                                               the first PRETRAIN training images of those classes, and every
                                               test image of those classes as val/
  OUT/finetune/{train,val}/<class>/NNNNN.png   classes 5-9 (sandal, shirt, sneaker, bag, ankle boot): the first
                                               FINETUNE training images of those classes (default 500, 100 a
                                               class), and every test image of those classes as val/

Class folders are prefixed with the label (`5-sandal`) so their sorted order is the label order.

    python3 tools/make_class_split_folders.py OUT [PRETRAIN] [FINETUNE]

Then (tools/finetune_experiment.sh runs these and prints the two accuracies):
    resnet train --data OUT/pretrain --resize 28 --epochs 3 --out runs/pre
    resnet train --data OUT/finetune --resize 28 --epochs 15 --init runs/pre/model.safetensors --reset-head --out runs/ft
    resnet train --data OUT/finetune --resize 28 --epochs 15 --out runs/scratch
"""

import gzip
import pathlib
import sys

import numpy as np
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "fashion-mnist"
NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]


def read(name, offset):
    with gzip.open(DATA / name) as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


def split(kind):
    prefix = "train" if kind == "train" else "t10k"
    images = read(f"{prefix}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    labels = read(f"{prefix}-labels-idx1-ubyte.gz", 8)
    return images, labels


def write(out, images, labels, classes, limit):
    taken = 0
    for i, (img, label) in enumerate(zip(images, labels)):
        if label not in classes:
            continue
        if limit is not None and taken >= limit:
            break
        d = out / f"{label}-{NAMES[label]}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, "L").save(d / f"{i:05d}.png")
        taken += 1
    return taken


def main():
    out = pathlib.Path(sys.argv[1])
    pretrain = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
    finetune = int(sys.argv[3]) if len(sys.argv) > 3 else 500
    train, test = split("train"), split("test")
    for name, classes, limit in [("pretrain", {0, 1, 2, 3, 4}, pretrain), ("finetune", {5, 6, 7, 8, 9}, finetune)]:
        n = write(out / name / "train", *train, classes, limit)
        m = write(out / name / "val", *test, classes, None)
        print(f"{out / name}: {n} training and {m} validation images")


if __name__ == "__main__":
    main()
