"""What the dense pretext tasks (colorization, inpainting) share: the encoder's spatial feature map, the
views back in pixels, and a light upsampling decoder.

The encoder is any timm ConvNet: `forward_features` gives its last feature map [B, C, h, w] and
`forward_head(map, pre_logits=True)` the pooled features the encoder exports (num_classes=0), so one pass
gives both the decoder's input and the monitors' embeddings.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslcli.encoders import normalisation
from sslcli.errors import UsageError


def require_convnet(encoder: nn.Module, method: str) -> None:
    """Dense decoders need a spatial map; a ViT's tokens are not one (MAE is the ViT pretext task)."""
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(encoder, VisionTransformer) or not hasattr(encoder, "forward_features"):
        raise UsageError(f"{method} needs a convolutional timm encoder with a spatial feature map (e.g. resnet18), "
                         f"not {type(encoder).__name__}; set --encoder")


def feature_map(encoder: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """(the last feature map [B, C, h, w], the pooled features [B, D]) of one encoder pass."""
    fmap = encoder.forward_features(x)
    if fmap.ndim != 4:
        raise UsageError(f"the encoder's forward_features gives a {fmap.ndim}-D tensor, not a [B, C, h, w] map; "
                         "use a convolutional encoder")
    return fmap, encoder.forward_head(fmap, pre_logits=True)


class Pixels(nn.Module):
    """Normalised views <-> pixels in [0, 1], with the encoder's own mean and std (those the views were
    normalised with: both come from encoders.normalisation), kept as non-persistent buffers."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        mean, std = normalisation(encoder)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def to_pixels(self, x: Tensor) -> Tensor:
        return (x.float() * self.std + self.mean).clamp(0, 1)

    def normalise(self, pixels: Tensor) -> Tensor:
        return (pixels - self.mean) / self.std


def conv_bn_relu(cin: int, cout: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def output_stride(encoder: nn.Module, probe_size: int = 64) -> int:
    """How many input pixels one cell of the feature map spans (32 for a ResNet, 8 with the small-image stem),
    measured by a forward pass on a blank image in eval mode (no batch-norm statistics move, no RNG is drawn)."""
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            height = encoder.forward_features(torch.zeros(1, 3, probe_size, probe_size)).shape[-2]
    finally:
        encoder.train(was_training)
    return max(1, round(probe_size / height))


class UpsamplingDecoder(nn.Module):
    """A feature map [B, C, h, w] -> [B, out, h * upscale, w * upscale]: a 1x1 conv to `width`, then one stage of
    x2 bilinear upsampling and a 3x3 conv per doubling (the width halving, at least `min_width`), then a 1x1
    conv to `out`; a last bilinear resize meets the exact output size when it is not h * upscale."""

    def __init__(self, in_dim: int, width: int, out_dim: int, upscale: int, min_width: int = 32):
        super().__init__()
        self.stem = conv_bn_relu(in_dim, width, kernel=1)
        widths = [width]
        for _ in range(max(0, round(math.log2(max(upscale, 1))))):
            widths.append(max(min_width, widths[-1] // 2))
        self.stages = nn.ModuleList(conv_bn_relu(a, b) for a, b in zip(widths, widths[1:], strict=False))
        self.head = nn.Conv2d(widths[-1], out_dim, 1)

    def forward(self, fmap: Tensor, size: tuple[int, int]) -> Tensor:
        x = self.stem(fmap)
        for stage in self.stages:
            x = stage(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.head(x)
