"""A VGG-style CNN of your own, as searchcomp imports it: ``examples.vgg.model:vgg_style``.

Source 001's first network: Conv-BN-Conv-BN-MaxPool-Dropout-Conv-BN-MaxPool-Dropout, then a
wide fully connected layer and the classifier. The wide FC layer (``classifier.0``) holds most
of the parameters, which is what the meta head (``blocks.head_module: classifier.0``) cuts.
searchcomp passes ``num_classes`` and ``in_channels``; ``model.kwargs`` gives the rest.
"""

from torch import nn


class VGGStyle(nn.Module):
    """Three 3x3 convs in two stages, a 4x4 average pool, FC(K -> hidden), FC(hidden -> N).

    The pool makes K = 2 * width * 16 at any input size; ONNX exports it for inputs whose
    side is a multiple of 16 (32 here): adaptive pooling must divide the feature map.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 32,
                 hidden: int = 256, dropout: float = 0.2) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
            nn.MaxPool2d(2), nn.Dropout2d(dropout),
            nn.Conv2d(w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.MaxPool2d(2), nn.Dropout2d(dropout),
        )
        self.pool = nn.AdaptiveAvgPool2d(4)  # any input size gives K = 2w * 16 features
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Sequential(
            nn.Linear(2 * w * 16, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.flatten(self.pool(self.features(x))))


def vgg_style(num_classes: int = 10, in_channels: int = 3, width: int = 32,
              hidden: int = 256) -> nn.Module:
    """The factory named in ``spaces/vgg-fashion.yaml``."""
    return VGGStyle(num_classes, in_channels, width, hidden)
