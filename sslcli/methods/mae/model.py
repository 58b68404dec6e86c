"""MAE: Masked Autoencoders Are Scalable Vision Learners.

He et al. 2021, https://arxiv.org/abs/2111.06377
"""

from __future__ import annotations

import torch
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

from sslcli.errors import UsageError
from sslcli.losses import masked_mse
from sslcli.methods.base import Budget, MethodDefaults, StepOut
from sslcli.methods.mae.config import MAEConfig


class MAE(MethodDefaults, nn.Module):
    """A timm ViT encodes the 25 % of patches kept (per-sample random masking, section 3); a light
    transformer decoder with mask tokens and fixed 2D sin-cos positions reconstructs every patch; the
    loss is the MSE over masked patches only. The encoder is exported untouched, a standard timm ViT.
    """

    def __init__(self, cfg: MAEConfig, encoder: nn.Module, feature_dim: int, budget: Budget):
        super().__init__()
        if not isinstance(encoder, VisionTransformer):
            raise UsageError(f"mae needs a timm ViT encoder (e.g. vit_tiny_patch16_224), not {type(encoder).__name__}; "
                             "set --encoder")
        self.cfg = cfg
        self.encoder = encoder
        self.patch = encoder.patch_embed.patch_size[0]
        grid = encoder.patch_embed.grid_size
        self.decoder_embed = nn.Linear(feature_dim, cfg.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        # Fixed (not learned) sin-cos positions, as in the paper's decoder; prefix tokens get position 0.
        pos = build_sincos2d_pos_embed(list(grid), cfg.decoder_dim).unsqueeze(0)
        self.register_buffer("decoder_pos", pos, persistent=False)
        self.decoder = nn.Sequential(*[Block(cfg.decoder_dim, cfg.decoder_heads, mlp_ratio=4.0, qkv_bias=True)
                                       for _ in range(cfg.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(cfg.decoder_dim)
        channels = encoder.patch_embed.proj.in_channels  # data.channels: 3 for RGB, 1 for greyscale, ...
        self.decoder_pred = nn.Linear(cfg.decoder_dim, self.patch * self.patch * channels)

    def patchify(self, x: Tensor) -> Tensor:
        """[B,C,H,W] -> [B, L, p*p*C], patches in row-major order, pixels (p, q, c) as in the official code."""
        b, c, h, w = x.shape
        p = self.patch
        x = x.reshape(b, c, h // p, p, w // p, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)

    def mask_noise(self, n: int, length: int, device: torch.device) -> Tensor:
        """Uniform noise per patch; its argsort picks the kept patches (tests substitute fixed noise)."""
        return torch.rand(n, length, device=device)

    def random_mask(self, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-sample random masking by argsort of noise [N, L]: kept indices, the restoring permutation, the mask."""
        n, length = noise.shape
        device = noise.device
        keep = max(1, int(round(length * (1 - self.cfg.mask_ratio))))
        shuffle = noise.argsort(dim=1)
        restore = shuffle.argsort(dim=1)
        mask = torch.ones(n, length, device=device)
        mask[:, :keep] = 0
        return shuffle[:, :keep], restore, mask.gather(1, restore)

    def forward(self, views: list[Tensor], step: int) -> StepOut:
        x = views[0]
        enc = self.encoder
        tokens = enc._pos_embed(enc.patch_embed(x))  # [B, prefix + L, D], positions added before masking
        prefix, patches = tokens[:, :enc.num_prefix_tokens], tokens[:, enc.num_prefix_tokens:]
        n, length, dim = patches.shape
        kept, restore, mask = self.random_mask(self.mask_noise(n, length, x.device))
        visible = patches.gather(1, kept.unsqueeze(-1).expand(-1, -1, dim))
        h = enc.norm(enc.blocks(enc.norm_pre(torch.cat([prefix, visible], dim=1))))

        d = self.decoder_embed(h)
        d_prefix, d_visible = d[:, :enc.num_prefix_tokens], d[:, enc.num_prefix_tokens:]
        filler = self.mask_token.to(d.dtype).expand(n, length - d_visible.shape[1], -1)
        full = torch.cat([d_visible, filler], dim=1).gather(1, restore.unsqueeze(-1).expand(-1, -1, d.shape[-1]))
        full = full + self.decoder_pos.to(full.dtype)
        out = self.decoder(torch.cat([d_prefix, full], dim=1))
        pred = self.decoder_pred(self.decoder_norm(out))[:, enc.num_prefix_tokens:]
        loss = masked_mse(pred, self.patchify(x), mask, self.cfg.norm_pix_loss)
        # Features of the visible patches (class token, or their mean without one), one view.
        feature = h[:, 0] if enc.num_prefix_tokens else h.mean(dim=1)
        return StepOut(loss=loss, logs={"loss": loss.detach()}, embeddings={"features": (feature,)})
