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


class Blobs:
    """A user Dataset: gray float images in [0, 1] whose label is where a bright square sits,
    of any size; no ``targets`` attribute (labels are only known by reading the items)."""

    def __init__(self, n: int, size: int = 12, classes: int = 4, scale: float = 1.0,
                 seed: int = 0) -> None:
        import torch

        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, classes, (n,), generator=g).tolist()
        self.size, self.scale, self.classes = size, scale, classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        import torch

        y = self.labels[i]
        img = torch.zeros(1, self.size, self.size)
        half = self.size // 2
        r, c = divmod(y % 4, 2)
        img[:, r * half:(r + 1) * half, c * half:(c + 1) * half] = self.scale
        return img, y


def blobs(root: str, n_train: int = 60, n_test: int = 20, scale: float = 1.0,
          classes: int = 4):
    """A dataset factory: ``tests.tiny_factory:blobs`` (records the root it was given)."""
    blobs.root = root
    return Blobs(n_train, scale=scale, classes=classes), Blobs(n_test, scale=scale, seed=1,
                                                               classes=classes)


def not_datasets():
    """A broken dataset factory."""
    return 3, 4


def tiny_densenet(num_classes: int = 10, in_channels: int = 1):
    """torchvision's DenseNet, two dense blocks of two layers (the family of DenseNet-121)."""
    from torchvision.models import DenseNet

    m = DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2,
                 num_classes=num_classes)
    m.features.conv0 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
    return m


def tiny_regnet(num_classes: int = 10, in_channels: int = 1):
    """torchvision's RegNet with two narrow stages (the family of RegNet-X/Y)."""
    from torchvision.models.regnet import BlockParams, RegNet

    params = BlockParams.from_init_params(depth=3, w_0=16, w_a=8.0, w_m=2.0, group_width=8)
    m = RegNet(params, num_classes=num_classes, stem_width=16)
    m.stem[0] = nn.Conv2d(in_channels, 16, 3, stride=2, padding=1, bias=False)
    return m


def tiny_mobilenet(num_classes: int = 10, in_channels: int = 1):
    """torchvision's MobileNetV2 with three inverted residuals (one residual add)."""
    from torchvision.models import MobileNetV2

    m = MobileNetV2(num_classes=num_classes,
                    inverted_residual_setting=[[1, 8, 1, 1], [4, 16, 2, 2]])
    m.features[0][0] = nn.Conv2d(in_channels, 32, 3, stride=1, padding=1, bias=False)
    return m
