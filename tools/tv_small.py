"""Narrow networks with torchvision's ResNet layout (shared by make_pth_fixtures.py and make_torchvision_golden.py).

`small_resnet(block, layers, planes, in_channels, num_classes)` builds a network from torchvision's own
`torchvision.models.resnet.Bottleneck` / `BasicBlock` blocks with the same attribute names as
`torchvision.models.ResNet` (conv1, bn1, relu, maxpool, layer1..layer4, avgpool, fc) and the same
`_make_layer` logic (1×1 conv + BN downsample when the stride or channel count changes; stride 1 in layer1,
2 after), so its `state_dict()` keys are torchvision's. The only difference from torchvision's ResNet is the
width: the stem has `planes[0]` channels (torchvision: 64) and layer i has `planes[i]` planes (torchvision:
64, 128, 256, 512). torchvision's init is reproduced too (kaiming_normal_ fan_out for convs, BN weight 1, bias 0).
"""
import torch
import torch.nn as nn
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1


class SmallResNet(nn.Module):
    def __init__(self, block, layers, planes=(4, 8, 8, 16), in_channels=3, num_classes=5):
        super().__init__()
        self.inplanes = planes[0]
        self.conv1 = nn.Conv2d(in_channels, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, planes[0], layers[0])
        self.layer2 = self._make_layer(block, planes[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, planes[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, planes[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(planes[3] * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def small_bottleneck(seed=0):
    """Bottleneck blocks, planes 4,8,8,16, layers [1,1,1,1], 3 input channels, 5 classes."""
    torch.manual_seed(seed)
    return SmallResNet(Bottleneck, [1, 1, 1, 1])


def small_basic(seed=0):
    """BasicBlock blocks, planes 4,8,8,16, layers [2,1,1,1], 3 input channels, 5 classes."""
    torch.manual_seed(seed)
    return SmallResNet(BasicBlock, [2, 1, 1, 1])
