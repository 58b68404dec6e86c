"""DIM: Learning deep representations by mutual information estimation and maximization.

Hjelm et al. 2019, https://arxiv.org/abs/1808.06670 (reference code: rdevon/DIM)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslcli import distributed
from sslcli.errors import UsageError
from sslcli.losses import dim_mutual_information, full_precision
from sslcli.methods.base import Budget, MethodDefaults, StepOut
from sslcli.methods.dim.config import DIMConfig
from sslcli.methods.spatial import require_convnet


@full_precision
def pair_scores(u: Tensor, v: Tensor) -> Tensor:
    """T(y_i, M_j at p) = u_i . v_jp for every pair: u [N, E], v [N, P, E] -> [N, N, P], in float32 (under bf16
    autocast the products would be rounded to 8 bits of mantissa)."""
    return torch.einsum("ie,jpe->ijp", u.float(), v.float())


class ScoreNet(nn.Module):
    """The paper's encode-and-dot-product embedding: a two-layer net with batch norm plus a linear shortcut
    (rdevon/DIM's MI1x1ConvNet; on a map, applied at every position, i.e. 1x1 convolutions)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.nonlinear = nn.Sequential(nn.Linear(in_dim, out_dim), nn.BatchNorm1d(out_dim), nn.ReLU(inplace=True),
                                       nn.Linear(out_dim, out_dim))
        self.shortcut = nn.Linear(in_dim, out_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.nonlinear(x) + self.shortcut(x)


class DIM(MethodDefaults, nn.Module):
    """One view through the encoder gives a local feature map M (the output of stage `local_stage`) and,
    further on, the pooled features, which a linear head turns into the global feature y (64-d). y and every
    position of M are embedded by two small nets (u, v) and scored by their dot product: the positives are
    (y_i, M_i at each position), the negatives y_i against every position of every other image's map; the
    mutual-information bound (InfoNCE or JSD) of these scores is maximised (local DIM, weight beta). With
    global_weight (alpha) > 0, y is also scored against each whole map (a 3x3 convolution of M, pooled, then v'),
    the global DIM; with prior_weight (gamma) > 0, a discriminator learns sigmoid(y) from uniform noise and y
    learns to fool it (prior matching), as inpainting's adversarial term: each side's gradient reaches only
    its own parameters.

    Deviations: the global objective pools the convolved map rather than flattening it into the
    discriminator (one head fits every input size); the encoder is any timm ConvNet rather than the paper's
    DCGAN-style or AlexNet-style ones, and its local map is a stage of it (`local_stage`). Under torchrun every
    rank's embeddings are gathered with gradients: the negatives are the global batch's.
    """

    def __init__(self, cfg: DIMConfig, encoder: nn.Module, feature_dim: int, budget: Budget):
        super().__init__()
        require_convnet(encoder, "dim")
        stages = getattr(encoder, "feature_info", None)
        if not stages or -cfg.local_stage > len(stages):
            raise UsageError(f"dim: method.local_stage {cfg.local_stage} is not one of the encoder's "
                             f"{len(stages or [])} stages (-1 .. -{len(stages or [])})")
        self.cfg = cfg
        self.encoder = encoder
        self.local_index = len(stages) + cfg.local_stage
        local_dim = int(stages[self.local_index]["num_chs"])
        self.global_head = nn.Linear(feature_dim, cfg.global_dim)
        self.global_embed = ScoreNet(cfg.global_dim, cfg.score_dim)
        self.local_embed = ScoreNet(local_dim, cfg.score_dim)
        self.map_embed = None
        if cfg.global_weight > 0:
            self.map_embed = nn.Sequential(nn.Conv2d(local_dim, cfg.score_dim, 3, padding=1), nn.ReLU(inplace=True),
                                           nn.AdaptiveAvgPool2d(1), nn.Flatten(), ScoreNet(cfg.score_dim, cfg.score_dim))
        self.prior = None
        if cfg.prior_weight > 0:  # the paper's prior discriminator: 1000 and 200 units
            self.prior = nn.Sequential(nn.Linear(cfg.global_dim, 1000), nn.ReLU(inplace=True), nn.Linear(1000, 200),
                                       nn.ReLU(inplace=True), nn.Linear(200, 1))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(the local map M [B, C, h, w], the pooled features h [B, D], the global feature y [B, G])."""
        final, (local,) = self.encoder.forward_intermediates(x, indices=[self.local_index])
        h = self.encoder.forward_head(final, pre_logits=True)
        return local, h, self.global_head(h)

    def forward(self, views: list[Tensor], step: int) -> StepOut:
        local, h, y = self.encode(views[0])
        u = distributed.gather(self.global_embed(y))  # [N, E]
        n, c = local.shape[:2]
        v = self.local_embed(local.flatten(2).transpose(1, 2).reshape(-1, c)).view(n, -1, u.shape[1])  # [B, P, E]
        v = distributed.gather(v)
        logs: dict[str, Tensor] = {}
        loss = u.new_zeros((), dtype=torch.float32)
        if self.cfg.local_weight > 0:
            local_mi = dim_mutual_information(pair_scores(u, v), self.cfg.estimator)
            loss = loss + self.cfg.local_weight * local_mi
            logs["local"] = local_mi.detach()
        if self.map_embed is not None:
            whole = distributed.gather(self.map_embed(local))  # [N, E]
            global_mi = dim_mutual_information(pair_scores(u, whole[:, None]), self.cfg.estimator)
            loss = loss + self.cfg.global_weight * global_mi
            logs["global"] = global_mi.detach()
        if self.prior is not None:
            fool, discriminate = self.prior_terms(y)
            loss = loss + self.cfg.prior_weight * (fool + discriminate)
            logs.update(prior_fool=fool.detach(), prior_discriminator=discriminate.detach())
        logs["loss"] = loss.detach()
        return StepOut(loss=loss, logs=logs, embeddings={"features": (h,), "projections": (y,)})

    def prior_terms(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """(the encoder's term: sigmoid(y) judged drawn from the prior by a discriminator it cannot change, the
        discriminator's term: uniform noise judged prior and sigmoid(y), detached, judged encoded)."""
        encoded = torch.sigmoid(y.float())
        frozen = {name: p.detach() for name, p in self.prior.named_parameters()}
        fooled = torch.func.functional_call(self.prior, frozen, (encoded,)).float()
        fool = F.binary_cross_entropy_with_logits(fooled, torch.ones_like(fooled))
        noise = torch.rand_like(encoded)  # the global RNG of the device, restored on resume
        on_prior, on_encoded = self.prior(noise).float(), self.prior(encoded.detach()).float()
        discriminate = (F.binary_cross_entropy_with_logits(on_prior, torch.ones_like(on_prior))
                        + F.binary_cross_entropy_with_logits(on_encoded, torch.zeros_like(on_encoded)))
        return fool, discriminate
