"""A user factory for tests: ``tests.tiny_factory:tiny_cnn``."""

from torch import nn


def tiny_cnn(num_classes: int = 10, in_channels: int = 3, width: int = 8) -> nn.Module:
    """Two conv stages and a linear head."""
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                      nn.BatchNorm2d(width), nn.ReLU()),
        nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
                      nn.BatchNorm2d(2 * width), nn.ReLU()),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))
