"""OpenVINO side of the benchmark: the same networks as tools/bench_pytorch.py (torchvision's resnet18…152 with
weights=None and seed 0, or the chapter's ResNet-18), converted to OpenVINO's IR and run for inference with openvino on
the CPU, timed as `resnet bench` times ours.

Run from the repo root:  python3 tools/bench_openvino.py [--arch resnet50] [--batch B] [--threads 2] [--iters 5]
                                                         [--warmup 1] [--only infer224,latency224] [--json]
                                                         [--int8 DIR [--calib-images 512]]
Install first:  pip install -r tools/requirements.txt   (torch, torchvision --no-deps, openvino)

Inference only: infer28, infer96 (the chapter's sizes), infer224 at --batch (default 256 for the chapter, 32 for
torchvision's) and latency224 at batch 1 (max(--iters, 20) timed runs after max(--warmup, 3)). `--only all` runs
infer28, infer96, latency224 for the chapter and infer224, latency224 for torchvision's networks.

Each configuration gets its own conversion with a static input shape (eval mode, openvino.convert_model on the torch
module with example_input, saved with openvino.save_model(..., compress_to_fp16=False) so the weights stay f32), written
to a temporary folder by a child process, so this process imports openvino and numpy but not torch and its peak RSS
(VmHWM) is OpenVINO's. Compiled for "CPU" with INFERENCE_NUM_THREADS = --threads, INFERENCE_PRECISION_HINT = f32 (no
bf16/f16 execution on CPUs that have it) and PERFORMANCE_HINT = LATENCY (one stream); one infer request. Median of
--iters timed InferRequest.infer calls after --warmup untimed ones.

--int8 DIR: the int8 anchor instead. Each converted model is quantized by NNCF's post-training `nncf.quantize`
(default preset: symmetric int8 weights per channel, activations per tensor) with --calib-images images from DIR
(tools/calib_images.py: the images and preprocessing `resnet quantize --calib DIR` uses) as its calibration data set,
fed at the configuration's batch; the quantized model is then timed as above ("format": "openvino-int8").
"""
import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

INFER = ("infer28", "infer96", "infer224", "latency224")


def convert(spec_path):
    """Child process: convert each (arch, name, batch, size, path) of the spec to OpenVINO IR; print MACs and versions
    as JSON."""
    import warnings

    import openvino as ov
    import torch

    from bench_pytorch import arch_shape, build_model, forward_macs

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    # convert_model traces the module with TorchScript, which torch now calls deprecated on every conversion.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.trace", category=FutureWarning)
    with open(spec_path) as f:
        spec = json.load(f)
    out = {"torch": torch.__version__, "macs": []}
    for item in spec:
        channels, _ = arch_shape(item["arch"])
        net = build_model(item["arch"]).eval()
        x = torch.rand(item["batch"], channels, item["size"], item["size"])
        # `input` makes the shape static: from example_input alone the converter leaves the batch and spatial sides
        # dynamic, and then fails on the chapter's GlobalAvgPool2d (avg_pool2d with kernel_size=x.size()[2:]).
        with torch.no_grad():
            model = ov.convert_model(net, example_input=x, input=[tuple(x.shape)])
        ov.save_model(model, item["path"], compress_to_fp16=False)
        del model
        out["macs"].append(forward_macs(net, channels, item["size"], item["batch"]))
    print(json.dumps(out))


def plain(value):
    """A compiled model's property as JSON: numbers stay numbers, ov.Type becomes "f32", enums their name."""
    if isinstance(value, (int, float, str)):
        return value
    if hasattr(value, "to_string"):
        return value.to_string()
    return getattr(value, "name", str(value))


def quantize(model, folder, count, channels, size, batch):
    """`model` quantized to int8 by NNCF with the images of `folder` as calibration data."""
    import nncf

    import calib_images

    data = calib_images.batches(folder, count, channels, size, batch)
    # NNCF draws progress bars on stdout, which --json keeps for its one object.
    with contextlib.redirect_stdout(sys.stderr):
        return nncf.quantize(model, nncf.Dataset(data), subset_size=len(data))


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--convert-spec":
        return convert(sys.argv[2])
    # bench_pytorch's tables and checks, without importing torch here (see the docstring: the RSS is OpenVINO's alone).
    import numpy as np
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    import bench_pytorch as t  # its tables and checks; it imports torch only inside functions

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="chapter", help=f"network: {', '.join(t.ARCHS)}")
    ap.add_argument("--batch", type=int, default=None, help="batch of the infer configurations (256 chapter, 32 others)")
    ap.add_argument("--threads", type=int, default=2, help="inference threads")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--only", default="all")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--int8", metavar="DIR", help="time the int8 model quantized with calibration images from DIR")
    ap.add_argument("--calib-images", type=int, default=512, help="calibration images (with --int8)")
    a = ap.parse_args()
    t.check_args(a)
    names = t.select(a.arch, a.only, allowed=INFER)
    channels, classes = t.arch_shape(a.arch)
    config = {
        props.inference_num_threads: a.threads,
        hints.inference_precision: "f32",
        hints.performance_mode: hints.PerformanceMode.LATENCY,
    }
    if not a.json:
        print(f"network: {a.arch} ({channels} input channels, {classes} classes); openvino {ov.__version__}, CPU, "
              f"{a.threads} threads, f32, LATENCY hint")
    core = ov.Core()
    used = {}  # the hints as the compiled model reports them back (the last configuration's; they do not vary)
    with tempfile.TemporaryDirectory(prefix="bench_ov.") as tmp:
        spec = []
        for name in names:
            _, size = t.CONFIGS[name]
            batch, _, _ = t.plan(name, a.batch, a.iters, a.warmup)
            spec.append({"arch": a.arch, "name": name, "batch": batch, "size": size,
                         "path": os.path.join(tmp, f"{a.arch}.{name}.b{batch}.xml")})
        spec_path = os.path.join(tmp, "spec.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        converted = json.loads(subprocess.run([sys.executable, os.path.abspath(__file__), "--convert-spec", spec_path],
                                              check=True, stdout=subprocess.PIPE, text=True).stdout)
        results = []
        for item, macs in zip(spec, converted["macs"]):
            name, batch, size = item["name"], item["batch"], item["size"]
            _, iters, warmup = t.plan(name, a.batch, a.iters, a.warmup)
            model = core.read_model(item["path"])
            if a.int8:
                model = quantize(model, a.int8, a.calib_images, channels, size, batch)
            compiled = core.compile_model(model, "CPU", config)
            used = {key: plain(compiled.get_property(key)) for key in
                    (props.inference_num_threads, hints.inference_precision, hints.performance_mode,
                     props.num_streams)}
            req = compiled.create_infer_request()
            x = np.random.default_rng(0).random((batch, channels, size, size), dtype=np.float32)
            feed = {0: x}
            for _ in range(warmup):
                req.infer(feed)
            times = []
            for _ in range(iters):
                t0 = time.perf_counter()
                req.infer(feed)
                times.append(time.perf_counter() - t0)
            times.sort()
            med = times[len(times) // 2]
            r = {"name": name, "arch": a.arch, "format": "openvino-int8" if a.int8 else "openvino", "batch": batch, "channels": channels, "size": size,
                 "iters": iters, "median_s": med, "min_s": times[0], "max_s": times[-1], "images_per_s": batch / med,
                 "forward_macs": macs, "gflops": 2 * macs / med / 1e9, "peak_rss_mib": t.peak_rss_mib()}
            results.append(r)
            del req, compiled
            if not a.json:
                print(f"{name:<11} batch {batch:>3} {size:>3}x{size:<3} {r['format']:<14} median {r['median_s']:.4f} s "
                      f"(min {r['min_s']:.4f}, max {r['max_s']:.4f})  {r['images_per_s']:8.1f} images/s  "
                      f"{r['gflops']:6.1f} GFLOP/s  peak RSS {r['peak_rss_mib']:.0f} MiB")
    if a.json:
        print(json.dumps({"openvino": ov.__version__, "torch": converted["torch"], "threads": a.threads,
                          "device": "CPU", "hints": used,
                          "int8": {"calib": a.int8, "images": a.calib_images} if a.int8 else None, "results": results}))


if __name__ == "__main__":
    main()
