"""Inpainting: Context Encoders: Feature Learning by Inpainting.

Pathak et al. 2016, https://arxiv.org/abs/1604.07379
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslcli.encoders import normalisation
from sslcli.losses import weighted_masked_l2
from sslcli.methods.base import Budget, MethodDefaults, StepOut
from sslcli.methods.inpainting.config import InpaintingConfig
from sslcli.methods.spatial import UpsamplingDecoder, feature_map, output_stride, require_convnet


def default_overlap(side: int) -> int:
    """The paper's 7 px of overlap at 128 px, scaled to the image side (at least 1)."""
    return max(1, round(7 * side / 128))


def central_hole(height: int, width: int, fraction: float, overlap: int, device: torch.device) -> Tensor:
    """[1, 1, H, W], 1 in the hole: the central square of side fraction x side, less `overlap` px on every side
    (the released code's layout: the decoder predicts the whole square, whose border the encoder still sees)."""
    hole = torch.zeros(1, 1, height, width, device=device)
    side_h, side_w = max(1, round(height * fraction)), max(1, round(width * fraction))
    top, left = (height - side_h) // 2, (width - side_w) // 2
    inner = min(overlap, (min(side_h, side_w) - 1) // 2)  # at least one pixel of hole
    hole[..., top + inner:top + side_h - inner, left + inner:left + side_w - inner] = 1
    return hole


def random_blocks(n: int, height: int, width: int, count: int, side_fraction: float, device: torch.device) -> Tensor:
    """[n, 1, H, W], 1 in the hole: `count` squares of side side_fraction x side per image, at uniform random
    positions (possibly overlapping), drawn with torch's global RNG on the device (checkpoints hold its state)."""
    side = max(1, round(min(height, width) * side_fraction))
    tops = (torch.rand(n, count, device=device) * (height - side + 1)).floor()
    lefts = (torch.rand(n, count, device=device) * (width - side + 1)).floor()
    rows = torch.arange(height, device=device).view(1, 1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, 1, width)
    inside = ((rows >= tops[..., None, None]) & (rows < tops[..., None, None] + side)
              & (cols >= lefts[..., None, None]) & (cols < lefts[..., None, None] + side))
    return inside.any(dim=1, keepdim=True).float()


def random_shapes(n: int, height: int, width: int, coverage: float, cells: int, device: torch.device) -> Tensor:
    """[n, 1, H, W], 1 in the hole: per image, a random smooth region of `coverage` of its pixels, of any shape.

    A cells x cells grid of uniform noise, enlarged bilinearly to the image, kept at its round(coverage x H x W)
    highest pixels (fewer where values tie at the threshold, on the field's flat rims): one to a few blobs with curved borders, wherever the noise peaks. The paper's random
    regions are PASCAL VOC object outlines pasted at random places; these are a stand-in of the same kind
    (arbitrary shape, random place, a fixed share of the image), drawn with the global RNG on the device."""
    noise = torch.rand(n, 1, cells, cells, device=device)
    field = F.interpolate(noise, size=(height, width), mode="bilinear", align_corners=False).flatten(1)
    hole = min(field.shape[1] - 1, max(1, round(coverage * field.shape[1])))
    outside = field.kthvalue(field.shape[1] - hole, dim=1).values  # the highest pixel left as context
    return (field > outside[:, None]).float().view(n, 1, height, width)


def overlap_band(hole: Tensor, overlap: int) -> Tensor:
    """The context pixels within `overlap` px (chessboard distance) of the hole: its dilation less the hole.
    For the central hole this band and the hole make up the central square again."""
    if overlap <= 0:
        return torch.zeros_like(hole)
    dilated = F.max_pool2d(hole, 2 * overlap + 1, stride=1, padding=overlap)
    return dilated - hole


class Discriminator(nn.Module):
    """The adversarial term's critic: strided 4x4 convs with leaky ReLUs (DCGAN's, as the paper's), pooled to
    one real/fake logit per image. No batch norm: it is called on real, fake and frozen-weight fake batches."""

    def __init__(self, width: int, channels: int = 3):
        super().__init__()
        layers, cin = [], channels
        for i in range(3):
            layers += [nn.Conv2d(cin, width * 2 ** i, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            cin = width * 2 ** i
        self.features = nn.Sequential(*layers)
        self.logit = nn.Linear(cin, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.logit(self.features(x).mean(dim=(2, 3))).squeeze(1)


class Inpainting(MethodDefaults, nn.Module):
    """The encoder sees the view with a hole filled with the mean (0 once normalised); a light decoder of x2
    upsampling stages rebuilds the image from the encoder's spatial feature map; the loss is the L2 over the
    hole and an overlap band of context around it, the band weighted 10x (paper section 5.1).

    Holes: the central square (half the side, less the overlap: the paper's main setting), random blocks
    (section 3.3), or random shapes (`random_shapes`: smooth regions of a quarter of the image, a stand-in for
    the paper's random regions, which are PASCAL VOC object outlines sslcli does not have).

    Deviation: no channel-wise fully connected layer between encoder and decoder (its size depends on the
    feature map's, unknown until the first batch); a ResNet's last map at 32-128 px already spans the whole
    image.

    Adversarial term (adversarial_weight > 0): a discriminator learns real images from inpainted ones and
    the decoder is trained to fool it, in the same backward pass and optimizer step as the rest (the loop
    has one of each): the generator's term sees the discriminator with detached weights
    (torch.func.functional_call) so its gradient reaches only encoder and decoder, and the discriminator's
    term sees the inpainted image detached, so its gradient reaches only the discriminator. This is
    simultaneous gradient descent rather than the paper's alternating updates.
    """

    def __init__(self, cfg: InpaintingConfig, encoder: nn.Module, feature_dim: int, budget: Budget):
        super().__init__()
        require_convnet(encoder, "inpainting")
        self.cfg = cfg
        self.encoder = encoder
        channels = len(normalisation(encoder)[0])  # one mean per input channel (data.channels)
        self.decoder = UpsamplingDecoder(feature_dim, cfg.decoder_dim, channels, output_stride(encoder))
        self.discriminator = Discriminator(cfg.discriminator_dim, channels) if cfg.adversarial_weight > 0 else None

    def hole(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        if self.cfg.region == "center":
            return central_hole(h, w, self.cfg.hole_fraction, self.overlap(h), x.device).expand(n, -1, -1, -1)
        if self.cfg.region == "shapes":
            return random_shapes(n, h, w, self.cfg.hole_fraction ** 2, self.cfg.shape_cells, x.device)
        return random_blocks(n, h, w, self.cfg.num_blocks, self.cfg.hole_fraction / 2, x.device)

    def overlap(self, side: int) -> int:
        return self.cfg.overlap if self.cfg.overlap is not None else default_overlap(side)

    def forward(self, views: list[Tensor], step: int) -> StepOut:
        x = views[0]
        hole = self.hole(x)
        band = overlap_band(hole, self.overlap(x.shape[-2]))
        context = x * (1 - hole).to(x.dtype)
        fmap, features = feature_map(self.encoder, context)
        pred = self.decoder(fmap, tuple(x.shape[-2:]))
        reconstruction = weighted_masked_l2(pred, x, hole, band, self.cfg.overlap_weight)
        logs = {"reconstruction": reconstruction.detach()}
        loss = reconstruction
        if self.discriminator is not None:
            weight = self.cfg.adversarial_weight
            adversarial, discriminator = self.adversarial_terms(x, context + pred * hole.to(pred.dtype))
            loss = (1 - weight) * reconstruction + weight * adversarial + discriminator
            logs.update(adversarial=adversarial.detach(), discriminator=discriminator.detach())
        logs["loss"] = loss.detach()
        return StepOut(loss=loss, logs=logs, embeddings={"features": (features,)})

    def adversarial_terms(self, real: Tensor, fake: Tensor) -> tuple[Tensor, Tensor]:
        """(the generator's term: fake judged real by a discriminator it cannot change, the discriminator's
        term: real judged real and fake judged fake, with the fake detached)."""
        frozen = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        fooled = torch.func.functional_call(self.discriminator, frozen, (fake,)).float()
        adversarial = F.binary_cross_entropy_with_logits(fooled, torch.ones_like(fooled))
        on_real = self.discriminator(real).float()
        on_fake = self.discriminator(fake.detach()).float()
        discriminator = (F.binary_cross_entropy_with_logits(on_real, torch.ones_like(on_real))
                         + F.binary_cross_entropy_with_logits(on_fake, torch.zeros_like(on_fake)))
        return adversarial, discriminator
