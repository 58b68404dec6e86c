"""RotNet: Unsupervised Representation Learning by Predicting Image Rotations.

Gidaris, Singh, Komodakis 2018, https://arxiv.org/abs/1803.07728 (reference code: gidariss/FeatureLearningRotNet)
"""

from __future__ import annotations

from torch import Tensor, nn

from sslcli.methods.base import Budget, MethodDefaults, StepOut
from sslcli.methods.pretext import RotationPretext
from sslcli.methods.rotation.config import RotationConfig


class Rotation(MethodDefaults, nn.Module):
    """Every image of the batch in its 4 rotations (0/90/180/270 degrees) in the same batch, a 4-way
    classifier on the encoder's pooled features, cross-entropy (the paper's eq. 1-4, with all 4
    rotations per image as its section 3.1 recommends)."""

    def __init__(self, cfg: RotationConfig, encoder: nn.Module, feature_dim: int, budget: Budget):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.rotation = RotationPretext(feature_dim, cfg.head_hidden_dim)

    def forward(self, views: list[Tensor], step: int) -> StepOut:
        x = views[0]
        loss, h, accuracy = self.rotation(self.encoder, x)
        # Monitors: the features of the upright copies (the first B rows).
        return StepOut(loss=loss, logs={"loss": loss.detach(), "accuracy": accuracy},
                       embeddings={"features": (h[: x.shape[0]],)})
