"""Calibration images for the int8 anchors (tools/bench_onnxruntime.py and tools/bench_openvino.py with --int8 DIR):
the same images `resnet quantize --calib DIR --images N` reads, prepared as the model's own evaluation preprocessing
would, as float32 NCHW arrays.

Selection: every image file under DIR (recursively: a flat folder or class folders), sorted by path, then N of them
evenly spaced over that list (all of them when there are at most N), so that class folders are all represented.
Preprocessing: the chapter's network (1 channel) resizes the grayscale image to SIZE×SIZE (its `Resize(size)` on square
images); torchvision's networks (3 channels) take the ImageNet evaluation transform: the shorter side resized to
SIZE·256/224 (bilinear, antialiased as torchvision does on PIL images), the centre SIZE×SIZE crop, scaled to [0, 1],
normalized with the ImageNet mean and standard deviation.
"""
import os

import numpy as np

EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # ImageFolder's, as `resnet quantize`
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def select(folder, count):
    """`count` image paths under `folder`, evenly spaced over the sorted list of all of them."""
    paths = sorted(
        os.path.join(root, f)
        for root, _, files in os.walk(folder)
        for f in files
        if f.lower().endswith(EXTENSIONS)
    )
    if not paths:
        raise SystemExit(f"--int8 {folder}: no images (looked for {', '.join(EXTENSIONS)})")
    if len(paths) <= count:
        return paths
    return [paths[i * len(paths) // count] for i in range(count)]


def prepare(path, channels, size):
    """One image as the network's [channels, size, size] float32 input."""
    from PIL import Image

    with Image.open(path) as im:
        if channels == 1:
            im = im.convert("L").resize((size, size), Image.BILINEAR)
            return (np.asarray(im, dtype=np.float32) / 255.0)[None]
        im = im.convert("RGB")
        short = size * 256 // 224
        w, h = im.size
        scale = short / min(w, h)
        im = im.resize((max(short, round(w * scale)), max(short, round(h * scale))), Image.BILINEAR)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
        x = np.asarray(im, dtype=np.float32) / 255.0
        return ((x - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


def batches(folder, count, channels, size, batch):
    """The selected images in NCHW batches of exactly `batch` (a last partial batch is left out when there are at
    least `batch` images, so that a model with a static batch can run every one)."""
    images = [prepare(p, channels, size) for p in select(folder, count)]
    if len(images) < batch:
        raise SystemExit(f"--int8 {folder}: {len(images)} images, fewer than the batch of {batch}")
    return [np.stack(images[i:i + batch]) for i in range(0, len(images) - batch + 1, batch)]
