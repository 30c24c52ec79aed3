"""Backbone registry. Every model is a :class:`Classifier`: a feature extractor and a linear head,
so last-layer methods (DFR) and probes can read the penultimate features."""

from __future__ import annotations

import os

import torch
from torch import nn

from ffr.plugins import Registry

BACKBONES: Registry = Registry("backbone")


class Classifier(nn.Module):
    """``head(features(x))``; ``embed(x)`` returns the penultimate features.

    ``feature_norm`` (off by default; set by DFR, recorded in checkpoint metadata) L2-normalises
    the features before the head — the one step of DFR's feature transform that is not linear
    and so cannot be folded into the head's weights.
    """

    def __init__(self, features: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        self.features = features
        self.feature_dim = feature_dim
        self.head = nn.Linear(feature_dim, num_classes)
        self.feature_norm = False

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def stages(self) -> list[nn.Module]:
        """The feature extractor's stages, input first (``freeze_stages`` freezes a prefix)."""
        return self.features.stages()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        if self.feature_norm:
            f = nn.functional.normalize(f, dim=1)
        return self.head(f)


def create_model(name: str, num_classes: int, weights: str | os.PathLike | None = None) -> Classifier:
    """Build backbone ``name`` with a fresh ``num_classes`` head.

    ``weights`` is a local file of torchvision-format state dict (e.g. ImageNet ResNet weights):
    loaded with ``weights_only=True``; the original classifier (``fc.*``) is dropped. Nothing is
    ever downloaded.
    """
    model = BACKBONES.get(name)(num_classes)
    if weights is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        state = {k: v for k, v in state.items() if not k.startswith(("fc.", "head."))}
        missing, unexpected = model.features.load_state_dict(
            {k.removeprefix("features."): v for k, v in state.items()}, strict=False)
        if unexpected or [k for k in missing if "num_batches_tracked" not in k]:
            raise ValueError(f"weights file {weights} does not fit backbone {name!r}: "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model


class _SmallCNN(nn.Sequential):
    def __init__(self, width: int = 32):
        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        super().__init__(*block(3, width), nn.MaxPool2d(2), *block(width, 2 * width), nn.MaxPool2d(2),
                         *block(2 * width, 2 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def stages(self) -> list[nn.Module]:
        """Three stages, one per conv block (with its pooling)."""
        layers = list(self)
        return [nn.Sequential(*layers[0:4]), nn.Sequential(*layers[4:8]), nn.Sequential(*layers[8:])]


@BACKBONES.register("small_cnn")
def small_cnn(num_classes: int) -> Classifier:
    """A 3-block CNN (~57k parameters): fast enough for CPU tests and the demo benchmark."""
    return Classifier(_SmallCNN(32), 64, num_classes)


@BACKBONES.register("tiny_cnn")
def tiny_cnn(num_classes: int) -> Classifier:
    """The same 3-block CNN at half the width (~14k parameters, ~4x faster than ``small_cnn`` on
    a CPU core): for grids of many cells on CPU."""
    return Classifier(_SmallCNN(16), 32, num_classes)


class _TorchvisionFeatures(nn.Module):
    """A torchvision ResNet without its ``fc``; state-dict keys match torchvision's."""

    def __init__(self, resnet: nn.Module, small_images: bool):
        super().__init__()
        if small_images:
            # CIFAR-style stem for 32-64 px inputs: 3x3 stride-1 conv, no max-pool.
            resnet.conv1 = nn.Conv2d(3, resnet.conv1.out_channels, 3, 1, 1, bias=False)
            resnet.maxpool = nn.Identity()
        resnet.fc = nn.Identity()
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
        self.avgpool = resnet.avgpool

    def stages(self) -> list[nn.Module]:
        """Five stages: the stem (conv1, bn1), then layer1 ... layer4."""
        return [nn.Sequential(self.conv1, self.bn1), self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def _resnet(arch: str, num_classes: int, small: bool) -> Classifier:
    import torchvision

    net = getattr(torchvision.models, arch)(weights=None)
    dim = net.fc.in_features
    return Classifier(_TorchvisionFeatures(net, small), dim, num_classes)


@BACKBONES.register("resnet18")
def resnet18(num_classes: int) -> Classifier:
    """torchvision ResNet-18 (224 px recipe)."""
    return _resnet("resnet18", num_classes, small=False)


@BACKBONES.register("resnet18_small")
def resnet18_small(num_classes: int) -> Classifier:
    """ResNet-18 with a 3x3 stride-1 stem and no max-pool, for 32-64 px images."""
    return _resnet("resnet18", num_classes, small=True)


@BACKBONES.register("resnet50")
def resnet50(num_classes: int) -> Classifier:
    """torchvision ResNet-50, the paper's backbone (224 px, ImageNet weights from a local file)."""
    return _resnet("resnet50", num_classes, small=False)


@BACKBONES.register("resnet50_small")
def resnet50_small(num_classes: int) -> Classifier:
    """ResNet-50 with the small-image stem."""
    return _resnet("resnet50", num_classes, small=True)
