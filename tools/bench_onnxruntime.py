"""ONNX Runtime side of the benchmark: the same networks as tools/bench_pytorch.py (torchvision's resnet18…152 with
weights=None and seed 0, or the chapter's ResNet-18), exported to ONNX and run for inference with onnxruntime on the CPU,
timed as `resnet bench` times ours.

Run from the repo root:  python3 tools/bench_onnxruntime.py [--arch resnet50] [--batch B] [--threads 2] [--iters 5]
                                                            [--warmup 1] [--only infer224,latency224] [--json]
                                                            [--int8 DIR [--calib-images 512]]
Install first:  pip install -r tools/requirements.txt   (torch, torchvision --no-deps, onnx, onnxruntime)

Inference only: infer28, infer96 (the chapter's sizes), infer224 at --batch (default 256 for the chapter, 32 for
torchvision's) and latency224 at batch 1 (max(--iters, 20) timed runs after max(--warmup, 3)). `--only all` runs
infer28, infer96, latency224 for the chapter and infer224, latency224 for torchvision's networks.

Each configuration gets its own export with a static input shape (eval mode, torch.onnx.export's TorchScript exporter,
dynamo=False, constant folding on), written to a temporary folder by a child process, so this process imports
onnxruntime and numpy but not torch and its peak RSS (VmHWM) is ONNX Runtime's. Sessions: CPUExecutionProvider,
intra_op_num_threads = --threads, inter_op_num_threads = 1, graph_optimization_level = ORT_ENABLE_ALL. Median of --iters
timed InferenceSession.run calls after --warmup untimed ones.

--int8 DIR: the int8 anchor instead. Each export is quantized by onnxruntime.quantization.quantize_static after
quant_pre_process: QDQ format, per-channel symmetric int8 weights, u8 activations, min-max calibration on
--calib-images images from DIR (tools/calib_images.py: the images and preprocessing `resnet quantize --calib DIR`
uses), fed at the configuration's batch; the quantized model is then timed as above ("format": "onnxruntime-int8").
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

INFER = ("infer28", "infer96", "infer224", "latency224")


def export(spec_path):
    """Child process: export each (arch, name, batch, size, path) of the spec to ONNX; print MACs and versions as JSON."""
    import warnings

    import torch

    from bench_pytorch import arch_shape, build_model, forward_macs

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    with open(spec_path) as f:
        spec = json.load(f)
    out = {"torch": torch.__version__, "macs": []}
    for item in spec:
        channels, _ = arch_shape(item["arch"])
        net = build_model(item["arch"]).eval()
        x = torch.rand(item["batch"], channels, item["size"], item["size"])
        with torch.no_grad():
            torch.onnx.export(net, (x,), item["path"], dynamo=False, input_names=["input"], output_names=["logits"],
                              do_constant_folding=True)
        out["macs"].append(forward_macs(net, channels, item["size"], item["batch"]))
    print(json.dumps(out))


def quantize(path, folder, count, channels, size, batch):
    """`path` quantized to int8 (QDQ, per-channel) with min-max calibration on the images of `folder`; the new path."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import calib_images

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calib_images.batches(folder, count, channels, size, batch))

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None else {"input": x}

    pre, out = path + ".pre.onnx", path + ".int8.onnx"
    quant_pre_process(path, pre)
    quantize_static(pre, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    return out


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--export-spec":
        return export(sys.argv[2])
    # bench_pytorch's tables and checks, without importing torch here (see the docstring: the RSS is ORT's alone).
    import numpy as np
    import onnxruntime as ort

    import bench_pytorch as t  # its tables and checks; it imports torch only inside functions

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="chapter", help=f"network: {', '.join(t.ARCHS)}")
    ap.add_argument("--batch", type=int, default=None, help="batch of the infer configurations (256 chapter, 32 others)")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads")
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
    if not a.json:
        print(f"network: {a.arch} ({channels} input channels, {classes} classes); onnxruntime {ort.__version__}, "
              f"CPUExecutionProvider, {a.threads} intra-op threads")
    with tempfile.TemporaryDirectory(prefix="bench_ort.") as tmp:
        spec = []
        for name in names:
            _, size = t.CONFIGS[name]
            batch, _, _ = t.plan(name, a.batch, a.iters, a.warmup)
            spec.append({"arch": a.arch, "name": name, "batch": batch, "size": size,
                         "path": os.path.join(tmp, f"{a.arch}.{name}.b{batch}.onnx")})
        spec_path = os.path.join(tmp, "spec.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        exported = json.loads(subprocess.run([sys.executable, os.path.abspath(__file__), "--export-spec", spec_path],
                                             check=True, stdout=subprocess.PIPE, text=True).stdout)
        results = []
        for item, macs in zip(spec, exported["macs"]):
            name, batch, size = item["name"], item["batch"], item["size"]
            _, iters, warmup = t.plan(name, a.batch, a.iters, a.warmup)
            if a.int8:
                item["path"] = quantize(item["path"], a.int8, a.calib_images, channels, size, batch)
            so = ort.SessionOptions()
            so.intra_op_num_threads = a.threads
            so.inter_op_num_threads = 1
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            sess = ort.InferenceSession(item["path"], so, providers=["CPUExecutionProvider"])
            x = np.random.default_rng(0).random((batch, channels, size, size), dtype=np.float32)
            feed = {sess.get_inputs()[0].name: x}
            for _ in range(warmup):
                sess.run(None, feed)
            times = []
            for _ in range(iters):
                t0 = time.perf_counter()
                sess.run(None, feed)
                times.append(time.perf_counter() - t0)
            times.sort()
            med = times[len(times) // 2]
            r = {"name": name, "arch": a.arch, "format": "onnxruntime-int8" if a.int8 else "onnxruntime", "batch": batch, "channels": channels, "size": size,
                 "iters": iters, "median_s": med, "min_s": times[0], "max_s": times[-1], "images_per_s": batch / med,
                 "forward_macs": macs, "gflops": 2 * macs / med / 1e9, "peak_rss_mib": t.peak_rss_mib()}
            results.append(r)
            del sess
            if not a.json:
                print(f"{name:<11} batch {batch:>3} {size:>3}x{size:<3} {r['format']:<17} median {r['median_s']:.4f} s "
                      f"(min {r['min_s']:.4f}, max {r['max_s']:.4f})  {r['images_per_s']:8.1f} images/s  "
                      f"{r['gflops']:6.1f} GFLOP/s  peak RSS {r['peak_rss_mib']:.0f} MiB")
    if a.json:
        print(json.dumps({"onnxruntime": ort.__version__, "torch": exported["torch"], "threads": a.threads,
                          "providers": ["CPUExecutionProvider"],
                          "int8": {"calib": a.int8, "images": a.calib_images} if a.int8 else None, "results": results}))


if __name__ == "__main__":
    main()
