"""Test accuracy of a model.safetensors as PyTorch computes it: the chapter's model (tools/chapter_model.py) in eval
mode, strict load, on the 10,000 bundled Fashion-MNIST test images resized to 96 by Pillow (bilinear) and divided by 255
as ToTensor does. A cross-check of `resnet eval`.

    python3 tools/eval_pytorch.py runs/chapter/model.safetensors
"""
import os
import sys

import torch
from safetensors.torch import load_file

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(root, 'tools'))
from chapter_model import resnet18  # noqa: E402
from train_pytorch import load  # noqa: E402

images, labels = load('test', 96, 0)
net = resnet18()
net.load_state_dict(load_file(sys.argv[1]), strict=True)
net.eval()
correct = 0
with torch.no_grad():
    for s in range(0, len(labels), 250):
        out = net(images[s:s + 250])
        correct += (out.argmax(1) == labels[s:s + 250]).sum().item()
print('pytorch eval test acc', correct / len(labels))
