"""Writes tests/fixtures/onnx/: narrow ResNets exported by PyTorch's own `torch.onnx.export`, and the logits
ONNX Runtime gives for them (goldens.json), for tests/onnx_fixtures.rs (committed; rerun only to change them).

Networks (random init, every batch norm given random statistics so that folding it matters):
  chapter     the chapter's nn.Sequential ResNet-18 (tools/chapter_model.py), widths 4,8,8,16, 1 channel, 10 classes
  basic       torchvision's BasicBlock layout (tools/tv_small.py), planes 4,8,8,16, layers [2,1,1,1], 3 channels
  bottleneck  torchvision's Bottleneck layout (tools/tv_small.py), planes 4,8,8,16, layers [1,1,1,1], 3 channels
Exports of each, input 32×32 with a dynamic batch (the chapter's: a batch of 2, as its pool's kernel is the traced
feature map's size, which the TorchScript exporter cannot make dynamic):
  ts17        TorchScript exporter (dynamo=False), opset 17: batch norms folded into the convs by its constant folding
  ts17_bn     the same with do_constant_folding=False: batch norms kept (and Identity nodes for shared tensors)
  ts21        TorchScript exporter, opset 21
  dy18, dy21  the dynamo exporter (dynamo=True), opsets 18 (its lowest; the weights in NAME.onnx.data beside it,
              as that exporter writes by default) and 21 (external_data=False: the weights inside)
  ort         ts17_bn through ONNX Runtime's offline optimizer (ORT_ENABLE_EXTENDED: batch norms folded, FusedConv)
The golden input is a batch of 2: x[i] = ((i * 7919) % 1000) / 500 - 1 over the flattened NCHW tensor.

    python3 tools/make_onnx_fixtures.py
"""
import json
import pathlib
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch

root = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(root / "tools"))
import chapter_model  # noqa: E402
import tv_small  # noqa: E402

out = root / "tests" / "fixtures" / "onnx"
warnings.filterwarnings("ignore")


def randomize_bn(net, seed):
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = 0.75 + 0.5 * torch.rand(c, generator=g)
            m.bias.data = torch.rand(c, generator=g) - 0.5
            m.running_mean.data = torch.rand(c, generator=g) - 0.5
            m.running_var.data = 0.5 + torch.rand(c, generator=g)
    return net.eval()


def golden_input(c):
    n = 2 * c * 32 * 32
    x = ((np.arange(n, dtype=np.int64) * 7919) % 1000).astype(np.float32) / 500.0 - 1.0
    return x.reshape(2, c, 32, 32)


def scrub(path):
    """Drops the dynamo exporter's per-node stack traces: they name the files of the machine that wrote them
    (this checkout's absolute path, the Python installation's). Every other record of the export stays."""
    m = onnx.load(str(path), load_external_data=False)
    for node in m.graph.node:
        keep = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    onnx.save(m, str(path))


def main():
    torch.manual_seed(0)
    nets = {
        "chapter": (randomize_bn(chapter_model.resnet18(1, 10, widths=(4, 8, 8, 16)), 1), 1),
        "basic": (randomize_bn(tv_small.small_basic(0), 2), 3),
        "bottleneck": (randomize_bn(tv_small.small_bottleneck(0), 3), 3),
    }
    goldens = {}
    for name, (net, c) in nets.items():
        x = torch.from_numpy(golden_input(c))
        with torch.no_grad():
            want = net(x).numpy()
        ts = dict(input_names=["input"], output_names=["logits"])
        dy = dict(input_names=["input"], output_names=["logits"])
        if name != "chapter":
            ts["dynamic_axes"] = {"input": {0: "N"}, "logits": {0: "N"}}
            dy["dynamic_shapes"] = ({0: torch.export.Dim("N")},)
        files = {
            "ts17": lambda p: torch.onnx.export(net, (x,), p, dynamo=False, opset_version=17, **ts),
            "ts17_bn": lambda p: torch.onnx.export(net, (x,), p, dynamo=False, opset_version=17,
                                                   do_constant_folding=False, **ts),
            "ts21": lambda p: torch.onnx.export(net, (x,), p, dynamo=False, opset_version=21, **ts),
            "dy18": lambda p: torch.onnx.export(net, (x,), p, dynamo=True, opset_version=18, **dy),
            "dy21": lambda p: torch.onnx.export(net, (x,), p, dynamo=True, opset_version=21, external_data=False,
                                                **dy),
        }
        for kind, write in files.items():
            path = out / f"{name}_{kind}.onnx"
            write(str(path))
            if kind.startswith("dy"):
                scrub(path)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(out / f"{name}_ort.onnx")
        ort.InferenceSession(str(out / f"{name}_ts17_bn.onnx"), so, providers=["CPUExecutionProvider"])
        for kind in list(files) + ["ort"]:
            f = f"{name}_{kind}.onnx"
            s = ort.InferenceSession(str(out / f), providers=["CPUExecutionProvider"])
            got = s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]
            scale = float(np.abs(want).max())
            err = float(np.abs(got - want).max())
            assert err <= 1e-5 * scale, (f, err, scale)
            goldens[f] = got.flatten().tolist()
            print(f"{f}: {(out / f).stat().st_size} bytes, ORT vs PyTorch {err:.2e} (scale {scale:.3f})")
    (out / "goldens.json").write_text(json.dumps(goldens, indent=0) + "\n")


if __name__ == "__main__":
    main()
