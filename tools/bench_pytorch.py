"""PyTorch side of the benchmark: the chapter's ResNet-18 (tools/chapter_model.py, conv biases included) timed exactly
as `resnet bench` times ours.

Run from the repo root:  python3 tools/bench_pytorch.py [--threads 2] [--iters 5] [--warmup 1] [--only train28,...] [--json]
Install the pinned PyTorch first:  pip install -r tools/requirements.txt

Configurations: train28 / train96 = one training step (forward, CrossEntropyLoss, backward, Adam step) at batch 256,
1×28×28 / 1×96×96; infer28 / infer96 = eval-mode forward under torch.inference_mode(); latency224 = batch 1 at 1×224×224.
Each runs in both memory formats (NCHW and channels_last) and reports the faster, as the issue asks. Median of
--iters timed runs after --warmup untimed ones. Peak RSS is the process's VmHWM so far (run one configuration per process
to attribute it).
"""
import argparse
import json
import os
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chapter_model import resnet18  # noqa: E402

CONFIGS = {
    "train28": (True, 256, 28),
    "train96": (True, 256, 96),
    "infer28": (False, 256, 28),
    "infer96": (False, 256, 96),
    "latency224": (False, 1, 224),
}


def peak_rss_mib():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def forward_macs(net, size, batch):
    macs = 0

    def hook(mod, inp, out):
        nonlocal macs
        if isinstance(mod, nn.Conv2d):
            macs += out.numel() * mod.in_channels * mod.kernel_size[0] * mod.kernel_size[1] // mod.groups
        elif isinstance(mod, nn.Linear):
            macs += out.numel() * mod.in_features

    hs = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        net.eval()
        net(torch.rand(batch, 1, size, size))
    for h in hs:
        h.remove()
    return macs


def run(name, train, batch, size, fmt, warmup, iters):
    torch.manual_seed(0)
    net = resnet18()
    x = torch.rand(batch, 1, size, size)
    y = torch.arange(batch) % 10
    if fmt == "channels_last":
        net = net.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    times = []
    if train:
        net.train()
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        loss_fn = nn.CrossEntropyLoss()

        def step():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
    else:
        net.eval()

        def step():
            with torch.inference_mode():
                net(x)

    for _ in range(warmup):
        step()
    for _ in range(iters):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2], times[0], times[-1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--only", default="all")
    ap.add_argument("--formats", default="nchw,channels_last")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    names = list(CONFIGS) if a.only == "all" else a.only.split(",")
    results = []
    for name in names:
        train, batch, size = CONFIGS[name]
        iters = max(a.iters, 20) if name == "latency224" else a.iters
        warmup = max(a.warmup, 3) if name == "latency224" else a.warmup
        best = None
        for fmt in a.formats.split(","):
            med, lo, hi = run(name, train, batch, size, fmt, warmup, iters)
            if best is None or med < best["median_s"]:
                best = {"name": name, "format": fmt, "batch": batch, "size": size, "iters": iters, "median_s": med, "min_s": lo, "max_s": hi}
        macs = forward_macs(resnet18(), size, batch)
        best["images_per_s"] = batch / best["median_s"]
        best["forward_macs"] = macs
        best["gflops"] = (6 if train else 2) * macs / best["median_s"] / 1e9
        best["peak_rss_mib"] = peak_rss_mib()
        results.append(best)
        if not a.json:
            print(f"{name:<11} batch {batch:>3} {size:>3}x{size:<3} {best['format']:<13} median {best['median_s']:.4f} s "
                  f"(min {best['min_s']:.4f}, max {best['max_s']:.4f})  {best['images_per_s']:8.1f} images/s  "
                  f"{best['gflops']:6.1f} GFLOP/s  peak RSS {best['peak_rss_mib']:.0f} MiB")
    if a.json:
        print(json.dumps({"torch": torch.__version__, "threads": a.threads, "results": results}))


if __name__ == "__main__":
    main()
