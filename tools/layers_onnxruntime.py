"""Layer by layer against ONNX Runtime: where a torchvision network's inference pass goes in ours (`resnet bench
--plan`, each step timed inside the compiled forward pass) and in ONNX Runtime (its profiler's per-node kernel
times), the two run alternately, each layer's median over the rounds.

Run from the repo root after `cargo build --release`:
    python3 tools/layers_onnxruntime.py [--arch resnet50] [--batch 1] [--threads 2] [--rounds 3] [--iters 10]
                                        [--int8 DIR [--calib-images 64]]

`--batch 1` compares `latency224` (batch 1); a larger batch compares `infer224` at that batch. The network is
torchvision's with weights=None and seed 0, saved as a state dict for ours and exported to ONNX (TorchScript
exporter, constant folding) for ONNX Runtime, whose session is the one tools/bench_onnxruntime.py times
(CPUExecutionProvider, intra-op threads = --threads, ORT_ENABLE_ALL, which fuses batch norm, the residual add and
ReLU into the convolutions and runs them on its NCHWc kernels). ONNX Runtime names a fused node after the last
operation it absorbed (`…/relu_1/Relu` is conv2 with its ReLU); the table names each by our layer.

`--int8 DIR` compares the int8 networks instead: ours quantized by `resnet quantize --calib DIR --images N`,
ONNX Runtime's by tools/bench_onnxruntime.py's `quantize` (quantize_static, QDQ, per-channel, min-max, the same N
images), which its optimizer turns into QLinearConv nodes; the blocks' QLinearAdd is counted in their `conv3` (ours
adds the shortcut in that convolution's epilogue), the input's QuantizeLinear and transpose to NHWC in a row of their
own (ours quantizes the image before the pass), and ours computes a block's shortcut convolution inside its `conv3`
(the `downsample.0` rows read 0).

Prints one row per layer: ours and ONNX Runtime in ms, ours/ORT in time (above 1: ours is slower), both in
GFLOP/s (2 × multiply-adds over time), then each side's sum. Install first: pip install -r tools/requirements.txt.
"""
import argparse
import collections
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

# ONNX Runtime's fused node name -> our layer name (the part after the stage and block prefix).
SUFFIXES = [
    (r"relu/Relu", "conv1"),
    (r"relu_1/Relu", "conv2"),
    (r"relu_2/Relu", "conv3"),
    (r"conv3/Conv", "conv3"),
    (r"conv2/Conv", "conv2"),
    (r"conv1/Conv", "conv1"),
    (r"Add", "conv3"),
    (r"downsample/downsample\.0/Conv", "downsample.0"),
]


def our_name(node):
    """Our layer name for an ONNX Runtime node name, or None (the f32 graph's layout reorders)."""
    # The int8 graph: the image quantized and transposed to NHWC first, the pooled features back to NCHW.
    if node in ("input_QuantizeLinear", "Transpose"):
        return "input to u8 NHWC"
    node = re.sub(r"(_output_0(_nchwc)?|_token_\d+)$", "", node)
    if node in ("/relu/Relu", "/conv1/Conv"):
        return "conv1"
    if node == "/maxpool/MaxPool":
        return "maxpool"
    if node in ("/avgpool/GlobalAveragePool", "/fc/Gemm", "/Flatten", "logits_DequantizeLinear", "Transpose"):
        return "avgpool, fc"
    m = re.match(r"/(layer\d)/(layer\d\.\d+)/(.+)$", node)
    if m:
        for pattern, suffix in SUFFIXES:
            if re.fullmatch(pattern, m.group(3)):
                return f"{m.group(2)}.{suffix}"
    return None


def export(arch, batch, folder):
    """Child process: torchvision's `arch` (seed 0) as a state dict and an ONNX file; prints the paths and MACs."""
    import warnings

    import torch
    import torchvision
    from torch import nn

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)(weights=None).eval()
    pth, onnx = os.path.join(folder, f"{arch}.pth"), os.path.join(folder, f"{arch}.b{batch}.onnx")
    torch.save(net.state_dict(), pth)
    x = torch.rand(batch, 3, 224, 224)
    with torch.no_grad():
        torch.onnx.export(net, (x,), onnx, dynamo=False, input_names=["input"], output_names=["logits"],
                          do_constant_folding=True)
    macs = {}

    def hook(name):
        def record(mod, inp, out):
            if isinstance(mod, nn.Conv2d):
                macs[name] = out.numel() * mod.in_channels * mod.kernel_size[0] * mod.kernel_size[1] // mod.groups
        return record

    for name, mod in net.named_modules():
        mod.register_forward_hook(hook(name))
    with torch.no_grad():
        net(x)
    print(json.dumps({"pth": pth, "onnx": onnx, "macs": macs}))


def onnxruntime_round(onnx, batch, threads, iters, folder):
    """One ONNX Runtime session profiled over `iters` runs: {our layer: median ms}."""
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(folder, "ort_profile")
    sess = ort.InferenceSession(onnx, so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((batch, 3, 224, 224), dtype=np.float32)
    for _ in range(3 + iters):
        sess.run(None, {"input": x})
    with open(sess.end_profiling()) as f:
        events = json.load(f)
    per = collections.defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per[e["name"][: -len("_kernel_time")]].append(e["dur"] / 1000)
    out = collections.defaultdict(float)
    for node, times in per.items():
        name = our_name(node)
        if name is not None:
            # The last `iters` runs: the first three warm up.
            out[name] += statistics.median(times[-iters:])
    return out


def quantize(made, calib, count, batch, folder):
    """Both networks quantized on `count` images of `calib`: (our int8 file, ONNX Runtime's QDQ model)."""
    import bench_onnxruntime

    ours = os.path.join(folder, "int8.safetensors")
    subprocess.run([os.path.join(ROOT, "target", "release", "resnet"), "quantize", "--weights", made["pth"],
                    "--calib", calib, "--images", str(count), "--out", ours], check=True, stdout=subprocess.DEVNULL)
    return ours, bench_onnxruntime.quantize(made["onnx"], calib, count, 3, 224, batch)


def ours_round(pth, batch, threads, iters):
    """One `resnet bench --plan` run: {our layer: ms} from its per-step lines."""
    only = "latency224" if batch == 1 else "infer224"
    cmd = [os.path.join(ROOT, "target", "release", "resnet"), "--threads", str(threads), "bench", "--plan",
           "--weights", pth, "--only", only, "--batch", str(max(batch, 2)), "--iters", str(iters)]
    text = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout
    out = {}
    for line in text.splitlines():
        m = re.match(r"\s+(conv1|maxpool|layer\S+|avgpool, fc)\s.*\s([\d.]+) ms", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "--export":
        return export(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--int8", metavar="DIR", help="compare the int8 networks, calibrated on the images of DIR")
    ap.add_argument("--calib-images", type=int, default=64, help="calibration images (with --int8)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="layers_ort.") as tmp:
        made = json.loads(subprocess.run([sys.executable, os.path.abspath(__file__), "--export", a.arch,
                                          str(a.batch), tmp], check=True, stdout=subprocess.PIPE, text=True).stdout)
        if a.int8:
            made["pth"], made["onnx"] = quantize(made, a.int8, a.calib_images, a.batch, tmp)
        ours, theirs = collections.defaultdict(list), collections.defaultdict(list)
        for _ in range(a.rounds):
            for k, v in ours_round(made["pth"], a.batch, a.threads, a.iters).items():
                ours[k].append(v)
            for k, v in onnxruntime_round(made["onnx"], a.batch, a.threads, a.iters, tmp).items():
                theirs[k].append(v)
    precision = f"int8 ({a.calib_images} calibration images from {a.int8})" if a.int8 else "f32"
    print(f"{a.arch} {precision}, batch {a.batch}, {a.threads} threads: medians of {a.rounds} alternating rounds of "
          f"{a.iters} passes (ours: `resnet bench --plan`; ONNX Runtime: its profiler's kernel times)")
    print(f"{'layer':<24} {'ours ms':>8} {'ORT ms':>8} {'ours/ORT':>8} {'ours GFLOP/s':>13} {'ORT GFLOP/s':>12}")
    total_ours = total_theirs = 0.0
    for name in list(ours) + [k for k in theirs if k not in ours]:
        o = statistics.median(ours[name]) if ours.get(name) else 0.0
        t = statistics.median(theirs[name]) if theirs.get(name) else None
        total_ours += o
        total_theirs += t or 0.0
        # The multiply-adds were counted at the batch compared.
        flops = 2 * made["macs"].get(name, 0)
        gf = lambda ms: f"{flops / ms / 1e6:.1f}" if flops and ms else "-"  # noqa: E731
        ratio = f"{o / t:.2f}" if t else "-"
        print(f"{name:<24} {o:8.3f} {t if t is not None else float('nan'):8.3f} {ratio:>8} {gf(o):>13} "
              f"{gf(t):>12}")
    print(f"{'sum':<24} {total_ours:8.2f} {total_theirs:8.2f} {total_ours / total_theirs:8.2f}")


if __name__ == "__main__":
    main()
