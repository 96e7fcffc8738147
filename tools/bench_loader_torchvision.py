#!/usr/bin/env python3
"""Times torchvision's data loading alone on an image folder, for comparison with the Rust loader
(`resnet bench --loader DIR`).

    python3 tools/bench_loader_torchvision.py DIR [--transforms imagenet|cifar] [--batch 64] [--workers 2] [--limit N]

Reads `DIR/train` if it exists, else `DIR`, with `torchvision.datasets.ImageFolder` (PIL, `convert('RGB')`) and a
`DataLoader(shuffle=True, num_workers=WORKERS)`, through the same training transforms as the Rust preset:
imagenet = RandomResizedCrop(224) + RandomHorizontalFlip + ToTensor + Normalize(ImageNet mean/std);
cifar = RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize. Prints images per second over one
epoch (from the first `next()` to the last batch, worker start-up included, as the Rust number includes its threads).
"""

import argparse
import pathlib
import time

import torch
import torchvision
from torchvision import transforms as T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", type=pathlib.Path)
    ap.add_argument("--transforms", default="imagenet", choices=["imagenet", "cifar"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None)
    a = ap.parse_args()
    root = a.dir / "train" if (a.dir / "train").is_dir() else a.dir
    norm = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    if a.transforms == "imagenet":
        tf = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    else:
        tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    t0 = time.perf_counter()
    ds = torchvision.datasets.ImageFolder(str(root), transform=tf)
    open_s = time.perf_counter() - t0
    loader = torch.utils.data.DataLoader(ds, batch_size=a.batch, shuffle=True, num_workers=a.workers)
    start = time.perf_counter()
    n = 0
    for x, y in loader:
        n += len(y)
        if a.limit is not None and n >= a.limit:
            break
    secs = time.perf_counter() - start
    print(
        f"{n} images in {secs:.2f} s: {n / secs:.0f} images/s ({a.workers} workers, batch {a.batch}, {a.transforms};"
        f" opening took {open_s:.2f} s; torch {torch.__version__}, torchvision {torchvision.__version__})"
    )


if __name__ == "__main__":
    main()
