#!/usr/bin/env python3
# Pinned: torch==2.15.0, torchvision==0.29.2 (see tools/requirements.txt), CPU, Python 3.11.
# Rerun from the repository root:  python3 tools/make_erasing_golden.py
"""Writes tests/golden/random_erasing.json: summary statistics of torchvision's `RandomErasing.get_params`
(scale (0.02, 0.33), ratio (0.3, 3.3), value 0, i.e. `RandomErasing(p=1)`'s draw) over DRAWS draws for each of
three tensor shapes.

Our generator is not torch's, so the rectangles themselves cannot match; their distribution must. For each shape:

  draws              number of get_params calls
  none               fraction of calls in which no attempt fit (get_params returns the whole image, 0, 0, H, W)
  erased             number of calls that returned a rectangle (draws - none·draws)
  h, w, area, top, left
                     {mean, std, m4} over the calls that returned a rectangle: height, width, area fraction
                     h·w/(H·W), top offset i, left offset j; std is the population standard deviation, m4 the fourth
                     central moment (the Rust test uses it for the standard error of the std)

Shapes: 1×28×28 (Fashion-MNIST), 3×32×32 (CIFAR), and 1×3×64, a flat image on which most attempts fail, so that
the no-attempt-fits path and the `h < H` test are exercised (on the square images `none` is 0).
The json is written with sorted keys; reruns with the same torch write the same file (fixed seed, one thread).
"""

import json
import os

import numpy as np
import torch
from torchvision.transforms import RandomErasing

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden", "random_erasing.json")
DRAWS = 200_000
SCALE = (0.02, 0.33)
RATIO = (0.3, 3.3)
SHAPES = [(1, 28, 28), (3, 32, 32), (1, 3, 64)]


def moments(v):
    v = np.asarray(v, dtype=np.float64)
    m = v.mean()
    return {"mean": m, "std": v.std(), "m4": ((v - m) ** 4).mean()}


def main():
    torch.set_num_threads(1)
    torch.manual_seed(20250102)
    out = {"torch": torch.__version__, "scale": SCALE, "ratio": RATIO, "shapes": {}}
    for c, H, W in SHAPES:
        img = torch.zeros(c, H, W)
        rows, none = [], 0
        for _ in range(DRAWS):
            i, j, h, w, _v = RandomErasing.get_params(img, scale=SCALE, ratio=RATIO, value=[0.0])
            if (i, j, h, w) == (0, 0, H, W):
                none += 1  # no attempt fit: torchvision returns the whole image (and erase leaves it as it is)
            else:
                rows.append((h, w, h * w / (H * W), i, j))
        r = np.array(rows, dtype=np.float64)
        stats = {
            "draws": DRAWS,
            "none": none / DRAWS,
            "erased": len(rows),
        }
        for k, name in enumerate(["h", "w", "area", "top", "left"]):
            stats[name] = moments(r[:, k])
        key = f"{c}x{H}x{W}"
        out["shapes"][key] = stats
        print(f"{key:8} none {stats['none']:.5f}  h {stats['h']['mean']:.4f}±{stats['h']['std']:.4f}  "
              f"w {stats['w']['mean']:.4f}±{stats['w']['std']:.4f}  area {stats['area']['mean']:.5f}")
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
