"""The chapter's training recipe in PyTorch, to measure how its final test accuracy spreads over seeds.

The chapter (Dive-into-DL-PyTorch, ResNet section) trains once, unseeded, on a GPU and prints test acc 0.926 after five
epochs. This script runs the same recipe for several seeds so that number can be read as one draw from a distribution:
the chapter's model (tools/chapter_model.py, PyTorch's default initialization), the bundled Fashion-MNIST resized by
Pillow (bilinear, as transforms.Resize(96) on a PIL image) and divided by 255 (ToTensor), batch 256 shuffled each epoch
with the last partial batch kept, Adam lr 0.001, mean cross-entropy, train accuracy from the training-mode outputs,
test accuracy in eval mode (BN running statistics) after every epoch — d2lzh_pytorch.train_ch5.

TF32 is off so convolutions and matrix products run in float32, as on the chapter's GPU.

    python3 tools/train_pytorch.py --seeds 0 1 2 --device cuda --out results.jsonl
    python3 tools/train_pytorch.py --seeds 0 --epochs 1 --limit-train 512 --limit-test 256 --resize 28   # a smoke test

Prints the chapter's epoch lines and appends one JSON line per epoch (seed, epoch, loss, train_acc, test_acc, time_sec)
to --out.
"""
import argparse
import gzip
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(root, 'tools'))
from chapter_model import resnet18  # noqa: E402


def read_idx(path, header):
    return np.frombuffer(gzip.decompress(open(path, 'rb').read())[header:], np.uint8)


def load(split, resize, limit):
    d = os.path.join(root, 'data', 'fashion-mnist')
    prefix = 'train' if split == 'train' else 't10k'
    images = read_idx(os.path.join(d, f'{prefix}-images-idx3-ubyte.gz'), 16).reshape(-1, 28, 28)
    labels = read_idx(os.path.join(d, f'{prefix}-labels-idx1-ubyte.gz'), 8)
    if limit:
        images, labels = images[:limit], labels[:limit]
    if resize != 28:
        images = np.stack([np.asarray(Image.fromarray(a).resize((resize, resize), Image.BILINEAR)) for a in images])
    x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    return x, torch.from_numpy(labels.astype(np.int64))


def evaluate(net, x, y, device, batch_size):
    net.eval()
    correct = 0
    with torch.no_grad():
        for s in range(0, len(y), batch_size):
            out = net(x[s:s + batch_size].to(device))
            correct += (out.argmax(1) == y[s:s + batch_size]).sum().item()
    net.train()
    return correct / len(y)


def train(seed, args, data, out):
    train_x, train_y, test_x, test_y = data
    torch.manual_seed(seed)
    net = resnet18().to(args.device)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()
    order_rng = torch.Generator().manual_seed(seed)
    for epoch in range(1, args.epochs + 1):
        start = time.time()
        loss_sum, correct, n, batches = 0.0, 0, 0, 0
        order = torch.randperm(len(train_y), generator=order_rng).to(args.device)
        for s in range(0, len(order), args.batch_size):
            idx = order[s:s + args.batch_size]
            x, y = train_x[idx].to(args.device), train_y[idx].to(args.device)
            y_hat = net(x)
            loss = loss_fn(y_hat, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += loss.item()
            correct += (y_hat.argmax(1) == y).sum().item()
            n += len(y)
            batches += 1
        test_acc = evaluate(net, test_x, test_y, args.device, args.batch_size)
        seconds = time.time() - start
        print(f'seed {seed} epoch {epoch}, loss {loss_sum / batches:.4f}, train acc {correct / n:.3f}, '
              f'test acc {test_acc:.3f}, time {seconds:.1f} sec', flush=True)
        if out:
            out.write(json.dumps({'seed': seed, 'epoch': epoch, 'loss': loss_sum / batches, 'train_acc': correct / n,
                                  'test_acc': test_acc, 'time_sec': seconds}) + '\n')
            out.flush()


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--seeds', type=int, nargs='+', default=[0])
    p.add_argument('--epochs', type=int, default=5)
    p.add_argument('--batch-size', type=int, default=256)
    p.add_argument('--lr', type=float, default=0.001)
    p.add_argument('--resize', type=int, default=96)
    p.add_argument('--limit-train', type=int, default=0)
    p.add_argument('--limit-test', type=int, default=0)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--out', default='')
    args = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    start = time.time()
    data = (*load('train', args.resize, args.limit_train), *load('test', args.resize, args.limit_test))
    data = tuple(t.to(args.device) for t in data)  # on a GPU the whole set fits; batches are then gathered there
    print(f'training on {args.device}; data ready in {time.time() - start:.1f} sec', flush=True)
    out = open(args.out, 'a') if args.out else None
    for seed in args.seeds:
        train(seed, args, data, out)


if __name__ == '__main__':
    main()
