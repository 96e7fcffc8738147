"""The D2L ResNet-18 chapter's model code (the "Dive into Deep Learning" ResNet chapter, Chinese PyTorch edition), as an importable module.

Used by tools/make_golden.py and tools/check_pytorch_interop.py. Run a self-check from the repo root with:

    python3 tools/chapter_model.py

which builds the default net, asserts its parameter count (11,178,378) and prints the chapter's shape walk for 1x1x224x244.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

RESNET18_PARAMS = 11_178_378


class Residual(nn.Module):
    """The chapter's residual block (d2lzh_pytorch.Residual)."""

    def __init__(self, in_channels, out_channels, use_1x1conv=False, stride=1):
        super(Residual, self).__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        if use_1x1conv:
            self.conv3 = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride)
        else:
            self.conv3 = None
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, X):
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
        return F.relu(Y + X)


def resnet_block(in_channels, out_channels, num_residuals, first_block=False):
    if first_block:
        assert in_channels == out_channels  # the first block keeps the channel count
    blk = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.append(Residual(in_channels, out_channels, use_1x1conv=True, stride=2))
        else:
            blk.append(Residual(out_channels, out_channels))
    return nn.Sequential(*blk)


class GlobalAvgPool2d(nn.Module):
    """d2lzh_pytorch.GlobalAvgPool2d: average pool over the whole spatial extent."""

    def __init__(self):
        super(GlobalAvgPool2d, self).__init__()

    def forward(self, x):
        return F.avg_pool2d(x, kernel_size=x.size()[2:])


class FlattenLayer(nn.Module):
    """d2lzh_pytorch.FlattenLayer: (N, ...) -> (N, -1)."""

    def __init__(self):
        super(FlattenLayer, self).__init__()

    def forward(self, x):
        return x.view(x.shape[0], -1)


def resnet18(in_channels=1, num_classes=10, widths=(64, 128, 256, 512), residuals=(2, 2, 2, 2)):
    """The chapter's nn.Sequential ResNet-18 (widths/residuals/in_channels/num_classes generalize the constants)."""
    widths = tuple(widths)
    residuals = tuple(residuals)
    assert len(widths) == 4 and len(residuals) == 4
    net = nn.Sequential(
        nn.Conv2d(in_channels, widths[0], kernel_size=7, stride=2, padding=3),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )
    net.add_module('resnet_block1', resnet_block(widths[0], widths[0], residuals[0], first_block=True))
    net.add_module('resnet_block2', resnet_block(widths[0], widths[1], residuals[1]))
    net.add_module('resnet_block3', resnet_block(widths[1], widths[2], residuals[2]))
    net.add_module('resnet_block4', resnet_block(widths[2], widths[3], residuals[3]))
    net.add_module('global_avg_pool', GlobalAvgPool2d())
    net.add_module('fc', nn.Sequential(FlattenLayer(), nn.Linear(widths[3], num_classes)))
    if (in_channels, num_classes, widths, residuals) == (1, 10, (64, 128, 256, 512), (2, 2, 2, 2)):
        n = count_params(net)
        assert n == RESNET18_PARAMS, f"ResNet-18 has {n} parameters, expected {RESNET18_PARAMS}"
    return net


def count_params(net):
    return sum(p.numel() for p in net.parameters())


if __name__ == '__main__':
    net = resnet18()
    print('parameters:', count_params(net))
    X = torch.rand((1, 1, 224, 244))
    with torch.no_grad():
        for name, layer in net.named_children():
            X = layer(X)
            print(name, ' output shape:\t', X.shape)
