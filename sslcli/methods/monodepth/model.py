"""Monodepth2's monocular training (Godard et al. 2019, https://arxiv.org/abs/1806.01260; Monodepth, Godard et
al. 2017, https://arxiv.org/abs/1609.03677), following nianticlabs/monodepth2 trainer.py."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslcli.methods.base import Budget, MethodDefaults, StepOut
from sslcli.methods.monodepth import geometry
from sslcli.methods.monodepth.config import MonodepthConfig
from sslcli.methods.monodepth.networks import (
    DecoderLayout,
    DepthDecoder,
    PoseNet,
    decoder_channels,
    multi_scale_features,
    require_multi_scale,
)
from sslcli.methods.spatial import Pixels

DEPTH_DECODER_FILE = "depth_decoder.safetensors"
DEPTH_DECODER_FORMAT = "sslcli-depth-decoder"
JITTER = 0.2  # Monodepth2's ColorJitter brightness, contrast and saturation range


def colour_jitter(pixels: Tensor, factors: Tensor) -> Tensor:
    """[B, K, 3, H, W] pixels in [0, 1], [B, 3] (brightness, contrast, saturation) factors, the same for the K
    frames of a sample (torchvision's adjust_* formulas, in this fixed order)."""
    f = factors.view(-1, 1, 3, 1, 1, 1).to(pixels.dtype)
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=pixels.dtype, device=pixels.device).view(1, 1, 3, 1, 1)
    x = (pixels * f[:, :, 0]).clamp(0, 1)
    gray = (x * weights).sum(2, keepdim=True)
    x = ((x - gray.mean((3, 4), keepdim=True)) * f[:, :, 1] + gray.mean((3, 4), keepdim=True)).clamp(0, 1)
    gray = (x * weights).sum(2, keepdim=True)
    return ((x - gray) * f[:, :, 2] + gray).clamp(0, 1)


class Monodepth(MethodDefaults, nn.Module):
    """Each sample is frames (t - gap, t, t + gap) of one clip and the other view's frame t of a stereo pair
    (methods/temporal.py NeighbourSampler, StereoSampler). The depth network (the run's encoder and the depth
    decoder) predicts the disparity of frame t at num_scales scales; the pose network predicts the camera motion
    t -> t - gap and t -> t + gap (mono), the stereo pose is the known baseline (stereo); each source frame is
    warped into frame t with the depth and pose, and the loss is the per-pixel minimum of the photometric errors
    (0.85 SSIM + 0.15 L1), auto-masked, averaged over the scales (each upsampled to the input size), plus the
    edge-aware smoothness of the mean-normalised disparity."""

    def __init__(self, cfg: MonodepthConfig, encoder: nn.Module, feature_dim: int, budget: Budget):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        channels = require_multi_scale(encoder)
        self.layout = DecoderLayout(tuple(channels), decoder_channels(cfg.decoder_channels, len(channels)),
                                    min(cfg.num_scales, len(channels)), cfg.min_depth, cfg.max_depth)
        self.decoder = DepthDecoder(self.layout)
        # Stereo alone knows its one pose: no pose network (its parameters would get no gradient).
        self.pose = PoseNet(cfg.pose_encoder, cfg.pose_width) if cfg.sources != "stereo" else None
        self.pixels = Pixels(encoder)

    def draw(self, n: int, height: int, width: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """A batch's random draws, from the RNG the checkpoints keep: (flip [n], colour factors [n, 3], the
        auto-mask's tie-breaking noise [n, 3, H, W], one map per source frame); one method, so torchrun tests can
        give each rank its rows of one global draw."""
        flip = torch.rand(n, device=device) < 0.5
        jittered = torch.rand(n, 1, device=device) < 0.5
        factors = torch.where(jittered, 1 + JITTER * (2 * torch.rand(n, 3, device=device) - 1), 1.0)
        noise = torch.randn(n, 3, height, width, device=device)
        if not self.cfg.augment:
            flip, factors = torch.zeros_like(flip), torch.ones_like(factors)
        return flip, factors, noise

    def depth(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """Normalised frames [B, 3, H, W] -> (disparities in (0, 1) finest first, the pooled encoder features)."""
        features = multi_scale_features(self.encoder, x)
        pooled = self.encoder.forward_head(features[-1], pre_logits=True)
        return self.decoder(features, tuple(x.shape[-2:])), pooled

    def forward(self, views: list[Tensor], step: int) -> StepOut:
        frames = views[0]  # [B, 4, 3, H, W]: t - gap, t, t + gap, the other view's t (stereo)
        b, k, _, h, w = frames.shape
        flip, factors, noise = self.draw(b, h, w, frames.device)
        frames = torch.where(flip.view(b, 1, 1, 1, 1), frames.flip(-1), frames)
        pixels = self.pixels.to_pixels(frames.flatten(0, 1)).unflatten(0, (b, k))
        inputs = self.pixels.normalise(colour_jitter(pixels, factors).flatten(0, 1)).unflatten(0, (b, k))
        disps, pooled = self.depth(inputs[:, 1])
        motions = ((self.pose(inputs[:, 0], inputs[:, 1]), self.pose(inputs[:, 1], inputs[:, 2]))
                   if self.pose is not None else ())
        sources, poses, logs = [], [], {}
        with torch.autocast(device_type=frames.device.type, enabled=False):
            if motions:
                # Poses from the target to each neighbour: the pose network sees the two frames in time order,
                # and the motion t-1 -> t is inverted (trainer.py predict_poses with pose_model_input "pairs").
                before = geometry.transformation_from_parameters(*[v.float() for v in motions[0]], invert=True)
                after = geometry.transformation_from_parameters(*[v.float() for v in motions[1]])
                sources += [pixels[:, 0], pixels[:, 2]]
                poses += [before, after]
                logs["translation"] = after[:, :3, 3].detach().norm(dim=1).mean()
            if self.cfg.sources != "mono":
                sources.append(pixels[:, 3])
                poses.append(self.stereo_pose(flip))
            loss, loss_logs = self.losses(pixels[:, 1].float(), [s.float() for s in sources],
                                          [d.float() for d in disps], poses, noise[:, :len(sources)].float())
        return StepOut(loss=loss, logs={**loss_logs, **logs}, embeddings={"features": (pooled,)})

    def stereo_pose(self, flip: Tensor) -> Tensor:
        """[B, 4, 4] the left camera (the target) -> the right one: x - baseline; a flipped pair swaps the sides,
        +baseline (Monodepth2's stereo_T, side_sign and baseline_sign)."""
        pose = torch.eye(4, device=flip.device).repeat(flip.shape[0], 1, 1)
        pose[:, 0, 3] = torch.where(flip, 1.0, -1.0) * self.cfg.stereo_baseline
        return pose

    def losses(self, target: Tensor, sources: list[Tensor], disps: list[Tensor], poses: list[Tensor],
               noise: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """trainer.py compute_losses: for each scale, the sources warped with the disparity upsampled to the input
        size and their pose (target -> source), the per-pixel minimum photometric error (auto-masked), plus
        smoothness / 2^scale; the mean over the scales."""
        cfg = self.cfg
        h, w = target.shape[-2:]
        k = geometry.intrinsics(h, w, cfg.fov_degrees, cfg.intrinsics, target.device)
        inv_k = torch.linalg.inv(k)
        identity = [geometry.photometric_error(s, target, cfg.ssim_weight) for s in sources] if cfg.automask else None
        total = target.new_zeros(())
        logs: dict[str, Tensor] = {}
        for scale, disp in enumerate(disps):
            full = F.interpolate(disp, size=(h, w), mode="bilinear", align_corners=False)
            depth = geometry.disp_to_depth(full, cfg.min_depth, cfg.max_depth)[1]
            reprojected = [geometry.photometric_error(geometry.warp(s, depth, pose, k, inv_k), target, cfg.ssim_weight)
                           for s, pose in zip(sources, poses, strict=True)]
            per_pixel, kept = geometry.min_reprojection(reprojected, identity, noise)
            colour = F.interpolate(target, size=disp.shape[-2:], mode="area")
            smooth = geometry.smoothness(geometry.mean_normalised(disp), colour)
            total = total + per_pixel.mean() + cfg.smoothness_weight * smooth / 2**scale
            if scale == 0:
                logs.update(photometric=per_pixel.detach().mean(), smoothness=smooth.detach(),
                            automask_kept=kept.mean(), mean_depth=depth.detach().mean())
        loss = total / len(disps)
        logs["loss"] = loss.detach()
        return loss, logs

    def export_files(self) -> dict[str, tuple[nn.Module, dict[str, str]]]:
        """The depth decoder beside the encoder (the depth network is the two): its layout rebuilds it."""
        return {DEPTH_DECODER_FILE: (self.decoder, {"sslcli_format": DEPTH_DECODER_FORMAT,
                                                    "layout": self.layout.to_json()})}
