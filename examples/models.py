"""Models for the examples: a small CNN, ResNet-20 (GroupNorm, no BatchNorm statistics) and an MLP."""

from __future__ import annotations

import math

from torch import Tensor, nn

MODELS = ("cnn", "resnet20", "mlp")


class SmallCNN(nn.Module):
    """Three 3×3 convolutions with GroupNorm and a two-layer classifier, for any input of at least 2×2.

    Adaptive pooling to 4×4 before the classifier makes the same network fit 1×8×8 digits,
    1×28×28 Fashion-MNIST and 3×32×32 CIFAR-10.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, groups: int = 4) -> None:
        """Build the network.

        Args:
            in_channels: input channels.
            num_classes: output classes.
            width: channels of the first convolution (the others use twice as many).
            groups: GroupNorm groups after each convolution.
        """
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            _norm(width, groups),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            _norm(2 * width, groups),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            _norm(2 * width, groups),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(4),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * 16, 128), nn.ReLU(inplace=True), nn.Linear(128, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Class logits of a batch ``N×C×H×W``."""
        return self.classifier(self.features(x))


class MLP(nn.Module):
    """Two hidden ReLU layers of ``width`` units on the flattened input.

    ``bench/study.py``'s CPU setting: on Fashion-MNIST it fits a few thousand training samples to
    ≥ 99% within a few hundred steps at a tenth of the small CNN's cost per step, while its test
    accuracy stays near 85% — the regime where the sharpness of the minimum can matter.
    """

    def __init__(self, in_features: int, num_classes: int = 10, width: int = 256) -> None:
        """Build the network: ``in_features → width → width → num_classes``."""
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, width),
            nn.ReLU(inplace=True),
            nn.Linear(width, width),
            nn.ReLU(inplace=True),
            nn.Linear(width, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Class logits of a batch ``N×C×H×W``."""
        return self.net(x)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, channels), channels)


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with GroupNorm and a shortcut (1×1 convolution when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int) -> None:
        """Build the block.

        Args:
            in_channels: input channels.
            out_channels: output channels.
            stride: stride of the first convolution (2 halves the resolution).
            groups: GroupNorm groups.
        """
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = _norm(out_channels, groups)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                _norm(out_channels, groups),
            )

    def forward(self, x: Tensor) -> Tensor:
        """Residual block output."""
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR ResNet-20 (He et al. 2016): 3 stages × 3 basic blocks of 16/32/64 channels, GroupNorm.

    GroupNorm replaces BatchNorm, as in the decentralized-learning papers on non-IID data (QGM,
    SADDLe): there are no running statistics that each rank would estimate on its own skewed data.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, groups: int = 2, blocks: int = 3) -> None:
        """Build the network.

        Args:
            in_channels: input channels.
            num_classes: output classes.
            groups: GroupNorm groups per layer.
            blocks: basic blocks per stage (3: ResNet-20; 6 n + 2 layers in all).
        """
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), _norm(16, groups), nn.ReLU(inplace=True)
        )
        layers: list[nn.Module] = []
        channels = 16
        for stage, width in enumerate((16, 32, 64)):
            for b in range(blocks):
                stride = 2 if stage > 0 and b == 0 else 1
                layers.append(BasicBlock(channels, width, stride, groups))
                channels = width
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """Class logits of a batch ``N×C×H×W``."""
        return self.fc(self.pool(self.layers(self.stem(x))).flatten(1))


def build(name: str, input_shape: tuple[int, ...], num_classes: int, width: int = 32) -> nn.Module:
    """Create one of :data:`MODELS` for inputs of ``input_shape`` (``C×H×W``).

    Args:
        name: one of :data:`MODELS`.
        input_shape: ``C×H×W`` of one sample.
        num_classes: output classes.
        width: first-layer channels of ``cnn``, hidden units of ``mlp`` (ignored by ``resnet20``);
            compute grows as ``width²``.

    Raises:
        ValueError: an unknown name, a non-positive width or an input shape that is not ``C×H×W``.
    """
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (channels, height, width), got {input_shape}")
    if width < 4 or width % 4:
        raise ValueError(f"width must be a positive multiple of 4 (GroupNorm groups), got {width}")
    if name == "cnn":
        return SmallCNN(input_shape[0], num_classes, width=width)
    if name == "resnet20":
        return ResNet20(input_shape[0], num_classes)
    if name == "mlp":
        return MLP(math.prod(input_shape), num_classes, width=width)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
