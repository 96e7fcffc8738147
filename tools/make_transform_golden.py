#!/usr/bin/env python3
"""Writes tests/golden/transforms.safetensors: images and what Pillow's bilinear resize makes of them.

The chapter's data transform is torchvision's `Resize(96)` on a PIL image, which computes the output size with
torchvision's shorter-side rule and then calls `img.resize((out_w, out_h), Image.BILINEAR)`. The Rust side
(`resnet::data::transforms`) reimplements both; `tests/data/transforms.rs` requires its output to equal Pillow's byte for byte.

Contents (every tensor is u8 with shape [height, width]):
  `<case>.input`   the source image
  `<case>.output`  Pillow's `Image.fromarray(input).resize((out_w, out_h), Image.BILINEAR)`
Metadata `<case>.size` = "96" (say) marks cases whose output size came from the shorter-side rule with that size;
cases without it use an explicit (out_h, out_w).

Cases: the first 10 Fashion-MNIST test images 28x28 -> 96x96 (read with gzip + numpy from the bundled file), and
seeded random u8 images of odd sizes resized up, down (Pillow's antialiasing path), along one axis only, and to
their own size.

Rerun from the repository root (versions in tools/requirements.txt; torchvision is not needed):
    python3 tools/make_transform_golden.py
"""

import gzip
import pathlib

import numpy as np
import PIL
from PIL import Image
from safetensors.numpy import save_file

ROOT = pathlib.Path(__file__).resolve().parent.parent
IMAGES = ROOT / "data" / "fashion-mnist" / "t10k-images-idx3-ubyte.gz"
OUT = ROOT / "tests" / "golden" / "transforms.safetensors"


def shorter_side_size(h, w, size):
    """torchvision's `_compute_resized_output_size` for an int `size` (no max_size): returns (out_h, out_w)."""
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return new_h, new_w


def read_idx_images(path):
    raw = gzip.decompress(path.read_bytes())
    assert raw[:4] == b"\x00\x00\x08\x03", "not an IDX u8 3-d file"
    n, h, w = (int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(3))
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, h, w)


def pil_resize(a, out_h, out_w):
    img = Image.fromarray(np.ascontiguousarray(a))
    assert img.mode == "L"
    return np.asarray(img.resize((out_w, out_h), Image.BILINEAR), dtype=np.uint8)


def main():
    tensors, metadata = {}, {}

    def add(name, a, size=None, out=None):
        if size is not None:
            out = shorter_side_size(a.shape[0], a.shape[1], size)
            metadata[f"{name}.size"] = str(size)
        tensors[f"{name}.input"] = np.ascontiguousarray(a, dtype=np.uint8)
        tensors[f"{name}.output"] = pil_resize(a, *out)

    images = read_idx_images(IMAGES)
    for i in range(10):
        add(f"fmnist_t10k_{i:02}", images[i], size=96)

    rng = np.random.default_rng(20240601)

    def noise(h, w):
        return rng.integers(0, 256, size=(h, w), dtype=np.uint8)

    add("noise_37x23_s96", noise(37, 23), size=96)  # up, portrait: 154x96
    add("noise_23x37_s96", noise(23, 37), size=96)  # up, landscape: 96x154
    add("noise_200x150_s96", noise(200, 150), size=96)  # down both axes: 128x96
    add("noise_28x28_s14", noise(28, 28), size=14)  # down by exactly 2
    add("noise_96x96_s28", noise(96, 96), size=28)  # down by a non-integer factor
    add("noise_61x100_to_17x29", noise(61, 100), out=(17, 29))
    add("noise_28x40_to_28x20", noise(28, 40), out=(28, 20))  # horizontal pass only
    add("noise_40x28_to_20x28", noise(40, 28), out=(20, 28))  # vertical pass only
    add("noise_28x40_to_50x40", noise(28, 40), out=(50, 40))  # vertical pass only, up
    add("noise_28x28_s28", noise(28, 28), size=28)  # same size: Pillow returns a copy
    add("noise_1x7_to_3x5", noise(1, 7), out=(3, 5))
    add("noise_5x3_to_1x1", noise(5, 3), out=(1, 1))
    checker = ((np.indices((17, 13)).sum(axis=0) % 2) * 255).astype(np.uint8)
    add("checker_17x13_s96", checker, size=96)  # hard edges 0/255
    add("white_9x11_s30", np.full((9, 11), 255, np.uint8), size=30)  # must stay 255

    metadata["generator"] = "tools/make_transform_golden.py"
    metadata["pillow"] = PIL.__version__
    metadata["numpy"] = np.__version__
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(OUT), metadata=metadata)
    print(f"wrote {OUT.relative_to(ROOT)}: {len(tensors) // 2} cases, {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
