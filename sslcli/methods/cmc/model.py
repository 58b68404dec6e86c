"""CMC: Contrastive Multiview Coding.

Tian, Krishnan & Isola 2019, https://arxiv.org/abs/1906.05849 (reference: HobbitLong/CMC)
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslcli import colour, distributed
from sslcli.errors import UsageError
from sslcli.losses import info_nce
from sslcli.methods.base import Budget, MethodDefaults, StepOut
from sslcli.methods.cmc.config import CMCConfig
from sslcli.methods.memory_bank import MemoryBank, bank_loss
from sslcli.methods.spatial import Pixels

# The official code's normalisation of the ab channels (train_CMC.py): the centre and half-range of a and b
# over sRGB, so each lands in about [-1, 1].
AB_MEAN = ((-86.183 + 98.233) / 2, (-107.857 + 94.478) / 2)
AB_STD = ((86.183 + 98.233) / 2, (107.857 + 94.478) / 2)


def two_channel_copy(encoder: nn.Module) -> nn.Module:
    """The encoder's architecture for the 2-channel ab view: a copy whose first 3-channel convolution takes 2
    channels, every weight drawn afresh (timm's own init where the model has one, torch's otherwise), so
    the two encoders start independent, as the paper's two networks do."""
    twin = copy.deepcopy(encoder)
    for name, module in twin.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            stem = nn.Conv2d(2, module.out_channels, module.kernel_size, module.stride, module.padding,
                             module.dilation, module.groups, module.bias is not None, module.padding_mode)
            parent, _, child = name.rpartition(".")
            setattr(twin.get_submodule(parent) if parent else twin, child, stem)
            break
    else:
        raise UsageError(f"cmc builds its ab encoder by giving the encoder's first convolution 2 input channels, "
                         f"but {type(encoder).__name__} has no 3-channel Conv2d; use a timm ResNet, ViT or ConvNet")
    if callable(getattr(twin, "init_weights", None)):  # timm ResNets and ViTs
        twin.init_weights()
    else:
        for module in twin.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return twin


class CMC(MethodDefaults, nn.Module):
    """Two views of each image, its Lab lightness L and its colour ab, each with its own encoder and linear
    head to a unit 128-d embedding, contrasted with each other (the paper's "core view" L-ab, eq. 8 summed
    over both directions). With `negatives = "bank"` (the paper) each view has a memory bank of its
    embeddings (memory_bank.py): the L embedding is scored against the ab bank's entry of the same image and
    K = 16384 drawn entries, the ab embedding against the L bank's, by NCE; both banks take the step's
    embeddings after the step (momentum 0.5). With `negatives = "batch"` there is no bank: symmetric InfoNCE
    between the L and ab embeddings of the (global) batch.

    One view is drawn per image (a crop and a flip, no colour augmentation, as the official code), then split
    into L and ab on the device (colour.rgb_to_lab, float32). The L encoder is the run's encoder and is the one
    exported: it sees the neutral grey of each pixel's lightness in all three channels, normalised with the
    encoder's mean and std like colorization's encoder, so it takes RGB images like every sslcli encoder (a
    colour image's colour is information it never saw). The ab encoder is the same architecture with a
    2-channel first convolution (two_channel_copy), fed a and b normalised as the official code does; it
    trains with the run and is not exported. The paper's linear probe concatenates both encoders' features
    (and the paper's ResNets are half width); sslcli probes the L encoder alone.
    """

    def __init__(self, cfg: CMCConfig, encoder: nn.Module, feature_dim: int, budget: Budget):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.ab_encoder = two_channel_copy(encoder)
        self.pixels = Pixels(encoder)
        self.head_l = nn.Linear(feature_dim, cfg.embedding_dim)
        self.head_ab = nn.Linear(feature_dim, cfg.embedding_dim)
        self.register_buffer("ab_mean", torch.tensor(AB_MEAN).view(1, 2, 1, 1), persistent=False)
        self.register_buffer("ab_std", torch.tensor(AB_STD).view(1, 2, 1, 1), persistent=False)
        if cfg.negatives == "bank":
            self.bank_l = MemoryBank(budget.num_images, cfg.embedding_dim, cfg.bank_momentum, "cmc")
            self.bank_ab = MemoryBank(budget.num_images, cfg.embedding_dim, cfg.bank_momentum, "cmc")

    def draw(self, n: int, device: torch.device) -> tuple[Tensor | None]:
        """The negatives' draws [n, K] (MemoryBank.draw; None: every entry), the same for both banks, as the
        official code."""
        return (self.bank_l.draw(n, self.cfg.num_negatives, device),)

    @torch.no_grad()
    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """A normalised RGB view -> (the L encoder's input: grey of L in 3 channels, normalised like any view;
        the ab encoder's: a and b normalised), both in the view's dtype and memory format."""
        lab = colour.rgb_to_lab(self.pixels.to_pixels(x))
        grey = colour.lightness_to_grey(lab[:, :1]).expand(-1, 3, -1, -1)
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        l_view = self.pixels.normalise(grey).to(x.dtype).contiguous(memory_format=layout)
        ab_view = ((lab[:, 1:] - self.ab_mean) / self.ab_std).to(x.dtype).contiguous(memory_format=layout)
        return l_view, ab_view

    def forward(self, views: list[Tensor], step: int, indices: Tensor) -> StepOut:
        l_view, ab_view = self.split(views[0])
        h_l, h_ab = self.encoder(l_view), self.ab_encoder(ab_view)
        z_l = F.normalize(self.head_l(h_l).float(), dim=1)
        z_ab = F.normalize(self.head_ab(h_ab).float(), dim=1)
        tau = self.cfg.temperature
        if self.cfg.negatives == "batch":
            # Under torchrun the negatives are the global batch's, with gradients reaching every rank.
            z_l_all, z_ab_all = distributed.gather(z_l), distributed.gather(z_ab)
            l_loss, ab_loss = info_nce(z_l_all, z_ab_all, tau), info_nce(z_ab_all, z_l_all, tau)
        else:
            (draws,) = self.draw(z_l.shape[0], z_l.device)
            # Each view's embedding against the other view's bank (official NCEAverage: out_l uses memory_ab).
            l_loss = bank_loss(self.bank_ab, z_l, indices, draws, tau, self.cfg.loss)
            ab_loss = bank_loss(self.bank_l, z_ab, indices, draws, tau, self.cfg.loss)
            self.bank_l.write(z_l, indices)
            self.bank_ab.write(z_ab, indices)
        loss = l_loss + ab_loss
        return StepOut(loss=loss, logs={"loss": loss.detach(), "l_loss": l_loss.detach(), "ab_loss": ab_loss.detach()},
                       embeddings={"features": (h_l,), "projections": (z_l, z_ab)})
