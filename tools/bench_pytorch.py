"""PyTorch side of the benchmark: the chapter's ResNet-18 (tools/chapter_model.py, conv biases included) or torchvision's
resnet18…152, timed exactly as `resnet bench` times ours.

Run from the repo root:  python3 tools/bench_pytorch.py [--arch chapter] [--batch B] [--threads 2] [--iters 5] [--warmup 1]
                                                        [--only train28,...] [--json]
Install the pinned PyTorch first:  pip install -r tools/requirements.txt

Networks (--arch): chapter (default) = the chapter's ResNet-18, 1 input channel, 10 classes; resnet18, resnet34, resnet50,
resnet101, resnet152 = torchvision.models.resnetXX(weights=None), 3 input channels, 1000 classes (seed 0 weights).
Configurations: trainS = one training step (forward, CrossEntropyLoss, backward, Adam step) at --batch (default 256 for the
chapter, 32 for torchvision's) and C×S×S inputs; inferS = eval-mode forward under torch.inference_mode(); latency224 =
batch 1 at C×224×224, timed over max(--iters, 20) runs after max(--warmup, 3). S is 28, 96 (the chapter's sizes) or 224.
`--only all` runs train28, train96, infer28, infer96, latency224 for the chapter and train224, infer224, latency224 for
torchvision's networks, as `resnet bench` does.
Each runs in both memory formats (NCHW and channels_last) and reports the faster, as the issue asks. Median of
--iters timed runs after --warmup untimed ones. Peak RSS is the process's VmHWM so far (run one configuration per process
to attribute it).
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# The tables and checks below import nothing heavy: tools/bench_onnxruntime.py shares them in a process that must not
# import torch (whose import alone is hundreds of MiB of resident memory). torch is imported where it is used.

# name: (training?, side of the square input). Latency configurations run batch 1. Same table as src/bench.rs.
CONFIGS = {
    "train28": (True, 28),
    "train96": (True, 96),
    "infer28": (False, 28),
    "infer96": (False, 96),
    "train224": (True, 224),
    "infer224": (False, 224),
    "latency224": (False, 224),
}
ARCHS = ("chapter", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
CHAPTER_SET = ("train28", "train96", "infer28", "infer96", "latency224")
FAMILY_SET = ("train224", "infer224", "latency224")
MAX_BATCH = 4096
MAX_ITERS = 100_000


def arch_shape(arch):
    """(input channels, classes) of the network `arch` names."""
    return (1, 10) if arch == "chapter" else (3, 1000)


def build_model(arch):
    """The network `arch` names, freshly initialised from seed 0."""
    import torch

    torch.manual_seed(0)
    if arch == "chapter":
        from chapter_model import resnet18

        return resnet18()
    import torchvision  # only torchvision's networks need it

    return getattr(torchvision.models, arch)(weights=None)


def default_batch(arch):
    return 256 if arch == "chapter" else 32


def default_set(arch):
    return CHAPTER_SET if arch == "chapter" else FAMILY_SET


def select(arch, only, allowed=CONFIGS):
    """The configurations `--only` selects (`all`: the network's default set), in the order given."""
    if only == "all":
        return [n for n in default_set(arch) if n in allowed]
    names = [s.strip() for s in only.split(",")]
    for n in names:
        if n not in allowed:
            sys.exit(f"--only: unknown configuration `{n}`; choose from {', '.join(allowed)}")
    return names


def plan(name, batch, iters, warmup):
    """(batch, iters, warmup) of one configuration: latency configurations run batch 1, at least 20 timed and 3 warm-ups."""
    if name.startswith("latency"):
        return 1, max(iters, 20), max(warmup, 3)
    return batch, iters, warmup


def check_args(a):
    if a.arch not in ARCHS:
        sys.exit(f"--arch: unknown network `{a.arch}`; choose from {', '.join(ARCHS)}")
    if a.batch is None:
        a.batch = default_batch(a.arch)
    if not 2 <= a.batch <= MAX_BATCH:
        sys.exit(f"--batch must be between 2 and {MAX_BATCH}, got {a.batch}")
    if not 1 <= a.iters <= MAX_ITERS or not 0 <= a.warmup <= MAX_ITERS:
        sys.exit(f"--iters must be between 1 and {MAX_ITERS} and --warmup at most {MAX_ITERS}")
    if a.threads < 1:
        sys.exit("--threads must be at least 1")


def peak_rss_mib():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def forward_macs(net, channels, size, batch):
    """Multiply-accumulates of one forward pass over `batch` inputs of channels×size×size (convolutions and Linear
    layers, as `resnet bench` counts them). Counted on one image and scaled: the count is linear in the batch."""
    import torch
    from torch import nn

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
        net(torch.rand(1, channels, size, size))
    for h in hs:
        h.remove()
    return macs * batch


def run(arch, train, batch, size, fmt, warmup, iters):
    import torch
    from torch import nn

    channels, classes = arch_shape(arch)
    net = build_model(arch)
    x = torch.rand(batch, channels, size, size)
    y = torch.arange(batch) % classes
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
    ap.add_argument("--arch", default="chapter", help=f"network: {', '.join(ARCHS)}")
    ap.add_argument("--batch", type=int, default=None, help="batch of the train/infer configurations (256 chapter, 32 others)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--only", default="all")
    ap.add_argument("--formats", default="nchw,channels_last")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    check_args(a)
    import torch

    torch.set_num_threads(a.threads)
    names = select(a.arch, a.only)
    channels, classes = arch_shape(a.arch)
    if not a.json:
        params = sum(p.numel() for p in build_model(a.arch).parameters())
        print(f"network: {a.arch} ({channels} input channels, {classes} classes, {params} parameters)")
    results = []
    for name in names:
        train, size = CONFIGS[name]
        batch, iters, warmup = plan(name, a.batch, a.iters, a.warmup)
        best = None
        for fmt in a.formats.split(","):
            med, lo, hi = run(a.arch, train, batch, size, fmt, warmup, iters)
            if best is None or med < best["median_s"]:
                best = {"name": name, "arch": a.arch, "format": fmt, "batch": batch, "channels": channels, "size": size,
                        "iters": iters, "median_s": med, "min_s": lo, "max_s": hi}
        macs = forward_macs(build_model(a.arch), channels, size, batch)
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
