"""Colorization: Colorful Image Colorization.

Zhang, Isola & Efros 2016, https://arxiv.org/abs/1603.08511
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from sslcli import colour, distributed
from sslcli.losses import rebalanced_soft_ce
from sslcli.methods.base import Budget, MethodDefaults, StepOut
from sslcli.methods.colorization.config import ColorizationConfig
from sslcli.methods.spatial import Pixels, UpsamplingDecoder, feature_map, output_stride, require_convnet


class Colorization(MethodDefaults, nn.Module):
    """The encoder sees the lightness L of each view; a light decoder predicts, per cell of a 1/4-resolution
    grid, a distribution over the quantised ab bins; the loss is the cross entropy with the soft-encoded true
    ab (5 nearest bins, sigma 5), each pixel weighted by the class-rebalancing weight of its bin (eq. 4).

    The encoder stays an RGB encoder: it sees the neutral grey of each pixel's lightness in all three
    channels (a 1-channel conv would be the same with its weights summed), so the exported encoder takes
    RGB images unchanged. The views come normalised with the encoder's mean and std; the method reads the
    same values from its encoder (encoders.normalisation) to get the pixels back.

    Rebalancing prior: the paper estimates the ab distribution once on all of ImageNet. Here it is a running
    estimate, the mean of the batches' bin frequencies so far (the current batch included, so the first step
    has one), smoothed by the Gaussian kernel of sigma 5 as in the paper; it converges to the paper's
    empirical prior and needs no pass over the data before training. It is a buffer, so checkpoints hold it
    and a resume continues it exactly; it is updated after the optimizer step (never on a skipped step).
    """

    def __init__(self, cfg: ColorizationConfig, encoder: nn.Module, feature_dim: int, budget: Budget):
        super().__init__()
        require_convnet(encoder, "colorization")
        self.cfg = cfg
        self.encoder = encoder
        self.pixels = Pixels(encoder)
        bins = colour.ab_bins(cfg.bins)
        self.register_buffer("bins", bins, persistent=False)
        self.register_buffer("smoothing", colour.bin_smoothing(bins, cfg.sigma), persistent=False)
        # The running prior: mean of the batches' bin frequencies, over `prior_batches` batches.
        self.register_buffer("prior", torch.full((len(bins),), 1.0 / len(bins)))
        self.register_buffer("prior_batches", torch.zeros(()))
        upscale = max(1, output_stride(encoder) // cfg.target_stride)
        self.decoder = UpsamplingDecoder(feature_dim, cfg.decoder_dim, len(bins), upscale)

    def encoder_input(self, lab: Tensor) -> Tensor:
        """The grey image of the lightness, normalised like any view: what the encoder sees."""
        grey = colour.lightness_to_grey(lab[:, :1]).expand(-1, 3, -1, -1)
        return self.pixels.normalise(grey)

    def batch_frequencies(self, targets: Tensor) -> Tensor:
        """How often each bin is a pixel's nearest one in this batch (the global batch under torchrun)."""
        counts = torch.bincount(targets.argmax(dim=1).flatten(), minlength=len(self.bins)).float()
        counts = distributed.all_reduce_(counts)
        return counts / counts.sum()

    def forward(self, views: list[Tensor], step: int) -> StepOut:
        x = views[0]
        with torch.no_grad():
            lab = colour.rgb_to_lab(self.pixels.to_pixels(x))
            size = (max(1, x.shape[-2] // self.cfg.target_stride), max(1, x.shape[-1] // self.cfg.target_stride))
            ab = nn.functional.adaptive_avg_pool2d(lab[:, 1:], size)
            targets = colour.soft_encode(ab, self.bins, self.cfg.neighbours, self.cfg.sigma)
            frequencies = self.batch_frequencies(targets)
            seen = self.prior_batches
            prior = (self.prior * seen + frequencies) / (seen + 1)
            self.stage("prior", partial(self.update_prior, prior))
            weights = colour.rebalancing_weights(self.smoothing @ prior, self.cfg.rebalance_lambda)
        fmap, features = feature_map(self.encoder, self.encoder_input(lab).to(x.dtype))
        logits = self.decoder(fmap, size)
        loss = rebalanced_soft_ce(logits, targets, weights)
        return StepOut(loss=loss, logs={"loss": loss.detach()}, embeddings={"features": (features,)})

    def update_prior(self, prior: Tensor) -> None:
        """The running prior with this batch's frequencies in it (after an applied step)."""
        self.prior.copy_(prior)
        self.prior_batches.add_(1)
