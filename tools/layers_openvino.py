"""Where OpenVINO's inference pass goes, node by node: its profiler's per-node times (`enable_profiling`), the
median over the timed passes, in execution order, for the same torchvision network and the same settings as
tools/bench_openvino.py (INFERENCE_NUM_THREADS = --threads, f32 precision hint, LATENCY hint). Set it beside
ours, each step timed inside our compiled pass:
    resnet bench --weights FILE --only infer224 --batch 32 --plan        (f32, or an int8 file of resnet quantize)

Run from the repo root:
    python3 tools/layers_openvino.py [--weights r50.pth] [--batch 32] [--threads 2] [--iters 5]
                                     [--int8 DIR [--calib-images 64]]

`--weights`: a state dict of torchvision's resnet50 (default: weights=None with torch.manual_seed(0), as
tools/compare.sh's); `--int8 DIR`: the model quantized by NNCF on N images of DIR first, as bench_openvino.py
--int8 does. OpenVINO names the nodes of a quantized graph after its scales (`Multiply_9851`): they are listed in
the order they ran, the stem first, each block's convolutions and its shortcut's, then the pool and classifier.
Prints each node taking at least 0.05 ms (ms, type, kernel, name), the sum of the nodes, and the wall time of a
pass (median; profiling adds a little to it). Install first: pip install -r tools/requirements.txt.
"""
import argparse
import os
import statistics
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", help="state dict of torchvision's resnet50 (default: seed 0, weights=None)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--int8", metavar="DIR", help="quantize with NNCF on images of DIR first")
    ap.add_argument("--calib-images", type=int, default=64)
    a = ap.parse_args()
    if a.batch < 1 or a.iters < 1 or a.threads < 1:
        sys.exit("error: --batch, --iters and --threads must be at least 1")

    import numpy as np
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints
    import torch
    import torchvision

    from bench_openvino import quantize

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.trace", category=FutureWarning)
    torch.manual_seed(0)
    net = torchvision.models.resnet50()
    if a.weights:
        net.load_state_dict(torch.load(a.weights, map_location="cpu"))
    net.eval()
    x = torch.rand(a.batch, 3, 224, 224)
    with torch.no_grad():
        model = ov.convert_model(net, example_input=x, input=[tuple(x.shape)])
    if a.int8:
        model = quantize(model, a.int8, a.calib_images, 3, 224, a.batch)
    config = {
        props.inference_num_threads: a.threads,
        hints.inference_precision: "f32",
        hints.performance_mode: hints.PerformanceMode.LATENCY,
        props.enable_profiling: True,
    }
    request = ov.Core().compile_model(model, "CPU", config).create_infer_request()
    image = np.random.default_rng(0).random((a.batch, 3, 224, 224), dtype=np.float32)
    for _ in range(2):
        request.infer({0: image})
    times, order, walls = {}, [], []
    for _ in range(a.iters):
        start = time.perf_counter()
        request.infer({0: image})
        walls.append(time.perf_counter() - start)
        for p in request.profiling_info:
            if p.status.name != "EXECUTED":
                continue
            key = (p.node_name, p.node_type, p.exec_type)
            if key not in times:
                times[key] = []
                order.append(key)
            times[key].append(p.real_time.total_seconds() * 1e3)
    median = {k: statistics.median(v) for k, v in times.items()}
    print(f"openvino {ov.__version__}, {'int8 (NNCF)' if a.int8 else 'f32'}, batch {a.batch}, "
          f"{a.threads} threads, {a.iters} passes")
    for key in order:
        if median[key] >= 0.05:
            name, kind, kernel = key
            print(f"{median[key]:9.3f} ms  {kind:14s} {kernel:26s} {name}")
    print(f"sum of the nodes {sum(median.values()):.1f} ms; a pass {statistics.median(walls) * 1e3:.1f} ms",
          flush=True)


if __name__ == "__main__":
    main()
