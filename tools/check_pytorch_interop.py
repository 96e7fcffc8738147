"""Check that checkpoints move both ways between our Rust `resnet` and the chapter's PyTorch model.

Run from the repo root.

Load a safetensors file written by the Rust code into the chapter's net (strict) and print eval-mode logits:

    python3 tools/check_pytorch_interop.py model.safetensors [--widths 64,128,256,512] [--expect-logits L.safetensors]

  Every key must exist on both sides with the same shape and dtype (float32; num_batches_tracked int64, 0-d as PyTorch
  writes it); then net.load_state_dict(..., strict=True), net.eval(), and a forward on the fixed input
  torch.rand(2, 1, 96, 96) drawn after torch.manual_seed(5). Prints the logits. With --expect-logits, also compares them
  with the `logits` tensor of that file (e.g. written by the Rust side for the same input; --atol, --rtol).
  Exits non-zero on any failure.

Write a PyTorch checkpoint for the Rust side to load:

    python3 tools/check_pytorch_interop.py --write torch_model.safetensors [--widths ...] [--seed 0]

  Builds a seeded chapter net, gives every BatchNorm a random affine weight in [0.5, 1.5) and bias in [-0.5, 0.5), runs
  one train-mode forward (no grad) on a seeded random batch so the BatchNorm running statistics and num_batches_tracked
  are not the trivial 0 / 1 / 0 (a swapped weight / bias or running_mean / running_var would otherwise go unnoticed, and
  the logits would hardly depend on the input), then writes save_file(net.state_dict(), PATH) exactly as a user would, plus PATH.logits.safetensors holding
  `input` (the fixed 2x1x96x96 input above) and `logits` (the eval-mode logits on it). The Rust test
  tests/interop.rs loads both when RESNET_PYTORCH_FILE=PATH is set.

Write the chapter net's state-dict layout (key, dtype, shape, in PyTorch's order) as text, for tests/interop.rs:

    python3 tools/check_pytorch_interop.py --write-keys tests/golden/pytorch_chapter_keys.txt
"""
import argparse
import os
import sys

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chapter_model import count_params, resnet18  # noqa: E402

INPUT_SEED = 5
INPUT_SHAPE = (2, 1, 96, 96)


def fixed_input(in_channels=1, size=96):
    gen = torch.Generator().manual_seed(INPUT_SEED)
    return torch.rand((INPUT_SHAPE[0], in_channels, size, size), generator=gen)


def parse_widths(s):
    w = tuple(int(v) for v in s.split(','))
    if len(w) != 4 or min(w) <= 0:
        raise argparse.ArgumentTypeError('--widths needs four positive integers, e.g. 64,128,256,512')
    return w


def build(args):
    return resnet18(args.in_channels, args.num_classes, widths=args.widths)


def check_keys(net, state, lenient):
    """Same key set, shapes and dtypes as the chapter net's own state_dict; returns a list of problems."""
    expected = net.state_dict()
    problems = []
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        problems.append(f'missing keys ({len(missing)}): {missing[:10]}')
    if unexpected:
        problems.append(f'unexpected keys ({len(unexpected)}): {unexpected[:10]}')
    for k, ref in expected.items():
        if k not in state:
            continue
        got = state[k]
        if tuple(got.shape) != tuple(ref.shape):
            ok_legacy = lenient and ref.dim() == 0 and tuple(got.shape) == (1,)
            if not ok_legacy:
                problems.append(f'{k}: shape {list(got.shape)}, PyTorch has {list(ref.shape)}')
        if got.dtype != ref.dtype and not lenient:
            problems.append(f'{k}: dtype {got.dtype}, PyTorch has {ref.dtype}')
        if got.is_floating_point() and not torch.isfinite(got).all():
            problems.append(f'{k}: non-finite values')
    return problems


def load_and_run(args):
    state = load_file(args.path)
    net = build(args)
    problems = check_keys(net, state, args.lenient)
    if problems:
        for p in problems[:20]:
            print('FAIL', p, file=sys.stderr)
        if len(problems) > 20:
            print(f'FAIL ... and {len(problems) - 20} more problems (wrong --widths?)', file=sys.stderr)
        return 1
    net.load_state_dict(state, strict=True)
    net.eval()
    x = fixed_input(args.in_channels, args.size)
    with torch.no_grad():
        logits = net(x)
    torch.set_printoptions(precision=6, sci_mode=False, linewidth=160)
    print(f'loaded {args.path}: {len(state)} tensors, {count_params(net):,} parameters, widths {list(args.widths)}')
    print(f'eval logits on torch.rand{tuple(x.shape)} (seed {INPUT_SEED}):')
    print(logits)
    if not torch.isfinite(logits).all():
        print('FAIL non-finite logits', file=sys.stderr)
        return 1
    if args.expect_logits:
        ref = load_file(args.expect_logits)
        if 'logits' not in ref:
            print(f'FAIL {args.expect_logits} has no `logits` tensor', file=sys.stderr)
            return 1
        want = ref['logits'].to(torch.float32)
        if 'input' in ref and not torch.equal(ref['input'], x):
            print('FAIL the expected-logits file was computed on a different input', file=sys.stderr)
            return 1
        if want.shape != logits.shape:
            print(f'FAIL expected logits shape {list(want.shape)}, got {list(logits.shape)}', file=sys.stderr)
            return 1
        diff = (logits - want).abs().max().item()
        if not torch.allclose(logits, want, atol=args.atol, rtol=args.rtol):
            print(f'FAIL logits differ from {args.expect_logits}: max abs diff {diff:.3e}', file=sys.stderr)
            return 1
        print(f'OK logits match {args.expect_logits} (max abs diff {diff:.3e})')
    print('OK')
    return 0


def write(args):
    torch.manual_seed(args.seed)
    net = build(args)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    net.train()
    with torch.no_grad():
        net(torch.rand(4, args.in_channels, args.size, args.size))  # non-trivial running statistics
    net.eval()
    x = fixed_input(args.in_channels, args.size)
    with torch.no_grad():
        logits = net(x)
    save_file(net.state_dict(), args.write)
    logits_path = args.write + '.logits.safetensors'
    save_file({'input': x.contiguous(), 'logits': logits.contiguous()}, logits_path)
    print(f'wrote {args.write} ({len(net.state_dict())} tensors, {count_params(net):,} parameters, widths {list(args.widths)})')
    print(f'wrote {logits_path} (input {list(x.shape)}, logits {list(logits.shape)})')
    return 0


DTYPE_NAMES = {torch.float32: 'F32', torch.int64: 'I64'}


def write_keys(args):
    net = build(args)
    lines = [
        '# state_dict() of the chapter\'s nn.Sequential ResNet-18 (tools/chapter_model.py), in PyTorch\'s order:',
        f'# key dtype shape; in_channels {args.in_channels}, num_classes {args.num_classes}, widths {list(args.widths)}.',
        '# Written by: python3 tools/check_pytorch_interop.py --write-keys tests/golden/pytorch_chapter_keys.txt',
    ]
    for k, v in net.state_dict().items():
        lines.append(f'{k} {DTYPE_NAMES[v.dtype]} [{",".join(str(d) for d in v.shape)}]')
    with open(args.write_keys, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    print(f'wrote {args.write_keys} ({len(net.state_dict())} keys)')
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('path', nargs='?', help='safetensors file written by the Rust code, to load into PyTorch')
    ap.add_argument('--write', metavar='PATH2', help='instead write a seeded PyTorch checkpoint and PATH2.logits.safetensors')
    ap.add_argument('--write-keys', metavar='TXT', help='instead write the state dict\'s keys, dtypes and shapes as text')
    ap.add_argument('--widths', type=parse_widths, default=(64, 128, 256, 512))
    ap.add_argument('--in-channels', type=int, default=1)
    ap.add_argument('--num-classes', type=int, default=10)
    ap.add_argument('--size', type=int, default=96, help='side of the fixed input (default 96)')
    ap.add_argument('--seed', type=int, default=0, help='seed of the net for --write (default 0)')
    ap.add_argument('--expect-logits', metavar='FILE', help='compare the logits with FILE\'s `logits` tensor')
    ap.add_argument('--atol', type=float, default=1e-4)
    ap.add_argument('--rtol', type=float, default=1e-4)
    ap.add_argument('--lenient', action='store_true',
                    help='accept dtype differences and shape [1] for 0-d tensors (as load_state_dict itself would)')
    args = ap.parse_args(argv)
    if sum(a is not None for a in (args.path, args.write, args.write_keys)) != 1:
        ap.error('give exactly one of PATH (to load), --write PATH2 or --write-keys TXT')
    torch.set_num_threads(min(4, torch.get_num_threads()))
    try:
        if args.write_keys:
            return write_keys(args)
        return write(args) if args.write else load_and_run(args)
    except Exception as e:  # any failure -> non-zero exit with a readable message
        print(f'FAIL {type(e).__name__}: {e}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
