"""Writes what tools/serve_load.sh serves and sends, into DIR: the chapter's network (PyTorch's default
initialization, seed 0) as chapter.safetensors, torchvision's resnet50 (default initialization, seed 0) as
resnet50.pth, and images: a bundled Fashion-MNIST test image as fmnist.png (28x28 gray), the same image
upscaled to a 500x375 RGB JPEG as photo.jpg, and the hostile uploads of the soak (garbage, a truncated PNG, a
PNG header claiming 100000x100000 pixels, a 20 MiB body).

    python3 tools/serve_fixtures.py /tmp/serve-fixtures
"""
import gzip
import os
import struct
import sys
import zlib

import torch
from PIL import Image

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(root, 'tools'))


def main(out):
    os.makedirs(out, exist_ok=True)
    from chapter_model import resnet18
    from safetensors.torch import save_file
    import torchvision
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in resnet18().state_dict().items()}, f'{out}/chapter.safetensors')
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet50().state_dict(), f'{out}/resnet50.pth')

    with gzip.open(f'{root}/data/fashion-mnist/t10k-images-idx3-ubyte.gz') as f:
        f.read(16)
        pixels = f.read(28 * 28)
    img = Image.frombytes('L', (28, 28), pixels)
    img.save(f'{out}/fmnist.png')
    img.convert('RGB').resize((500, 375), Image.BILINEAR).save(f'{out}/photo.jpg', quality=90)

    with open(f'{out}/garbage.bin', 'wb') as f:
        f.write(os.urandom(4096))
    png = open(f'{out}/fmnist.png', 'rb').read()
    with open(f'{out}/truncated.png', 'wb') as f:
        f.write(png[:len(png) // 2])
    ihdr = b'IHDR' + struct.pack('>IIBBBBB', 100000, 100000, 8, 2, 0, 0, 0)
    with open(f'{out}/huge-dims.png', 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n' + struct.pack('>I', 13) + ihdr + struct.pack('>I', zlib.crc32(ihdr)))
    with open(f'{out}/oversized.bin', 'wb') as f:
        f.write(b'\0' * (20 << 20))
    print(f'wrote {sorted(os.listdir(out))} to {out}')


if __name__ == '__main__':
    main(sys.argv[1])
