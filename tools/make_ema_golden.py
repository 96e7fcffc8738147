#!/usr/bin/env python3
# Pinned: torch==2.15.0, numpy==2.4.6, safetensors==0.8.0 (see tools/requirements.txt), CPU, Python 3.11.
# Rerun from the repository root:  python3 tools/make_ema_golden.py
"""Writes tests/golden/ema.safetensors: what torch's weight average does, update by update.

torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True) on a module
with one parameter [40] and one float buffer [9] (a batch norm's running statistics stand in for it); before each of
6 updates the module's values are set to fixed values (row t of `weights`), then `update_parameters(model)` runs.
Tensors (float32; parameter and buffer concatenated, 49 values):

  weights              [6, 49]  the module's values before update t (row t)
  decay_{d}.averaged   [6, 49]  the averaged model's values after update t, for decay d in 0.9 and 0.999
"""

import os

import numpy as np
import torch
from safetensors.numpy import save_file
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden", "ema.safetensors")


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(40))
        self.register_buffer("running", torch.zeros(9))


def main():
    gen = torch.Generator().manual_seed(0)
    weights = torch.randn(6, 49, generator=gen) * torch.logspace(-3, 1, 49)
    out = {"weights": weights.numpy().astype(np.float32)}
    for decay in ["0.9", "0.999"]:
        model = Tiny()
        avg = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(float(decay)), use_buffers=True)
        rows = []
        for t in range(6):
            with torch.no_grad():
                model.w.copy_(weights[t, :40])
                model.running.copy_(weights[t, 40:])
            avg.update_parameters(model)
            rows.append(torch.cat([avg.module.w.detach(), avg.module.running]).numpy().copy())
        out[f"decay_{decay}.averaged"] = np.stack(rows).astype(np.float32)
    save_file(out, OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
