"""A minimal PyTorch HTTP server to measure `resnet serve` against: the standard library's ThreadingHTTPServer (a
thread per connection), the model in eval mode under torch.inference_mode, one image per forward pass, and the same
preprocessing as `resnet serve` (Pillow decode; the chapter's Resize(96) + ToTensor, or torchvision's ImageNet
evaluation transform for resnet50).

    python3 tools/serve_pytorch.py --model chapter --weights W.safetensors --port 8091
    python3 tools/serve_pytorch.py --model resnet50 --weights W.pth --port 8091

POST /v1/predict with a PNG/JPEG body answers {"predictions": [{"index", "class", "top": [...]}]};
GET /healthz answers {"status": "ok"}. Used by tools/serve_load.sh.
"""
import argparse
import io
import json
import os
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
from PIL import Image

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(root, 'tools'))

MAX_BODY = 16 << 20


def build(model, weights):
    """The network with its weights, and the transform from a PIL image to its input tensor."""
    from torchvision import transforms
    if model == 'chapter':
        from chapter_model import resnet18
        from safetensors.torch import load_file
        net = resnet18()
        net.load_state_dict(load_file(weights), strict=True)
        tf = transforms.Compose([transforms.Resize(96), transforms.ToTensor()])
        mode = 'L'
    else:
        import torchvision
        net = torchvision.models.resnet50()
        net.load_state_dict(torch.load(weights, map_location='cpu', weights_only=True), strict=True)
        tf = transforms.Compose([
            transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
        mode = 'RGB'
    net.eval()
    return net, tf, mode


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--model', choices=['chapter', 'resnet50'], required=True)
    ap.add_argument('--weights', required=True)
    ap.add_argument('--port', type=int, default=8091)
    ap.add_argument('--threads', type=int, default=os.cpu_count())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    net, tf, mode = build(a.model, a.weights)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = 'HTTP/1.1'

        def setup(self):
            super().setup()
            # Headers and body go out in two writes: without TCP_NODELAY, Nagle's algorithm holds the second
            # until the client's delayed ACK (40 ms on Linux), which would be measured instead of the model.
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, *args):
            pass

        def answer(self, status, obj):
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header('Content-Type', 'application/json')
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == '/healthz':
                self.answer(200, {'status': 'ok'})
            else:
                self.answer(404, {'error': 'not found', 'status': 404})

        def do_POST(self):
            if not self.path.startswith('/v1/predict'):
                return self.answer(404, {'error': 'not found', 'status': 404})
            n = int(self.headers.get('Content-Length') or 0)
            if n > MAX_BODY:
                self.close_connection = True
                return self.answer(413, {'error': 'too large', 'status': 413})
            data = self.rfile.read(n)
            try:
                img = Image.open(io.BytesIO(data)).convert(mode)
            except Exception as e:  # noqa: BLE001 - any undecodable upload is the client's error
                return self.answer(400, {'error': f'cannot read image: {e}', 'status': 400})
            x = tf(img).unsqueeze(0)
            with torch.inference_mode():
                p = torch.softmax(net(x)[0], 0)
            top = torch.topk(p, 5)
            self.answer(200, {'predictions': [{
                'index': int(top.indices[0]),
                'top': [{'index': int(i), 'probability': float(v)} for v, i in zip(top.values, top.indices)],
            }]})

    server = ThreadingHTTPServer(('127.0.0.1', a.port), Handler)
    server.daemon_threads = True
    print(f'listening on http://127.0.0.1:{a.port}', flush=True)
    server.serve_forever()


if __name__ == '__main__':
    main()
