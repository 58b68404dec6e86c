"""DINOv2: Learning Robust Visual Features without Supervision.

Oquab et al. 2023, https://arxiv.org/abs/2304.07193 (reference code: facebookresearch/dinov2, ssl_meta_arch.py)
"""

from __future__ import annotations

import math

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from sslcli import distributed
from sslcli.errors import UsageError
from sslcli.heads import DINOHead
from sslcli.losses import ibot_patch_loss, koleo_loss, sinkhorn, sinkhorn_dino_loss
from sslcli.methods.base import (
    Budget,
    MethodDefaults,
    StepOut,
    drop_gradients,
    teacher_temperatures,
    views_by_size,
)
from sslcli.methods.config_base import AsymmetricViews
from sslcli.methods.dinov2.config import DINOv2Config
from sslcli.views import ViewConfig

# MaskingGenerator's block shape (dinov2/data/masking.py, from BEiT): at least 4 patches, aspect 0.3 to 1/0.3,
# a crop gives up after 10 blocks in a row that do not fit.
MIN_BLOCK, MIN_ASPECT, MAX_TRIES = 4, 0.3, 10


def mask_targets(crops: int, patches: int, probability: float, ratio: tuple[float, float],
                 device: torch.device) -> tuple[Tensor, int]:
    """How many patches each crop masks (collate_data_and_cast): int(crops * probability) crops, their ratios
    stratified over `ratio` (the i-th of them draws its ratio in the i-th of as many equal slices), the others
    none, in a random order; and a bound on the patches they mask together, known on the host before drawing
    (the size of the padded buffer of masked patches, DINOv2's `upperbound`, plus one per masked crop so that
    rounding on the device never puts a target above it; at least 1, so the iBOT head always takes part)."""
    masked = int(crops * probability)
    low, high = ratio
    # The slices' edges, computed on the device (no host-to-device copy in the step).
    edges = low + (high - low) * torch.arange(masked + 1, device=device, dtype=torch.float32) / max(masked, 1)
    draws = edges[:-1] + (edges[1:] - edges[:-1]) * torch.rand(masked, device=device)
    targets = torch.cat([(patches * draws).floor(), torch.zeros(crops - masked, device=device)])
    bound = sum(int(patches * (low + (high - low) * (i + 1) / masked)) + 1 for i in range(masked))
    return targets[torch.randperm(crops, device=device)], max(1, min(bound, crops * patches))


def block_masks(targets: Tensor, height: int, width: int, max_block: float) -> Tensor:
    """DINOv2's block-wise masks (MaskingGenerator), drawn for every crop at once on the device: each crop adds
    random rectangles (area uniform between 4 patches and what it still may mask, at most max_block; log-uniform
    aspect in [0.3, 1/0.3]; a random position) that add at least one new patch and no more than it still may
    mask, until it reaches its target or 10 rectangles in a row fail. The rounds are a fixed number, 20 + twice
    the grid's side: more than the 35 tries the reference needed at most in 4,000 crops of a 16 x 16 grid (a
    measure of the reference code), so no host has to look at the masks to know when to stop.

    targets [C] patches per crop -> masks [C, height, width] (bool)."""
    crops, device = targets.shape[0], targets.device
    mask = torch.zeros(crops, height, width, dtype=torch.bool, device=device)
    count = torch.zeros(crops, device=device)
    fails = torch.zeros(crops, device=device)
    rows = torch.arange(height, device=device).view(1, -1, 1)
    cols = torch.arange(width, device=device).view(1, 1, -1)
    log_low, log_high = math.log(MIN_ASPECT), -math.log(MIN_ASPECT)
    targets = targets.float()
    for _ in range(20 + 2 * max(height, width)):
        u = torch.rand(crops, 4, device=device)
        cap = (targets - count).clamp(max=max_block)
        area = MIN_BLOCK + (cap - MIN_BLOCK) * u[:, 0]  # random.uniform(4, cap), also when cap < 4
        aspect = torch.exp(log_low + (log_high - log_low) * u[:, 1])
        h = torch.round(torch.sqrt(area * aspect))
        w = torch.round(torch.sqrt(area / aspect))
        fits = (h < height) & (w < width)
        top = torch.minimum((u[:, 2] * (height - h + 1)).floor(), height - h).view(-1, 1, 1)
        left = torch.minimum((u[:, 3] * (width - w + 1)).floor(), width - w).view(-1, 1, 1)
        rect = (rows >= top) & (rows < top + h.view(-1, 1, 1)) & (cols >= left) & (cols < left + w.view(-1, 1, 1))
        new = (rect & ~mask).sum(dim=(1, 2)).float()
        accept = fits & (new > 0) & (new <= cap) & (fails < MAX_TRIES)
        mask |= rect & accept.view(-1, 1, 1)
        count += new * accept
        fails = torch.where(accept, torch.zeros_like(fails), fails + 1)
    return mask


def random_masks(targets: Tensor, height: int, width: int) -> Tensor:
    """Exactly targets[c] patches of crop c, uniformly at random (iBOT's 'rand' masking)."""
    crops, patches = targets.shape[0], height * width
    ranks = torch.rand(crops, patches, device=targets.device).argsort(dim=1).argsort(dim=1)
    return (ranks < targets.view(-1, 1)).view(crops, height, width)


class DINOv2(MethodDefaults, nn.Module):
    """DINO's class-token self-distillation plus iBOT's masked-patch loss, with Sinkhorn-Knopp centering and the
    KoLeo regulariser (paper section 4). A student ViT sees the two global crops with some patches replaced by a
    learned mask token, and the local crops; an EMA teacher sees the global crops whole. The student's class
    token of every crop predicts the teacher's of the other global crops (DINO head); its masked patch tokens
    predict the teacher's tokens of those patches (iBOT head, separate or DINO's). The teacher's backbone is
    exported, as DINOv2 evaluates and releases it (its train.py do_test saves the teacher).
    """

    def __init__(self, cfg: DINOv2Config, encoder: nn.Module, feature_dim: int, budget: Budget):
        super().__init__()
        if not isinstance(encoder, VisionTransformer):
            raise UsageError(f"dinov2 needs a timm ViT encoder (e.g. vit_tiny_patch16_224), not "
                             f"{type(encoder).__name__}; set --encoder")
        self.cfg = cfg
        self.encoder = encoder
        self.head = DINOHead(feature_dim, cfg.out_dim, cfg.hidden_dim, cfg.bottleneck_dim,
                             norm_last_layer=cfg.norm_last_layer)
        # Without iBOT (weight 0) there is no iBOT head: a head that gets no gradient would stall DDP.
        self.ibot_head = DINOHead(feature_dim, cfg.ibot_out_dim, cfg.ibot_hidden_dim, cfg.ibot_bottleneck_dim,
                                  norm_last_layer=cfg.norm_last_layer) \
            if cfg.ibot_separate_head and cfg.ibot_weight > 0 else None
        # The learned token that replaces a masked patch's embedding (DinoVisionTransformer.mask_token, zeros).
        self.mask_token = nn.Parameter(torch.zeros(1, feature_dim))
        self.add_momentum_targets({"teacher_encoder": "encoder", "teacher_head": "head",
                                   "teacher_ibot_head": "ibot_head"}, cfg.momentum, cfg.final_momentum,
                                  budget.total_steps)
        self.teacher_temperature = teacher_temperatures(cfg, budget)
        self.frozen = budget.until(cfg.freeze_last_layer_epochs)

    def train(self, mode: bool = True) -> DINOv2:
        """The teacher stays in eval mode (SSLMetaArch.train): drop path or dropout, if the encoder has them,
        act on the student only."""
        super().train(mode)
        for teacher in (self.teacher_encoder, self.teacher_head, self.teacher_ibot_head):
            if teacher is not None:
                teacher.eval()
        return self

    def views(self, augment: ViewConfig) -> list[ViewConfig]:
        patch = self.encoder.patch_embed.patch_size[0]
        size = self.cfg.local_side(augment.size, patch)
        if not self.encoder.patch_embed.dynamic_img_pad:  # timm's patch embedding asserts divisible sizes
            for name, side in (("data.image_size", augment.size), ("method.local_crop_size", size)):
                if side % patch:
                    raise UsageError(f"dinov2: {name} {side} px is not a multiple of the ViT's {patch} px patches; "
                                     f"set {name} to a multiple of {patch}")
        return self.cfg.with_local_crops(AsymmetricViews.views(self.cfg, augment), size)

    def draw_masks(self, images: int, height: int, width: int, device: torch.device) -> tuple[Tensor, int]:
        """Masks [images, 2, height, width] of both global crops of every image, and the most patches they mask
        (known on the host). Tests substitute one global draw (a rank's rows of it, and its bound)."""
        crops, patches = 2 * images, height * width
        targets, bound = mask_targets(crops, patches, self.cfg.mask_probability, self.cfg.mask_ratio, device)
        if self.cfg.masking == "block":
            # train.py: MaskingGenerator(max_num_patches=0.5 * patches), one block covers at most half the grid.
            masks = block_masks(targets, height, width, 0.5 * patches)
        else:
            masks = random_masks(targets, height, width)
        return masks.view(images, 2, height, width), bound

    def _tokens(self, encoder: nn.Module, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """timm's forward_features, with the masked patch embeddings replaced by the mask token before the
        positions are added (DinoVisionTransformer.prepare_tokens_with_masks)."""
        if mask is None:
            return encoder.forward_features(x)
        tokens = encoder.patch_embed(x)  # [B, H, W, D] with dynamic_img_size, else [B, H * W, D]
        tokens = torch.where(mask.view(*tokens.shape[:-1], 1), self.mask_token.to(tokens.dtype), tokens)
        tokens = encoder.norm_pre(encoder.patch_drop(encoder._pos_embed(tokens)))
        return encoder.norm(encoder.blocks(tokens))

    def forward(self, views: list[Tensor], step: int) -> StepOut:
        cfg, enc = self.cfg, self.encoder
        n = views[0].shape[0]
        global_x = torch.cat(views[:2])
        grid = enc.patch_embed.dynamic_feat_size(global_x.shape[-2:]) if enc.dynamic_img_size \
            else enc.patch_embed.grid_size
        masks, bound = self.draw_masks(n, grid[0], grid[1], global_x.device)
        masks = masks.transpose(0, 1).reshape(2 * n, grid[0] * grid[1])  # crop-major, as the views are stacked
        # The masked patches' rows in a buffer of `bound` rows, masked ones first (padding after): a stable sort
        # instead of nonzero(), so no shape depends on the data and nothing waits for the device.
        index = masks.reshape(-1).to(torch.uint8).sort(descending=True, stable=True).indices[:bound]
        valid = masks.reshape(-1)[index]
        do_ibot = cfg.ibot_weight > 0
        ibot_head = self.ibot_head if self.ibot_head is not None else self.head
        teacher_ibot_head = self.teacher_ibot_head if self.teacher_ibot_head is not None else self.teacher_head
        temperature = self.teacher_temperature.at(step)

        with torch.no_grad():
            t_tokens = self._tokens(self.teacher_encoder, global_x)
            teacher_cls = self.teacher_head(self.teacher_encoder.forward_head(t_tokens, pre_logits=True)).float()
            if do_ibot:
                t_patches = t_tokens[:, self.teacher_encoder.num_prefix_tokens:].flatten(0, 1)[index]
                targets = sinkhorn(teacher_ibot_head(t_patches).float(), temperature, cfg.sinkhorn_iterations,
                                   valid=valid)

        s_global = self._tokens(enc, global_x, masks)
        s_cls = enc.forward_head(s_global, pre_logits=True)  # [2n, D]: the class token for a token-pooled ViT
        local = [enc.forward_head(enc.forward_features(torch.cat(g)), pre_logits=True)
                 for g in views_by_size(views[2:])]
        student = torch.cat([self.head(h) for h in [s_cls, *local]]).chunk(len(views))
        dino = sinkhorn_dino_loss(list(student), list(teacher_cls.chunk(2)), cfg.student_temperature,
                                  temperature, cfg.sinkhorn_iterations)
        loss = dino
        logs = {"dino_loss": dino.detach()}
        if do_ibot:
            s_patches = s_global[:, enc.num_prefix_tokens:].flatten(0, 1)[index]
            ibot = ibot_patch_loss(ibot_head(s_patches), targets, index, masks, cfg.student_temperature)
            loss = loss + cfg.ibot_weight * ibot
            logs["ibot_loss"] = ibot.detach()
        if cfg.koleo_weight > 0:
            # Over each global crop apart (not between two crops of one image), over the global batch: gathered
            # with gradients, so 2 ranks x B images train as one process with 2B (DINOv2 computes it per GPU).
            koleo = sum(koleo_loss(distributed.gather(c)) for c in s_cls.chunk(2))
            loss = loss + cfg.koleo_weight * koleo
            logs["koleo_loss"] = koleo.detach()
        logs["loss"] = loss.detach()
        return StepOut(loss=loss, logs=logs, embeddings={"features": s_cls.chunk(2)})

    def cancel_gradients(self, step: int) -> None:
        """The heads' last layers get no update for the first epoch (DINOv2's last_layer_lr_schedule at 0)."""
        if self.frozen.at(step) > 0.5:
            for head in (self.head, self.ibot_head):
                if head is not None:
                    drop_gradients(head.last_layer)

    def export_encoder(self) -> nn.Module:
        return self.teacher_encoder
