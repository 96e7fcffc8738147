"""Test accuracy of a model.safetensors as PyTorch computes it: the chapter's model (tools/chapter_model.py) in eval
mode, strict load, on the 10,000 bundled Fashion-MNIST test images resized to 96 by Pillow (bilinear) and divided by 255
as ToTensor does. A cross-check of `resnet eval`.

    python3 tools/eval_pytorch.py runs/chapter/model.safetensors
"""
import gzip
import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(root, 'tools'))
from chapter_model import resnet18  # noqa: E402
d = os.path.join(root, 'data', 'fashion-mnist') + '/'
imgs = np.frombuffer(gzip.decompress(open(d+'t10k-images-idx3-ubyte.gz','rb').read())[16:], np.uint8).reshape(-1,28,28)
labels = np.frombuffer(gzip.decompress(open(d+'t10k-labels-idx1-ubyte.gz','rb').read())[8:], np.uint8)
net = resnet18()
net.load_state_dict(load_file(sys.argv[1]), strict=True)
net.eval()
correct = 0
with torch.no_grad():
    for s in range(0, 10000, 250):
        x = np.stack([np.asarray(Image.fromarray(a).resize((96,96), Image.BILINEAR)) for a in imgs[s:s+250]]).astype(np.float32)/255
        out = net(torch.from_numpy(x[:,None]))
        correct += (out.argmax(1).numpy() == labels[s:s+250]).sum()
print('pytorch eval test acc', correct/10000)
