#!/usr/bin/env python3
# Pinned: torch==2.15.0, numpy==2.4.6, safetensors==0.8.0 (see tools/requirements.txt), CPU, Python 3.11.
# Rerun from the repository root:  python3 tools/make_optim_golden.py
"""Writes tests/golden/optim.safetensors: what torch.optim and torch.optim.lr_scheduler do, step by step.

Optimizer cases (torch.optim.Adam / AdamW / SGD with foreach=False, the single-tensor code torch runs on CPU by
default): three parameters of shapes [7], [3, 5] and [4, 33] (the last one is long enough for torch's 8-wide
vectorized loops and their scalar tails), fixed initial values, 5 steps, each step with its own fixed gradient.
Tensors, all float32 unless noted, parameters concatenated in order (7 + 15 + 132 = 154 values):

  init                         [154]     initial parameter values
  grads                        [5, 154]  the gradient handed to step t (row t-1)
  {case}.values                [5, 154]  parameter values after step t, as torch computed them
  {case}.values_exact_sqrt     [5, 154]  Adam cases only: the same run with Tensor.sqrt replaced by a correctly rounded
                                         sqrt (numpy), every other operation torch's own -- see below
  {case}.state.{field}         [154]     torch's optimizer state after the last step (exp_avg, exp_avg_sq,
                                         momentum_buffer), parameters concatenated
  {case}.state_exact_sqrt.{field}        Adam cases only: the same for the exact-sqrt run
  sched.{name}                 [n] f64   learning rate in effect for each batch, n = epochs * steps_per_epoch

Why `values_exact_sqrt`: on CPU torch computes `Tensor.sqrt` of float32 with MKL's vector math (vsSqrt), which is not
correctly rounded -- on this machine about one element in five is 1 ulp off, and the pattern depends on the CPU MKL
dispatches to. Our Adam uses IEEE sqrt, so it matches `values_exact_sqrt` to the bit and `values` to within the
propagated ulp of the denominator. The metadata key `cases` (JSON) lists every case with its hyper-parameters,
`schedules` (JSON) every schedule with the CLI spelling our Rust `Schedule` parses.
Reruns reproduce every value; the bytes may differ because the header lists metadata keys in arbitrary order.
"""

import json
import math
import os

import numpy as np
import torch
from safetensors.numpy import save_file
from torch.overrides import TorchFunctionMode

SHAPES = [(7,), (3, 5), (4, 33)]
STEPS = 5
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden", "optim.safetensors")

CASES = [
    # name, torch class, kwargs (lr plus everything we set; the rest are torch's defaults)
    ("adam", "Adam", {"lr": 1e-3}),
    ("adam_wd", "Adam", {"lr": 1e-3, "weight_decay": 1e-2}),
    ("adamw", "AdamW", {"lr": 1e-3, "weight_decay": 1e-2}),
    ("sgd", "SGD", {"lr": 0.1}),
    ("sgd_momentum", "SGD", {"lr": 0.1, "momentum": 0.9}),
    ("sgd_nesterov_wd", "SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}),
]

SCHEDULES = [
    # name, CLI spelling, base_lr, epochs, steps_per_epoch
    ("constant", "constant", 0.1, 4, 3),
    ("step_2_0.1", "step:2:0.1", 0.1, 4, 3),
    ("step_1_0.5", "step:1:0.5", 1e-3, 5, 2),
    ("cosine", "cosine", 0.1, 4, 3),
    ("cosine_eta", "cosine:0.001", 0.05, 10, 2),
    ("onecycle", "onecycle", 0.1, 4, 3),
    ("onecycle_long", "onecycle", 1e-3, 5, 7),
    ("onecycle_custom", "onecycle:0.25:10:100", 0.01, 3, 4),
]


class ExactSqrt(TorchFunctionMode):
    """Replaces Tensor.sqrt / torch.sqrt by numpy's correctly rounded sqrt; counts the replacements."""

    calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.Tensor.sqrt, torch.sqrt):
            ExactSqrt.calls += 1
            (x,) = args
            return torch.from_numpy(np.sqrt(x.detach().numpy()))
        return func(*args, **kwargs)


def inputs():
    rng = np.random.default_rng(20240611)
    n = sum(int(np.prod(s)) for s in SHAPES)
    init = rng.standard_normal(n).astype(np.float32) * np.float32(0.5)
    # gradients over several orders of magnitude, so exp_avg_sq spans small and large values
    scale = (10.0 ** rng.uniform(-4, 1, size=(STEPS, n))).astype(np.float32)
    grads = (rng.standard_normal((STEPS, n)).astype(np.float32) * scale).astype(np.float32)
    return init, grads


def split(flat):
    out, o = [], 0
    for s in SHAPES:
        k = int(np.prod(s))
        out.append(torch.from_numpy(flat[o : o + k].copy()).reshape(s))
        o += k
    return out


def run(cls, kwargs, init, grads, foreach=False, exact_sqrt=False):
    params = [p.requires_grad_(True) for p in split(init)]
    opt = getattr(torch.optim, cls)(params, foreach=foreach, **kwargs)
    values = []
    for t in range(STEPS):
        for p, g in zip(params, split(grads[t])):
            p.grad = g
        if exact_sqrt:
            with ExactSqrt():
                opt.step()
        else:
            opt.step()
        values.append(np.concatenate([p.detach().numpy().ravel() for p in params]))
    state = {}
    for field in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
        if all(field in opt.state[p] for p in params):
            state[field] = np.concatenate([opt.state[p][field].numpy().ravel() for p in params])
    return np.stack(values), state


def schedule_lrs(spelling, base_lr, epochs, spe):
    """The lr in effect for every batch, as a training loop with the real torch scheduler sees it."""
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=base_lr, momentum=0.9)
    parts = spelling.split(":")
    kind, args = parts[0], [float(a) for a in parts[1:]]
    per_batch = False
    if kind == "constant":
        sched = None
    elif kind == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=int(args[0]), gamma=args[1])
    elif kind == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=args[0] if args else 0.0)
    elif kind == "onecycle":
        kw = dict(zip(["pct_start", "div_factor", "final_div_factor"], args))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=base_lr, epochs=epochs, steps_per_epoch=spe, **kw)
        per_batch = True
    else:
        raise ValueError(kind)
    lrs, closed = [], []
    for _epoch in range(epochs):
        for _ in range(spe):
            lrs.append(opt.param_groups[0]["lr"])
            p.grad = torch.zeros(1)
            opt.step()
            if per_batch:
                sched.step()
        if sched is not None and not per_batch:
            closed.append(sched._get_closed_form_lr()[0])
            sched.step()
    lrs = np.array(lrs, dtype=np.float64)
    if closed:  # the recursive form torch steps with vs its closed form (what the Rust code computes)
        per_epoch = lrs[::spe]
        worst = max(abs(a - b) / base_lr for a, b in zip(per_epoch, closed))
        assert worst <= 1e-6, (spelling, worst)
        print(f"  {spelling:24} recursive vs closed form: max |diff| / base_lr = {worst:.3g}")
    return lrs


def main():
    torch.set_num_threads(1)
    init, grads = inputs()
    tensors = {"init": init, "grads": grads}
    cases_meta = []
    for name, cls, kwargs in CASES:
        values, state = run(cls, kwargs, init, grads)
        tensors[f"{name}.values"] = values
        for field, v in state.items():
            tensors[f"{name}.state.{field}"] = v
        fe, _ = run(cls, kwargs, init, grads, foreach=True)
        msg = f"{name:16} foreach=True vs False: {int((fe != values).sum())} of {values.size} values differ"
        if cls in ("Adam", "AdamW"):
            ExactSqrt.calls = 0
            exact, exact_state = run(cls, kwargs, init, grads, exact_sqrt=True)
            assert ExactSqrt.calls == STEPS * len(SHAPES), ExactSqrt.calls
            tensors[f"{name}.values_exact_sqrt"] = exact
            for field, v in exact_state.items():
                tensors[f"{name}.state_exact_sqrt.{field}"] = v
            rel = np.abs(exact.astype(np.float64) - values) / np.maximum(np.abs(values.astype(np.float64)), 1e-30)
            msg += f"; exact sqrt vs MKL sqrt: {int((exact != values).sum())} differ, max rel {rel.max():.3g}"
        print(msg)
        cases_meta.append({"name": name, "optimizer": cls, **kwargs})

    sched_meta = []
    for name, spelling, base_lr, epochs, spe in SCHEDULES:
        tensors[f"sched.{name}"] = schedule_lrs(spelling, base_lr, epochs, spe)
        sched_meta.append(
            {"name": name, "schedule": spelling, "base_lr": base_lr, "epochs": epochs, "steps_per_epoch": spe}
        )

    meta = {
        "torch": torch.__version__,
        "shapes": json.dumps([list(s) for s in SHAPES]),
        "steps": str(STEPS),
        "cases": json.dumps(cases_meta),
        "schedules": json.dumps(sched_meta),
    }
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file(tensors, OUT, metadata=meta)
    print(f"wrote {os.path.normpath(OUT)} ({os.path.getsize(OUT)} bytes, {len(tensors)} tensors)")


if __name__ == "__main__":
    main()
