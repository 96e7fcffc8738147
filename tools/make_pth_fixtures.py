"""Write the small `.pth` fixtures that tests/pth.rs reads (committed; rerun only to change them).

Run from the repo root with the pinned versions (tools/requirements.txt: torch 2.15.0, torchvision 0.29.2,
safetensors 0.8.0; torchvision installed with `pip install --no-deps torchvision==0.29.2`):

    python3 tools/make_pth_fixtures.py

Files (tests/golden/), then copied to fuzz/seeds/pth/ as the pth fuzz target's seeds (the .pth files, and the
pickles inside them as NAME.pkl, which the target wraps into an archive of its own):
  tv_bottleneck_small.pth          torch.save(net.state_dict()) of tools/tv_small.py's small_bottleneck()
                                   (torchvision Bottleneck blocks and key names, planes 4,8,8,16, layers [1,1,1,1],
                                   3 input channels, 5 classes, seed 0), after one train-mode forward so the
                                   running statistics and num_batches_tracked are not their defaults
  tv_bottleneck_small.safetensors  the same state dict via safetensors.torch.save_file (the reference values;
                                   metadata `order`: the keys in state_dict() order, comma-separated)
  pth_views.pth                    a plain dict: a transposed (non-contiguous) tensor, two views into one shared
                                   storage at offsets 3 and 10, a strided slice, an i64 tensor, f16/bf16/f64
                                   tensors, a 0-d tensor and an empty one
  pth_views_protocol4.pth          the same, torch.save(..., pickle_protocol=4) (STACK_GLOBAL, MEMOIZE, FRAME)
  pth_views.safetensors            those tensors as contiguous copies, f16/bf16/f64 converted to f32 (+ `order`)
  pth_list.pth                     torch.save([1, 2, 3])                     (not a state dict)
  pth_module.pth                   torch.save(nn.Sequential(nn.Linear(2, 2))) (a whole pickled model)
  pth_legacy.pth                   a tiny state dict saved with _use_new_zipfile_serialization=False (its bytes
                                   differ from run to run: the legacy format names storages by object id)
"""
import os
import shutil
import sys
import zipfile

import torch
import torch.nn as nn
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tv_small import small_bottleneck  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "tests", "golden")
SEEDS = os.path.join(ROOT, "fuzz", "seeds", "pth")


def report(name):
    print(f"{name:36s} {os.path.getsize(os.path.join(GOLDEN, name)):8,d} bytes")


def main():
    torch.set_num_threads(1)
    # (a) torchvision-layout Bottleneck network
    net = small_bottleneck(seed=0)
    torch.manual_seed(1)
    net.train()
    with torch.no_grad():
        net(torch.randn(2, 3, 32, 32))
    sd = net.state_dict()
    torch.save(sd, os.path.join(GOLDEN, "tv_bottleneck_small.pth"))
    save_file({k: v.detach().clone().contiguous() for k, v in sd.items()},
              os.path.join(GOLDEN, "tv_bottleneck_small.safetensors"), metadata={"order": ",".join(sd)})

    # (b) views: non-contiguous, shared storage with offsets, dtype conversions
    torch.manual_seed(2)
    base = torch.randn(3, 5)
    shared = torch.arange(30, dtype=torch.float32) * 0.5 - 3
    views = {
        "transposed": base.t(),                       # shape [5, 3], strides (1, 5)
        "shared_a": shared[3:9].view(2, 3),           # offset 3
        "shared_b": shared[10:30].view(4, 5)[:, 1:4],  # offset 11, strides (5, 1), shape [4, 3]
        "every_other": torch.randn(4, 6)[:, ::2],     # strides (6, 2)
        "counts": torch.tensor([[1, -2, 3], [4, 5, 1 << 40]], dtype=torch.int64),
        "half": torch.randn(2, 3).half(),
        "bf16": torch.randn(5).bfloat16(),
        "double": torch.randn(2, 2, dtype=torch.float64),
        "scalar": torch.tensor(7, dtype=torch.int64),
        "empty": torch.zeros(0, 3),
    }
    torch.save(views, os.path.join(GOLDEN, "pth_views.pth"))
    torch.save(views, os.path.join(GOLDEN, "pth_views_protocol4.pth"), pickle_protocol=4)
    expected = {}
    for k, v in views.items():
        v = v.detach().clone().contiguous()
        if v.is_floating_point():
            v = v.float()
        expected[k] = v
    save_file(expected, os.path.join(GOLDEN, "pth_views.safetensors"), metadata={"order": ",".join(expected)})

    # (c) (d) (e) not state dicts
    torch.save([1, 2, 3], os.path.join(GOLDEN, "pth_list.pth"))
    torch.manual_seed(3)
    torch.save(nn.Sequential(nn.Linear(2, 2)), os.path.join(GOLDEN, "pth_module.pth"))
    torch.save({"w": torch.ones(2, 2)}, os.path.join(GOLDEN, "pth_legacy.pth"), _use_new_zipfile_serialization=False)

    os.makedirs(SEEDS, exist_ok=True)
    for name in ["tv_bottleneck_small.pth", "tv_bottleneck_small.safetensors", "pth_views.pth", "pth_views_protocol4.pth",
                 "pth_views.safetensors",
                 "pth_list.pth", "pth_module.pth", "pth_legacy.pth"]:
        report(name)
        if name.endswith(".pth"):
            shutil.copy(os.path.join(GOLDEN, name), os.path.join(SEEDS, name))
            if name != "pth_legacy.pth":
                with zipfile.ZipFile(os.path.join(GOLDEN, name)) as z:
                    pkl = next(n for n in z.namelist() if n.endswith("/data.pkl"))
                    with open(os.path.join(SEEDS, name[:-4] + ".pkl"), "wb") as f:
                        f.write(z.read(pkl))


if __name__ == "__main__":
    main()
