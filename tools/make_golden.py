"""Write the PyTorch golden files under tests/golden/ that the Rust parity tests compare against.

Run from the repo root (Python 3.11, versions pinned in tools/requirements.txt):

    python3 tools/make_golden.py

Deterministic (fixed seeds, float32, one thread): rerunning it with the same torch version rewrites identical files.
All 4-d tensors are stored in PyTorch's layout (activations NCHW, conv weights OIHW), float32 unless noted;
labels and num_batches_tracked are int64. "dy" is a fixed random upstream gradient and each backward is y.backward(dy).

Files (keys listed in each writer below):
  tests/golden/layers.safetensors                    per-layer forward/backward cases (conv, bn, maxpool, avgpool, relu, linear, ce)
  tests/golden/small_net.safetensors                 reduced-width ResNet-18 (widths 4,8,8,16): params, acts, logits, loss, grads
  tests/golden/small_net_state_pytorch.safetensors   save_file(net.state_dict()) of that same initial net, exactly as a user would
  tests/golden/residual_full.safetensors             Residual(64, 128, use_1x1conv=True, stride=2) forward/backward/eval
  tests/golden/blocks.safetensors                    the chapter's two Residual shape examples
"""
import copy
import os
import sys

import torch
import torch.nn as nn
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chapter_model import GlobalAvgPool2d, Residual, resnet18  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, 'tests', 'golden')

SMALL_WIDTHS = (4, 8, 8, 16)


def t(x):
    """Detached, contiguous, owned copy (safetensors needs contiguous, non-shared storage)."""
    return x.detach().clone().contiguous()


def write(name, tensors):
    path = os.path.join(GOLDEN, name)
    # no extra metadata: safetensors serializes a multi-entry metadata map in hash order, which would make
    # the header (and so the file bytes) differ from run to run
    save_file({k: t(v) for k, v in tensors.items()}, path)
    size = os.path.getsize(path)
    print(f'{name:40s} {len(tensors):4d} tensors {size:10,d} bytes')
    return size


def randomize_bn(bn):
    """BatchNorm affine parameters away from 1/0 so a swapped or ignored weight/bias shows up."""
    with torch.no_grad():
        bn.weight.copy_(1 + 0.1 * torch.randn_like(bn.weight))
        bn.bias.copy_(0.1 * torch.randn_like(bn.bias))


# ---------------------------------------------------------------------------------------------- layers
CONV_CASES = [
    # (x shape, out channels, kernel, stride, padding)
    ((2, 3, 9, 11), 5, 3, 1, 1),
    ((2, 1, 29, 31), 4, 7, 2, 3),
    ((2, 3, 9, 11), 6, 1, 2, 0),
    ((3, 4, 5, 5), 4, 3, 2, 1),
    # enough 2×2 tiles (4·25) for the Winograd kernels: forward, input and weight gradients
    ((4, 16, 10, 10), 32, 3, 1, 1),
]


def layers():
    out = {}
    for i, (xs, cout, k, s, p) in enumerate(CONV_CASES):
        torch.manual_seed(100 + i)
        conv = nn.Conv2d(xs[1], cout, kernel_size=k, stride=s, padding=p)
        x = torch.randn(xs, requires_grad=True)
        y = conv(x)
        dy = torch.randn_like(y)
        y.backward(dy)
        out.update({
            f'conv{i}.x': x, f'conv{i}.weight': conv.weight, f'conv{i}.bias': conv.bias,
            f'conv{i}.y': y, f'conv{i}.dy': dy, f'conv{i}.dx': x.grad,
            f'conv{i}.dweight': conv.weight.grad, f'conv{i}.dbias': conv.bias.grad,
        })

    torch.manual_seed(200)
    bn = nn.BatchNorm2d(3)
    randomize_bn(bn)
    x = (torch.randn(4, 3, 5, 6) * 2 + 0.5).requires_grad_(True)
    weight0, bias0 = t(bn.weight), t(bn.bias)
    bn.train()
    y = bn(x)
    dy = torch.randn_like(y)
    y.backward(dy)
    bn.eval()
    with torch.no_grad():
        y_eval = bn(x)
    out.update({
        'bn.x': x, 'bn.weight': weight0, 'bn.bias': bias0, 'bn.y_train': y, 'bn.dy': dy, 'bn.dx': x.grad,
        'bn.dweight': bn.weight.grad, 'bn.dbias': bn.bias.grad,
        'bn.running_mean': bn.running_mean, 'bn.running_var': bn.running_var, 'bn.y_eval': y_eval,
    })

    pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    torch.manual_seed(300)
    x = torch.randn(2, 3, 9, 11, requires_grad=True)
    y = pool(x)
    dy = torch.randn_like(y)
    y.backward(dy)
    out.update({'maxpool.x': x, 'maxpool.y': y, 'maxpool.dy': dy, 'maxpool.dx': x.grad})
    torch.manual_seed(301)
    x = (-(torch.rand(1, 2, 4, 4) + 0.5)).requires_grad_(True)  # all negative: padding must be -inf, not 0
    y = pool(x)
    dy = torch.randn_like(y)
    y.backward(dy)
    assert (y < 0).all()
    out.update({'maxpool2.x': x, 'maxpool2.y': y, 'maxpool2.dy': dy, 'maxpool2.dx': x.grad})

    torch.manual_seed(400)
    x = torch.randn(2, 3, 5, 7, requires_grad=True)
    y = GlobalAvgPool2d()(x)
    assert y.shape == (2, 3, 1, 1)
    dy = torch.randn_like(y)
    y.backward(dy)
    out.update({'avgpool.x': x, 'avgpool.y': y, 'avgpool.dy': dy, 'avgpool.dx': x.grad})

    torch.manual_seed(500)
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    y = torch.relu(x)
    dy = torch.randn_like(y)
    y.backward(dy)
    out.update({'relu.x': x, 'relu.y': y, 'relu.dy': dy, 'relu.dx': x.grad})

    torch.manual_seed(600)
    lin = nn.Linear(12, 5)
    x = torch.randn(4, 12, requires_grad=True)
    y = lin(x)
    dy = torch.randn_like(y)
    y.backward(dy)
    out.update({
        'linear.x': x, 'linear.weight': lin.weight, 'linear.bias': lin.bias, 'linear.y': y, 'linear.dy': dy,
        'linear.dx': x.grad, 'linear.dweight': lin.weight.grad, 'linear.dbias': lin.bias.grad,
    })

    torch.manual_seed(700)
    logits = (torch.randn(4, 10) * 3).requires_grad_(True)
    labels = torch.randint(0, 10, (4,), dtype=torch.int64)
    loss = nn.CrossEntropyLoss()(logits, labels)
    loss.backward()
    out.update({'ce.logits': logits, 'ce.labels': labels, 'ce.loss': loss.reshape(1), 'ce.dlogits': logits.grad})
    return write('layers.safetensors', out)


# ---------------------------------------------------------------------------------------------- small net
def small_net():
    torch.manual_seed(0)
    net = resnet18(1, 10, widths=SMALL_WIDTHS)
    input_ = torch.rand(2, 1, 29, 31)
    input28 = torch.rand(2, 1, 28, 28)
    labels = torch.tensor([3, 7], dtype=torch.int64)
    initial = {k: t(v) for k, v in net.state_dict().items()}
    fresh = copy.deepcopy(net)

    # the state file exactly as a user would write it from the chapter's code (before any forward)
    path = os.path.join(GOLDEN, 'small_net_state_pytorch.safetensors')
    save_file(net.state_dict(), path)
    state_size = os.path.getsize(path)
    print(f'{"small_net_state_pytorch.safetensors":40s} {len(initial):4d} tensors {state_size:10,d} bytes')

    acts = {}
    hooks = [child.register_forward_hook(lambda m, i, o, name=name: acts.__setitem__(name, t(o)))
             for name, child in net.named_children()]
    net.train()
    x = input_.clone().requires_grad_(True)
    logits = net(x)
    for h in hooks:
        h.remove()
    loss = nn.CrossEntropyLoss()(logits, labels)
    loss.backward()

    out = {'input': input_, 'labels': labels, 'logits_train': logits, 'loss': loss.reshape(1), 'grad.input': x.grad}
    out.update({f'param.{k}': v for k, v in initial.items()})
    out.update({f'act.{k}': v for k, v in acts.items()})
    for name, p in net.named_parameters():
        out[f'grad.{name}'] = p.grad
    for k, v in net.state_dict().items():
        if k.endswith(('running_mean', 'running_var', 'num_batches_tracked')):
            out[f'after.{k}'] = v
    net.eval()
    with torch.no_grad():
        out['logits_eval'] = net(input_)

    fresh.train()
    with torch.no_grad():
        out['input28'] = input28
        out['logits_train28'] = fresh(input28)
    assert torch.equal(acts['fc'], logits.detach())
    return write('small_net.safetensors', out) + state_size


# ---------------------------------------------------------------------------------------------- residual
def residual_full():
    torch.manual_seed(1)
    blk = Residual(64, 128, use_1x1conv=True, stride=2)
    randomize_bn(blk.bn1)
    randomize_bn(blk.bn2)
    initial = {k: t(v) for k, v in blk.state_dict().items()}
    x = torch.randn(2, 64, 9, 9, requires_grad=True)
    blk.train()
    y = blk(x)
    dy = torch.randn_like(y)
    y.backward(dy)
    out = {'input': x, 'output': y, 'dy': dy, 'grad.input': x.grad}
    out.update({f'param.{k}': v for k, v in initial.items()})
    for name, p in blk.named_parameters():
        out[f'grad.{name}'] = p.grad
    for k, v in blk.state_dict().items():
        if k.endswith(('running_mean', 'running_var', 'num_batches_tracked')):
            out[f'after.{k}'] = v
    blk.eval()
    with torch.no_grad():
        out['output_eval'] = blk(x)
    size = write('residual_full.safetensors', out)
    assert size <= 2_500_000, size
    return size


# ---------------------------------------------------------------------------------------------- blocks
def blocks():
    torch.manual_seed(2)
    X = torch.rand(4, 3, 6, 6)
    a = Residual(3, 3)
    b = Residual(3, 6, use_1x1conv=True, stride=2)
    out = {'x': X}
    for tag, blk in (('a', a), ('b', b)):
        out.update({f'{tag}.param.{k}': t(v) for k, v in blk.state_dict().items()})  # copy: the forward updates buffers
        blk.train()
        with torch.no_grad():
            out[f'{tag}.y'] = blk(X)
    assert out['a.y'].shape == (4, 3, 6, 6) and out['b.y'].shape == (4, 6, 3, 3)
    return write('blocks.safetensors', out)


def main():
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    os.makedirs(GOLDEN, exist_ok=True)
    print(f'torch {torch.__version__}; writing to {os.path.relpath(GOLDEN, ROOT)}/')
    total = layers() + small_net() + residual_full() + blocks()
    print(f'{"total":40s}      {"":7s} {total:10,d} bytes')
    assert total < 4_000_000, total


if __name__ == '__main__':
    main()
