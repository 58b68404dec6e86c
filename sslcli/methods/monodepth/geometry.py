"""View synthesis and the photometric losses of Monodepth2 (nianticlabs/monodepth2 layers.py and trainer.py
compute_losses), in torch: depth from disparity, the pose as a 4x4 transform, back-projection of the target's
pixels with their depth, projection into a source frame, SSIM, the edge-aware smoothness, and the per-pixel
minimum reprojection with auto-masking.

Everything here runs in float32 (the callers leave autocast): a bf16 warp would move pixels by whole bf16 steps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

SSIM_C1, SSIM_C2 = 0.01**2, 0.03**2


def disp_to_depth(disp: Tensor, min_depth: float, max_depth: float) -> tuple[Tensor, Tensor]:
    """The sigmoid output in [0, 1] -> (scaled disparity in [1/max_depth, 1/min_depth], depth) (layers.py)."""
    min_disp, max_disp = 1 / max_depth, 1 / min_depth
    scaled = min_disp + (max_disp - min_disp) * disp
    return scaled, 1 / scaled


def skew(v: Tensor) -> Tensor:
    """[B, 3] -> the [B, 3, 3] cross-product matrices."""
    zero = torch.zeros_like(v[:, 0])
    x, y, z = v.unbind(1)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=1).view(-1, 3, 3)


def rotation_from_axisangle(axisangle: Tensor) -> Tensor:
    """[B, 3] axis * angle -> [B, 3, 3] rotation: the exponential of the cross-product matrix, which is Rodrigues'
    formula (layers.py rot_from_axisangle writes it out), with a gradient at the zero rotation as well."""
    return torch.linalg.matrix_exp(skew(axisangle))


def transformation_from_parameters(axisangle: Tensor, translation: Tensor, invert: bool = False) -> Tensor:
    """[B, 3] axis-angle and [B, 3] translation -> [B, 4, 4] T = [R | t] (layers.py): with `invert`, the inverse
    R^T [I | -t], used for the pose from frame t-1, which the pose network predicts with the frames in time order."""
    rotation = rotation_from_axisangle(axisangle)
    t = translation
    if invert:
        rotation, t = rotation.transpose(1, 2), -t
    b = axisangle.shape[0]
    out = torch.zeros(b, 4, 4, dtype=axisangle.dtype, device=axisangle.device)
    out[:, 3, 3] = 1
    if invert:  # R @ T(t): rotate after translating
        out[:, :3, :3] = rotation
        out[:, :3, 3] = (rotation @ t.unsqueeze(-1)).squeeze(-1)
    else:  # T(t) @ R
        out[:, :3, :3] = rotation
        out[:, :3, 3] = t
    return out


def intrinsics(height: int, width: int, fov_degrees: float, given: tuple[float, float, float, float] | None,
               device: torch.device | None = None) -> Tensor:
    """[4, 4] K of the frames. `given`: (fx, fy, cx, cy) as fractions of the width and height (Monodepth2's
    normalised KITTI K is (0.58, 1.92, 0.5, 0.5)); otherwise a pinhole camera with square pixels whose horizontal
    field of view is fov_degrees, centred."""
    if given is not None:
        fx, fy, cx, cy = given[0] * width, given[1] * height, given[2] * width, given[3] * height
    else:
        fx = fy = (width / 2) / math.tan(math.radians(fov_degrees) / 2)
        cx, cy = width / 2, height / 2
    k = torch.eye(4, device=device)
    k[0, 0], k[1, 1], k[0, 2], k[1, 2] = fx, fy, cx, cy
    return k


def pixel_grid(height: int, width: int, device: torch.device) -> Tensor:
    """[3, H*W] homogeneous pixel coordinates (x, y, 1), x along the width (BackprojectDepth's pix_coords)."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float32),
                            torch.arange(width, device=device, dtype=torch.float32), indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten(), torch.ones(height * width, device=device)])


def backproject(depth: Tensor, inv_k: Tensor) -> Tensor:
    """[B, 1, H, W] depth -> [B, 4, H*W] homogeneous camera points (layers.py BackprojectDepth)."""
    b, _, h, w = depth.shape
    rays = inv_k[:3, :3] @ pixel_grid(h, w, depth.device)  # [3, H*W]
    points = depth.view(b, 1, -1) * rays.unsqueeze(0)
    return torch.cat([points, torch.ones_like(points[:, :1])], dim=1)


def project(points: Tensor, k: Tensor, pose: Tensor, height: int, width: int, eps: float = 1e-7) -> Tensor:
    """[B, 4, H*W] points of the target camera -> [B, H, W, 2] sampling grid in the source frame, in
    grid_sample's [-1, 1] (layers.py Project3D: P = K T, pixels / (W - 1), (H - 1))."""
    p = (k.unsqueeze(0) @ pose)[:, :3, :]
    cam = p @ points
    pix = cam[:, :2] / (cam[:, 2:3] + eps)
    pix = pix.view(-1, 2, height, width).permute(0, 2, 3, 1)
    scale = torch.tensor([width - 1, height - 1], dtype=pix.dtype, device=pix.device)
    return (pix / scale - 0.5) * 2


def warp(source: Tensor, depth: Tensor, pose: Tensor, k: Tensor, inv_k: Tensor) -> Tensor:
    """The source frame [B, C, H, W] resampled at the target's pixels: each target pixel back-projected with its
    depth, moved by `pose` (target camera -> source camera), projected with K (bilinear, border padding as
    Monodepth2; align_corners=True, the convention of the (W - 1) normalisation, so the identity is exact)."""
    h, w = source.shape[-2:]
    grid = project(backproject(depth, inv_k), k, pose, h, w)
    return F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=True)


def ssim_distance(x: Tensor, y: Tensor) -> Tensor:
    """Per-pixel (1 - SSIM) / 2 in [0, 1] over 3x3 windows of reflection-padded images (layers.py SSIM, its
    average pools as F.avg_pool2d)."""
    x, y = F.pad(x, (1, 1, 1, 1), mode="reflect"), F.pad(y, (1, 1, 1, 1), mode="reflect")
    mu_x, mu_y = F.avg_pool2d(x, 3, 1), F.avg_pool2d(y, 3, 1)
    sigma_x = F.avg_pool2d(x * x, 3, 1) - mu_x**2
    sigma_y = F.avg_pool2d(y * y, 3, 1) - mu_y**2
    sigma_xy = F.avg_pool2d(x * y, 3, 1) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + SSIM_C1) * (2 * sigma_xy + SSIM_C2)
    denominator = (mu_x**2 + mu_y**2 + SSIM_C1) * (sigma_x + sigma_y + SSIM_C2)
    return ((1 - numerator / denominator) / 2).clamp(0, 1)


def photometric_error(pred: Tensor, target: Tensor, ssim_weight: float = 0.85) -> Tensor:
    """[B, 1, H, W]: alpha (1 - SSIM) / 2 + (1 - alpha) |pred - target|, channel-averaged (trainer.py
    compute_reprojection_loss, alpha = 0.85)."""
    l1 = (target - pred).abs().mean(1, keepdim=True)
    if ssim_weight == 0:
        return l1
    return ssim_weight * ssim_distance(pred, target).mean(1, keepdim=True) + (1 - ssim_weight) * l1


def smoothness(disp: Tensor, image: Tensor) -> Tensor:
    """Edge-aware smoothness of a disparity map [B, 1, h, w] with the image [B, C, h, w] (layers.py
    get_smooth_loss): disparity gradients, down-weighted by exp(-|image gradient|)."""
    grad_disp_x = (disp[:, :, :, :-1] - disp[:, :, :, 1:]).abs()
    grad_disp_y = (disp[:, :, :-1, :] - disp[:, :, 1:, :]).abs()
    grad_img_x = (image[:, :, :, :-1] - image[:, :, :, 1:]).abs().mean(1, keepdim=True)
    grad_img_y = (image[:, :, :-1, :] - image[:, :, 1:, :]).abs().mean(1, keepdim=True)
    x = (grad_disp_x * torch.exp(-grad_img_x)).mean() if disp.shape[-1] > 1 else disp.new_zeros(())
    y = (grad_disp_y * torch.exp(-grad_img_y)).mean() if disp.shape[-2] > 1 else disp.new_zeros(())
    return x + y


def mean_normalised(disp: Tensor) -> Tensor:
    """Disparity over its per-image mean (Monodepth2: the smoothness term then cannot shrink the depth scale)."""
    return disp / (disp.mean((2, 3), keepdim=True) + 1e-7)


def min_reprojection(reprojected: list[Tensor], identity: list[Tensor] | None,
                     tie_noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Monodepth2's per-pixel minimum over the source frames' reprojection errors, each [B, 1, H, W]; with
    auto-masking the unwarped sources' errors (plus the tiny tie-breaking noise, [B, S, H, W]) compete too, and a
    pixel where one of them wins (static scene, or an object moving with the camera) is masked out. Returns (the
    per-pixel loss [B, H, W], the mask of pixels kept [B, H, W])."""
    reproj = torch.cat(reprojected, dim=1)
    if identity is None:
        return reproj.min(1).values, torch.ones_like(reproj[:, 0])
    ident = torch.cat(identity, dim=1)
    if tie_noise is not None:
        ident = ident + tie_noise * 1e-5
    values, index = torch.cat([ident, reproj], dim=1).min(1)
    return values, (index >= ident.shape[1]).float()
