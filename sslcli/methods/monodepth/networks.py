"""Monodepth2's networks (nianticlabs/monodepth2 networks/): the depth decoder on the encoder's multi-scale
features, and the pose network (its own ResNet on two stacked frames, then the pose decoder).

The depth encoder is the run's timm encoder: `forward_intermediates` gives its feature maps at every stride (a
ResNet's act1, layer1..layer4, as Monodepth2's ResnetEncoder returns them), so the exported encoder.safetensors
is exactly the depth network's encoder.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslcli.encoders import create
from sslcli.errors import UsageError


def multi_scale_features(encoder: nn.Module, x: Tensor) -> list[Tensor]:
    """The encoder's feature maps, finest first ([B, C_i, H_i, W_i] at each of its timm feature_info stages)."""
    return list(encoder.forward_intermediates(x, intermediates_only=True))


def require_multi_scale(encoder: nn.Module) -> list[int]:
    """The channels of each of the encoder's feature levels; one line when it has none (a ViT's tokens are one
    scale: the decoder's skip connections need a ConvNet)."""
    from timm.models.vision_transformer import VisionTransformer

    info = getattr(encoder, "feature_info", None)
    if isinstance(encoder, VisionTransformer) or not hasattr(encoder, "forward_intermediates") or not info:
        raise UsageError(f"monodepth needs a convolutional timm encoder with multi-scale features (e.g. resnet18), "
                         f"not {type(encoder).__name__}; set --encoder")
    channels = [int(f["num_chs"]) for f in info]
    if len(channels) < 2:
        raise UsageError(f"monodepth's decoder needs an encoder with at least 2 feature levels; "
                         f"{type(encoder).__name__} has {len(channels)}")
    return channels


class Conv3x3(nn.Module):
    """Monodepth2's Conv3x3: reflection padding then a 3x3 conv (replication where a map is 1 px wide, which
    reflection cannot pad: a deep encoder's coarsest map at a small input size)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3)

    def forward(self, x: Tensor) -> Tensor:
        mode = "reflect" if min(x.shape[-2:]) > 1 else "replicate"
        return self.conv(F.pad(x, (1, 1, 1, 1), mode=mode))


class ConvBlock(nn.Module):
    """Conv3x3 then ELU (Monodepth2's ConvBlock)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = Conv3x3(cin, cout)

    def forward(self, x: Tensor) -> Tensor:
        return F.elu(self.conv(x))


@dataclass(frozen=True)
class DecoderLayout:
    """What rebuilds a depth decoder: written into depth_decoder.safetensors' metadata."""

    encoder_channels: tuple[int, ...]
    channels: tuple[int, ...]  # the decoder's width at each level, finest first
    num_scales: int
    min_depth: float
    max_depth: float

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> DecoderLayout:
        raw = json.loads(text)
        return cls(tuple(int(c) for c in raw["encoder_channels"]), tuple(int(c) for c in raw["channels"]),
                   int(raw["num_scales"]), float(raw["min_depth"]), float(raw["max_depth"]))


def decoder_channels(base: tuple[int, ...], levels: int) -> tuple[int, ...]:
    """`base` widths (Monodepth2: 16, 32, 64, 128, 256) for `levels` encoder levels: the first `levels`, doubled on
    for an encoder with more."""
    widths = list(base[:levels])
    while len(widths) < levels:
        widths.append(widths[-1] * 2)
    return tuple(widths)


class DepthDecoder(nn.Module):
    """Monodepth2's DepthDecoder: from the coarsest feature map up, at each level i a ConvBlock, an upsampling
    (nearest) to the next finer level's size with its features concatenated (the skip connection), a second
    ConvBlock; levels 0 .. num_scales-1 each give a sigmoid disparity. Level 0 is upsampled to the input size
    (a ResNet's act1 is at stride 2, so this is Monodepth2's last x2)."""

    def __init__(self, layout: DecoderLayout):
        super().__init__()
        self.layout = layout
        enc, dec = layout.encoder_channels, layout.channels
        n = len(enc)
        self.up0 = nn.ModuleList(ConvBlock(enc[-1] if i == n - 1 else dec[i + 1], dec[i]) for i in range(n))
        self.up1 = nn.ModuleList(ConvBlock(dec[i] + (enc[i - 1] if i > 0 else 0), dec[i]) for i in range(n))
        self.disp = nn.ModuleList(Conv3x3(dec[s], 1) for s in range(layout.num_scales))

    def forward(self, features: list[Tensor], size: tuple[int, int]) -> list[Tensor]:
        """Disparities in (0, 1), one per scale, finest first: [B, 1, h_s, w_s]."""
        x = features[-1]
        out: list[Tensor] = [None] * self.layout.num_scales  # type: ignore[list-item]
        for i in reversed(range(len(features))):
            x = self.up0[i](x)
            target = features[i - 1].shape[-2:] if i > 0 else size
            x = F.interpolate(x, size=tuple(target), mode="nearest")
            if i > 0:
                x = torch.cat([x, features[i - 1]], dim=1)
            x = self.up1[i](x)
            if i < self.layout.num_scales:
                out[i] = torch.sigmoid(self.disp[i](x))
        return out


class PoseNet(nn.Module):
    """Monodepth2's separate pose network: a timm ResNet (the paper's ResNet18) on two frames stacked on the
    channels, then its PoseDecoder: 1x1 squeeze to `width`, two 3x3 convs, a 1x1 conv to 6 values, the spatial
    mean, scaled by 0.01: axis-angle and translation of the camera between the two frames."""

    def __init__(self, encoder_name: str, width: int):
        super().__init__()
        try:
            self.encoder = create(encoder_name, {}, channels=6)
        except UsageError as exc:
            raise UsageError(f"method.pose_encoder: {exc}") from None
        if not hasattr(self.encoder, "forward_features"):
            raise UsageError(f"method.pose_encoder={encoder_name!r} gives no feature map; name a ConvNet (resnet18)")
        with torch.no_grad():
            was = self.encoder.training
            channels = self.encoder.eval().forward_features(torch.zeros(1, 6, 32, 32)).shape[1]
            self.encoder.train(was)
        self.decoder = nn.Sequential(nn.Conv2d(channels, width, 1), nn.ReLU(),
                                     nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                     nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                     nn.Conv2d(width, 6, 1))

    def forward(self, first: Tensor, second: Tensor) -> tuple[Tensor, Tensor]:
        """(axis-angle [B, 3], translation [B, 3]) of the motion from `first` to `second`."""
        fmap = self.encoder.forward_features(torch.cat([first, second], dim=1))
        out = 0.01 * self.decoder(fmap).mean((2, 3))
        return out[:, :3], out[:, 3:]
