#!/usr/bin/env python3
# Pinned: torch==2.15.0, safetensors==0.8.0 (see tools/requirements.txt), CPU, Python 3.11.
# Rerun from the repository root:  python3 tools/make_loss_golden.py
"""Writes tests/golden/label_smoothing.safetensors: torch's `nn.CrossEntropyLoss(label_smoothing=eps)` (mean
reduction) and its gradient with respect to the logits, for a few batches and three smoothing values.

Tensors (float32 unless noted):

  eps                        [3]      the smoothing values, 0, 0.1 and 0.3 rounded to float32; torch is given
                                      exactly these values (as Python floats), so both sides use the same eps
  {case}.logits              [n, k]   the logits
  {case}.labels              [n]      int64 class indices
  {case}.eps{e}.loss         [1]      torch's mean loss with label_smoothing = eps[e]
  {case}.eps{e}.dlogits      [n, k]   logits.grad after loss.backward()
  {case}.eps{e}.loss_exact   [1]      the same computed by torch in float64, rounded to float32
  {case}.eps{e}.dlogits_exact [n, k]  (the Rust loss accumulates in f64: it is closer to these than torch's float32
                                      autograd is, whose `k·softmax − 1` term of the smoothing gradient loses a few
                                      bits for k = 1000)

Cases: `small` (n = 8, k = 10, logits ~ 2·N(0, 1)), `wide` (n = 4, k = 1000, logits ~ 8·N(0, 1): many classes, a
large spread), `binary` (n = 5, k = 2). Deterministic: a fixed seed and one thread rewrite identical tensors; no
metadata, so the file bytes are identical too.
"""

import os

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden", "label_smoothing.safetensors")

EPS = [float(np.float32(e)) for e in (0.0, 0.1, 0.3)]

CASES = [
    # name, n, k, logit scale
    ("small", 8, 10, 2.0),
    ("wide", 4, 1000, 8.0),
    ("binary", 5, 2, 1.5),
]


def main():
    torch.set_num_threads(1)
    torch.manual_seed(20250101)
    out = {"eps": torch.tensor(EPS, dtype=torch.float32)}
    for name, n, k, scale in CASES:
        logits = (torch.randn(n, k) * scale).float()
        labels = torch.randint(0, k, (n,), dtype=torch.int64)
        out[f"{name}.logits"] = logits
        out[f"{name}.labels"] = labels
        for e, eps in enumerate(EPS):
            z = logits.clone().requires_grad_(True)
            loss = nn.CrossEntropyLoss(label_smoothing=eps)(z, labels)
            loss.backward()
            out[f"{name}.eps{e}.loss"] = loss.detach().reshape(1)
            out[f"{name}.eps{e}.dlogits"] = z.grad.detach()
            z64 = logits.double().requires_grad_(True)
            loss64 = nn.CrossEntropyLoss(label_smoothing=eps)(z64, labels)
            loss64.backward()
            out[f"{name}.eps{e}.loss_exact"] = loss64.detach().float().reshape(1)
            out[f"{name}.eps{e}.dlogits_exact"] = z64.grad.detach().float()
            err = (z.grad.double() - z64.grad).abs().max().item()
            print(f"{name:7} eps {eps:.9g}: loss {loss.item():.9g}; float32 gradient max |error| {err:.3g}")
    out = {k: v.detach().clone().contiguous() for k, v in out.items()}
    save_file(out, OUT)
    print(f"wrote {os.path.normpath(OUT)} ({os.path.getsize(OUT)} bytes, {len(out)} tensors)")


if __name__ == "__main__":
    main()
