"""Writes the fuzz targets' seed corpus into fuzz/seeds/<target>/ (committed; rerun only to change it).

IDX: slices of the bundled Fashion-MNIST, raw and gzip. Images: tiny PNGs (gray, gray 16-bit, RGB, RGBA,
palette), JPEGs (gray, RGB), BMP, PGM, PPM, TIFF and WebP. CIFAR: records of CIFAR-10 (1 and 3 records) and CIFAR-100 (2 records) with
Fashion-MNIST pixels, one with an out-of-range label. CLI: NUL-separated argument lists and --input shapes. The checkpoint seeds were
written by hand: `resnet train --widths 2 --resize 28 --limit-train 8 --limit-test 4 --batch-size 4 --epochs 1
--out /tmp/seedrun` gave model.safetensors and checkpoint.safetensors, and pytorch-style.safetensors is that model
re-saved without metadata (`safetensors.numpy.save_file(load_file(...))`), as PyTorch's `save_file` writes it.
ONNX: ours.onnx and ours-folded.onnx are that model exported by `resnet export --onnx` (the second with
`--fold-bn --opset 21`); the pytorch-*.onnx seeds are copied here from tests/fixtures/onnx/
(tools/make_onnx_fixtures.py: the TorchScript and dynamo exporters and ONNX Runtime's optimizer).
Quantized: the checkpoint seed model.safetensors quantized by `resnet quantize --weights
fuzz/seeds/checkpoint/model.safetensors --calib data/fashion-mnist --images 8 --method M --out
fuzz/seeds/quantized/model-M.safetensors` for M minmax and percentile, and the narrow Bottleneck network of
tests/fixtures/onnx/bottleneck_ort.onnx quantized the same way (written here when target/release/resnet is built)."""
import gzip
import shutil
import io
import pathlib
import struct
import zlib

from PIL import Image

root = pathlib.Path(__file__).resolve().parent.parent
seeds = root / "fuzz" / "seeds"
data = root / "data" / "fashion-mnist"


def idx(dims, payload):
    return bytes([0, 0, 8, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + payload


def write(target, name, blob):
    d = seeds / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(blob)


images = gzip.decompress((data / "t10k-images-idx3-ubyte.gz").read_bytes())[16:]
labels = gzip.decompress((data / "t10k-labels-idx1-ubyte.gz").read_bytes())[8:]
for n in (1, 3):
    raw = idx([n, 28, 28], images[: n * 784])
    write("idx", f"images{n}.idx", raw)
    write("idx", f"images{n}.idx.gz", gzip.compress(raw, mtime=0))
    lab = idx([n], labels[:n])
    write("idx", f"labels{n}.idx", lab)
    write("idx", f"labels{n}.idx.gz", gzip.compress(lab, mtime=0))
write("idx", "small2d.idx", idx([2, 3], bytes(range(6))))

first = Image.frombytes("L", (28, 28), images[:784])
variants = {
    "gray.png": (first, "PNG"),
    "gray16.png": (first.convert("I;16"), "PNG"),
    "rgb.png": (first.convert("RGB").resize((9, 7)), "PNG"),
    "rgba.png": (first.convert("RGBA").resize((5, 6)), "PNG"),
    "palette.png": (first.convert("P").resize((4, 4)), "PNG"),
    "gray.jpg": (first.resize((12, 10)), "JPEG"),
    "rgb.jpg": (first.convert("RGB").resize((8, 8)), "JPEG"),
    # The other formats image folders accept.
    "rgb.bmp": (first.convert("RGB").resize((6, 5)), "BMP"),
    "gray.pgm": (first.resize((6, 5)), "PPM"),
    "rgb.ppm": (first.convert("RGB").resize((6, 5)), "PPM"),
    "rgb.tif": (first.convert("RGB").resize((6, 5)), "TIFF"),
    "rgb.webp": (first.convert("RGB").resize((6, 5)), "WEBP"),
}
for name, (img, fmt) in variants.items():
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    write("image", name, buf.getvalue())

for i, args in enumerate([
    ["train", "--epochs", "3", "--lr", "0.01", "--batch-size", "64", "--resize", "28"],
    ["train", "--optimizer", "sgd", "--momentum", "0.9", "--nesterov", "--weight-decay", "5e-4", "--schedule", "cosine"],
    ["--threads", "2", "train", "--widths", "16,32", "--limit-train", "100", "--limit-test", "10", "--seed", "7"],
    ["train", "--resume", "runs/x", "--epochs", "6"],
    ["summary", "--input", "1x1x224x244", "--classes", "10"],
    ["summary", "--input", "2X3×96x96"],
    ["eval", "--weights", "m.safetensors", "--resize", "96", "--limit", "100", "--batch-size", "32"],
    ["predict", "--weights", "m.safetensors", "a.png", "b.jpg", "--resize", "28", "--json"],
    ["bench", "--only", "train28,infer96", "--iters", "3", "--warmup", "1", "--batch", "32", "--json"],
]):
    write("cli", f"args{i}", "\0".join(args).encode())
for i, shape in enumerate(["1x1x224x244", "256x1x96x96", "1x3x32x32"]):
    write("cli", f"shape{i}", shape.encode())


# CIFAR: label byte(s) + 3 planes of 32×32 (the planes cut from Fashion-MNIST test images, padded).
def plane(i):
    img = images[i * 784 : (i + 1) * 784]
    return b"".join(img[r * 28 : (r + 1) * 28] + bytes(4) for r in range(28)) + bytes(4 * 32)


def record(labels, i):
    return bytes(labels) + plane(i) + plane(i + 1) + plane(i + 2)


write("cifar", "cifar10_1.bin", record([3], 0))
write("cifar", "cifar10_3.bin", record([0], 3) + record([9], 6) + record([5], 9))
write("cifar", "cifar100_2.bin", record([19, 99], 12) + record([0, 0], 15))
write("cifar", "cifar10_badlabel.bin", record([200], 18))

# `resnet serve` requests (resnet::fuzzing::request): "query\ncontent-type\nbody". Valid PNGs raw and in multipart,
# bad queries, a broken multipart body, a header-only PNG claiming a huge image.
png = (seeds / "image" / "gray.png").read_bytes()
rgb = (seeds / "image" / "rgb.png").read_bytes()
boundary = b"fuzz-boundary"


def multipart(*parts):
    body = b""
    for i, p in enumerate(parts):
        body += (b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"image\"; filename=\"" +
                 str(i).encode() + b".png\"\r\nContent-Type: image/png\r\n\r\n" + p + b"\r\n")
    return body + b"--" + boundary + b"--\r\n"


mp = b"multipart/form-data; boundary=" + boundary
write("request", "raw_png", b"topk=3&logits=true\nimage/png\n" + png)
write("request", "raw_rgb", b"\napplication/octet-stream\n" + rgb)
write("request", "multipart_two", b"logits=false\n" + mp + b"\n" + multipart(png, rgb))
write("request", "multipart_five", b"\n" + mp + b"\n" + multipart(png, png, png, png, png))
write("request", "multipart_empty", b"\n" + mp + b"\n" + multipart())
write("request", "multipart_broken", b"\n" + mp + b"\n--fuzz-boundary\r\nContent-Disposition: form-da")
write("request", "bad_query", b"topk=0&colour=blue\nimage/png\n" + png)
huge = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + struct.pack(">II", 100000, 100000) + bytes([8, 2, 0, 0, 0])
write("request", "huge_dims", b"\nimage/png\n" + huge + struct.pack(">I", zlib.crc32(huge[12:29])))

for name in ("basic_ts17", "basic_dy21", "bottleneck_ort", "chapter_ts17_bn"):
    (seeds / "onnx").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(root / "tests" / "fixtures" / "onnx" / f"{name}.onnx", seeds / "onnx" / f"pytorch-{name}.onnx")

resnet = root / "target" / "release" / "resnet"
if resnet.exists():
    import subprocess

    (seeds / "quantized").mkdir(parents=True, exist_ok=True)
    for weights, method, name in (
        ("fuzz/seeds/checkpoint/model.safetensors", "minmax", "model-minmax"),
        ("fuzz/seeds/checkpoint/model.safetensors", "percentile", "model-percentile"),
        ("tests/fixtures/onnx/bottleneck_ort.onnx", "percentile", "bottleneck"),
    ):
        subprocess.run(
            [resnet, "quantize", "--weights", weights, "--calib", "data/fashion-mnist", "--images", "8",
             "--method", method, "--out", f"fuzz/seeds/quantized/{name}.safetensors"],
            cwd=root, check=True)
