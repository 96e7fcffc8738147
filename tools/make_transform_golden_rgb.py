#!/usr/bin/env python3
"""Writes tests/golden/transforms_rgb.safetensors: what torchvision's functional transforms on PIL images (and
Pillow's convert) make of small images, for `tests/data/transforms.rs` to match byte for byte.

Each case `<name>` holds `<name>.input` and `<name>.output`; metadata `<name>.op` says what was done:
  resize:S                  F.resize(img, S)                       (shorter side to S, Pillow bilinear)
  center_crop:H,W           F.center_crop(img, [H, W])              (zero padding when the image is smaller)
  resized_crop:I,J,H,W,OH,OW F.resized_crop(img, I, J, H, W, [OH, OW])
  pad_crop:P,I,J,H,W        F.crop(F.pad(img, P), I, J, H, W)       (RandomCrop(size, padding=P) at offset I, J)
  hflip                     F.hflip(img)
  normalize:M0,M1,M2;S0,S1,S2 F.normalize(F.to_tensor(img), mean, std)   (output f32 [c, h, w])
  convert_L / convert_RGB   Image.open(file bytes).convert('L' / 'RGB')  (input: the PNG, BMP, PPM/PGM, TIFF or
                            lossless WebP file's bytes, 1-d)
Images are u8 [h, w, c] (c = 1 for mode L, 3 for RGB), interleaved as PIL stores them.

Rerun from the repository root (torch, torchvision, Pillow, numpy, safetensors; versions in the metadata):
    python3 tools/make_transform_golden_rgb.py
"""

import io
import pathlib

import numpy as np
import PIL
import torch
import torchvision
import torchvision.transforms.functional as F
from PIL import Image
from safetensors.numpy import save_file

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "golden" / "transforms_rgb.safetensors"


def as_array(img):
    a = np.asarray(img, dtype=np.uint8)
    return a.reshape(a.shape[0], a.shape[1], -1).copy()


def main():
    tensors, metadata = {}, {}
    rng = np.random.default_rng(20261201)

    def noise(h, w, mode):
        c = 3 if mode == "RGB" else 1
        a = rng.integers(0, 256, size=(h, w, c), dtype=np.uint8)
        return Image.fromarray(a if c == 3 else a[:, :, 0], mode)

    def add(name, img, op, out):
        tensors[f"{name}.input"] = as_array(img)
        tensors[f"{name}.output"] = as_array(out)
        metadata[f"{name}.op"] = op

    for mode in ("RGB", "L"):
        m = mode.lower()
        img = noise(23, 37, mode)
        add(f"resize_up_{m}", img, "resize:50", F.resize(img, 50))
        img = noise(61, 45, mode)
        add(f"resize_down_{m}", img, "resize:20", F.resize(img, 20))
        img = noise(19, 20, mode)  # (19-8)/2 = 5.5 rounds to 6, (20-7)/2 = 6.5 rounds to 6
        add(f"center_crop_odd_{m}", img, "center_crop:8,7", F.center_crop(img, [8, 7]))
        add(f"center_crop_even_{m}", img, "center_crop:9,10", F.center_crop(img, [9, 10]))
        small = noise(5, 6, mode)
        add(f"center_crop_small_{m}", small, "center_crop:9,8", F.center_crop(small, [9, 8]))
        add(f"center_crop_mixed_{m}", small, "center_crop:8,3", F.center_crop(small, [8, 3]))
    for mode in ("RGB", "L"):
        m = mode.lower()
        img = noise(5, 7, mode)
        add(f"hflip_{m}", img, "hflip", F.hflip(img))
    img = noise(40, 50, "L")
    add("resized_crop_224_l", img, "resized_crop:3,5,30,25,224,224", F.resized_crop(img, 3, 5, 30, 25, [224, 224]))
    img = noise(40, 50, "RGB")
    add("resized_crop_32_rgb", img, "resized_crop:7,2,33,41,32,32", F.resized_crop(img, 7, 2, 33, 41, [32, 32]))
    add("resized_crop_64x48_rgb", img, "resized_crop:0,0,40,50,64,48", F.resized_crop(img, 0, 0, 40, 50, [64, 48]))
    img = noise(32, 32, "RGB")
    for i, j in [(0, 0), (8, 8), (3, 6)]:
        out = F.crop(F.pad(img, 4), i, j, 32, 32)
        add(f"pad_crop_{i}_{j}_rgb", img, f"pad_crop:4,{i},{j},32,32", out)
    img = noise(6, 5, "RGB")
    mean, std = [0.4914, 0.4822, 0.4465], [0.247, 0.243, 0.261]
    t = F.normalize(F.to_tensor(img), mean, std)
    tensors["normalize_rgb.input"] = as_array(img)
    tensors["normalize_rgb.output"] = t.numpy().astype(np.float32)
    metadata["normalize_rgb.op"] = "normalize:" + ",".join(map(str, mean)) + ";" + ",".join(map(str, std))

    # PNG files of other modes, and PIL's convert of them.
    def png(img, fmt="PNG", **kw):
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kw)
        return buf.getvalue()

    rgba = Image.fromarray(rng.integers(0, 256, size=(7, 9, 4), dtype=np.uint8), "RGBA")
    la = Image.fromarray(rng.integers(0, 256, size=(7, 9, 2), dtype=np.uint8), "LA")
    pal = Image.fromarray(rng.integers(0, 256, size=(7, 9, 3), dtype=np.uint8), "RGB").quantize(16)
    pal_t = pal.copy()
    pal_t.info["transparency"] = 3
    files = {
        "rgba": png(rgba),
        "la": png(la),
        "palette": png(pal),
        "palette_trns": png(pal_t, transparency=3),
        "rgb": png(noise(7, 9, "RGB")),
        "l": png(noise(7, 9, "L")),
        # The other lossless formats ImageFolder accepts.
        "bmp_rgb": png(noise(7, 9, "RGB"), "BMP"),
        "bmp_l": png(noise(7, 9, "L"), "BMP"),
        "ppm": png(noise(7, 9, "RGB"), "PPM"),
        "pgm": png(noise(7, 9, "L"), "PPM"),
        "tiff_rgb": png(noise(7, 9, "RGB"), "TIFF"),
        "tiff_l": png(noise(7, 9, "L"), "TIFF"),
        "webp_lossless": png(noise(7, 9, "RGB"), "WEBP", lossless=True),
    }
    for name, data in files.items():
        for mode in ("L", "RGB"):
            case = f"convert_{mode.lower()}_from_{name}"
            tensors[f"{case}.input"] = np.frombuffer(data, dtype=np.uint8).copy()
            tensors[f"{case}.output"] = as_array(Image.open(io.BytesIO(data)).convert(mode))
            metadata[f"{case}.op"] = f"convert_{mode}"
            metadata[f"{case}.source_mode"] = Image.open(io.BytesIO(data)).mode

    metadata["generator"] = "tools/make_transform_golden_rgb.py"
    metadata["pillow"] = PIL.__version__
    metadata["torchvision"] = torchvision.__version__
    metadata["torch"] = torch.__version__
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(OUT), metadata=metadata)
    print(f"wrote {OUT.relative_to(ROOT)}: {len(tensors) // 2} cases, {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
