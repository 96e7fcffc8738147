"""Golden files from the REAL torchvision ResNets, for a Rust test of torchvision-layout networks.

Run from the repo root with the pinned versions (tools/requirements.txt: torch 2.15.0, torchvision 0.29.2 installed
with `pip install --no-deps torchvision==0.29.2`, safetensors 0.8.0, numpy 2.4.6):

    python3 tools/make_torchvision_golden.py

Deterministic (float32, one thread, TF32 off, deterministic algorithms): rerunning it rewrites identical files.

Files (tests/golden/):
  torchvision_resnet18.safetensors        torchvision.models.resnet18(num_classes=10), formula weights (below)
  torchvision_resnet50.safetensors        torchvision.models.resnet50(num_classes=10), formula weights
  torchvision_bottleneck_small.safetensors  tools/tv_small.py small_bottleneck(): torchvision Bottleneck blocks,
                                          planes 4,8,8,16, layers [1,1,1,1], 5 classes; weights stored
  torchvision_basic_small.safetensors     tools/tv_small.py small_basic(): torchvision BasicBlock blocks,
                                          planes 4,8,8,16, layers [2,1,1,1], 5 classes; weights stored

Weight formula (the full-size models; their weights are not stored, both sides compute them):
  For the k-th tensor of `model.state_dict()` (0-based, buffers included, in state_dict() order) and its flat
  index i (row-major in PyTorch's layout, OIHW for convs), with all arithmetic on uint64 wrapping:
      splitmix64(x):  z = x + 0x9E3779B97F4A7C15
                      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
                      z = (z ^ (z >> 27)) * 0x94D049BB133111EB
                      return z ^ (z >> 31)
      u = ((splitmix64(SEED ^ (k << 32) ^ i) >> 40) / 2**24) * 2 - 1      (float64, in [-1, 1))
  and then, in float64, cast to float32 once at the end (round to nearest):
      key ends with `num_batches_tracked`          0 (int64)
      key ends with `running_mean`                 0.1 * u
      key ends with `running_var`                  1 + 0.5 * |u|
      `.weight` of rank 4 (conv) or rank 2 (fc)    u * sqrt(6 / fan_in) * 0.5     fan_in = product of dims 1..
      `.weight` of rank 1 (BatchNorm)              1 + 0.1 * u, times 0.2 for a Bottleneck's `bn3.weight`
      `.bias` (BatchNorm and fc)                   0.1 * u
  The products are evaluated left to right: (u * sqrt(6.0 / fan_in)) * 0.5. SEED = 0x7265736e6574 ("resnet").
  Why bn3 is scaled: with every block's last BN weight near 1, resnet50 at this input is ill-conditioned in
  training mode: PyTorch's own float32 gradients were 2e-2 (input) and up to 0.25 (worst parameter) of scale away
  from its float64 rerun, so no float32 implementation could be compared closely. With the residual branches
  starting at a fifth (as zero_init_residual-style recipes do), float32 and float64 agree to 6e-6 (input) and
  2.4e-5 (worst parameter), measured with the same weights, input and labels.
  `check.<key>` holds the first 8 values of three tensors so the Rust side can test its formula alone.

Stored per model (f32 unless noted; PyTorch layouts, activations NCHW):
  input [2,3,H,W] (H = W = 64 full size, 32 small), labels [2] i64,
  logits_eval [2,C]   eval mode on a fresh copy of the initial weights (the formula's running statistics),
  logits_train [2,C]  train mode forward (batch statistics), loss [] (mean cross-entropy of logits_train),
  after.<bn>.running_mean / running_var / num_batches_tracked (i64 [])  every BatchNorm after that one forward,
  grad.input [2,3,H,W]  d loss / d input,
  full-size models, for every parameter <key> (k = its index in state_dict() order):
    gradnorm.<key> [1]   L2 norm of the gradient, accumulated in float64
    gradsum.<key> [1]    sum of the gradient, accumulated in float64
    gradsample_idx.<key> [64] i64  idx_j = (splitmix64(0x5eed ^ k) + j * 2654435761) % numel  (uint64 wrapping)
    gradsample.<key> [64]          the gradient's values at those flat indices
  small models: param.<key> for every state_dict() entry (the initial weights: torchvision's init from
    torch.manual_seed(0), then BatchNorm weight/bias/running stats moved off 1/0 so a swap shows up) and
    grad.<key> (the full gradient) for every parameter.
Metadata: one entry `golden`, a JSON object: torch, torchvision, numpy versions, seed, input size and `keys` =
  [[key, shape, is_i64], ...] in state_dict() order (what the Rust formula needs).
"""
import copy
import json
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torchvision
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tv_small import small_basic, small_bottleneck  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "tests", "golden")
SEED = 0x7265736E6574
M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def splitmix64(x):
    """Vectorized splitmix64 on a uint64 array (numpy wraps on overflow)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def uniform(k, n, seed=SEED):
    """u in [-1, 1) for flat indices 0..n of the k-th tensor, float64."""
    i = np.arange(n, dtype=np.uint64)
    u = splitmix64(np.uint64(seed) ^ (np.uint64(k) << np.uint64(32)) ^ i)
    return ((u >> np.uint64(40)).astype(np.float64) / float(2 ** 24)) * 2.0 - 1.0


def formula(k, key, shape):
    n = int(np.prod(shape)) if len(shape) else 1
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    u = uniform(k, n)
    if key.endswith("running_mean"):
        v = 0.1 * u
    elif key.endswith("running_var"):
        v = 1.0 + 0.5 * np.abs(u)
    elif key.endswith(".weight") and len(shape) in (2, 4):
        fan_in = int(np.prod(shape[1:]))
        v = u * np.sqrt(6.0 / fan_in) * 0.5
    elif key.endswith(".weight") and len(shape) == 1:
        v = 1.0 + 0.1 * u
        if key.endswith("bn3.weight"):
            v = v * 0.2
    elif key.endswith(".bias"):
        v = 0.1 * u
    else:
        raise ValueError(f"no formula for {key}")
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


def sample_indices(k, numel):
    j = np.arange(64, dtype=np.uint64)
    with np.errstate(over="ignore"):
        idx = (splitmix64(np.uint64(0x5EED) ^ np.uint64(k)) + j * np.uint64(2654435761)) % np.uint64(numel)
    return torch.from_numpy(idx.astype(np.int64))


def setup():
    torch.set_num_threads(1)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True)


def key_list(model):
    return [[k, list(v.shape), v.dtype == torch.int64] for k, v in model.state_dict().items()]


def run(model, x, labels, out):
    """Eval logits on a copy, then one train-mode forward/backward; fills `out`."""
    ev = copy.deepcopy(model).eval()
    with torch.no_grad():
        out["logits_eval"] = ev(x)
    model.train()
    xg = x.clone().requires_grad_(True)
    logits = model(xg)
    loss = nn.functional.cross_entropy(logits, labels)
    loss.backward()
    out["logits_train"] = logits
    out["loss"] = loss
    out["grad.input"] = xg.grad
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            out[f"after.{name}.running_mean"] = m.running_mean
            out[f"after.{name}.running_var"] = m.running_var
            out[f"after.{name}.num_batches_tracked"] = m.num_batches_tracked


def write(name, out, meta):
    path = os.path.join(GOLDEN, name)
    # one metadata entry only: a multi-entry map is serialized in hash order (the bytes would vary run to run)
    save_file({k: v.detach().clone().contiguous() for k, v in out.items()}, path,
              metadata={"golden": json.dumps(meta, sort_keys=True)})
    print(f"{name:44s} {len(out):5d} tensors {os.path.getsize(path):10,d} bytes")


def inputs(c, side, classes, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, c, side, side, generator=g)
    labels = torch.randint(0, classes, (2,), generator=g)
    return x, labels


def meta_for(model, side, seed):
    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "numpy": np.__version__,
            "seed": seed, "input": [2, 3, side, side], "keys": key_list(model)}


def full_size(name, ctor):
    model = ctor(num_classes=10)
    sd = model.state_dict()
    keys = list(sd)
    with torch.no_grad():
        for k, key in enumerate(keys):
            sd[key].copy_(formula(k, key, list(sd[key].shape)))
    x, labels = inputs(3, 64, 10, seed=1)
    out = {"input": x, "labels": labels}
    checks = ["conv1.weight", "layer1.0.bn1.running_var", "fc.bias"]
    for key in checks:
        out[f"check.{key}"] = sd[key].flatten()[:8].clone()
    run(model, x, labels, out)
    params = dict(model.named_parameters())
    for k, key in enumerate(keys):
        if key not in params:
            continue
        g = params[key].grad.detach().flatten()
        g64 = g.double()
        out[f"gradnorm.{key}"] = g64.norm().float().reshape(1)
        out[f"gradsum.{key}"] = g64.sum().float().reshape(1)
        idx = sample_indices(k, g.numel())
        out[f"gradsample_idx.{key}"] = idx
        out[f"gradsample.{key}"] = g[idx]
    write(f"torchvision_{name}.safetensors", out, meta_for(model, 64, SEED))


def small(name, ctor):
    model = ctor(seed=0)
    torch.manual_seed(5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + 0.1 * torch.randn_like(m.weight))
                m.bias.copy_(0.1 * torch.randn_like(m.bias))
                m.running_mean.copy_(0.1 * torch.randn_like(m.running_mean))
                m.running_var.copy_(1 + 0.5 * torch.rand_like(m.running_var))
    x, labels = inputs(3, 32, 5, seed=2)
    out = {"input": x, "labels": labels}
    for key, v in model.state_dict().items():
        out[f"param.{key}"] = v.clone()
    run(model, x, labels, out)
    for key, p in model.named_parameters():
        out[f"grad.{key}"] = p.grad
    meta = meta_for(model, 32, 0)
    meta["init"] = "torch.manual_seed(0) torchvision init, then BatchNorm params/stats randomized with torch.manual_seed(5)"
    write(f"torchvision_{name}.safetensors", out, meta)


def main():
    setup()
    full_size("resnet18", torchvision.models.resnet18)
    full_size("resnet50", torchvision.models.resnet50)
    small("bottleneck_small", small_bottleneck)
    small("basic_small", small_basic)


if __name__ == "__main__":
    main()
