"""The saved depth network of a monodepth run (encoder.safetensors + depth_decoder.safetensors) predicting the
disparity of frames: what the report draws as depth.png."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_bytes
from torch import nn

from sslcli import checkpoint
from sslcli.encoders import EncoderInfo
from sslcli.errors import UsageError
from sslcli.methods.monodepth.model import DEPTH_DECODER_FILE, DEPTH_DECODER_FORMAT
from sslcli.methods.monodepth.networks import DecoderLayout, DepthDecoder, multi_scale_features


def load_depth_network(run_dir: Path) -> tuple[nn.Module, EncoderInfo, DepthDecoder]:
    """(encoder, its info, depth decoder) of a run folder, the decoder checked to belong to the encoder file (its
    sha256) and loaded strictly; one line (UsageError) for a missing, foreign or mismatched file."""
    path = Path(run_dir) / DEPTH_DECODER_FILE
    encoder_path = Path(run_dir) / "encoder.safetensors"
    encoder, info, _ = checkpoint.load_encoder(encoder_path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_bytes(path.read_bytes())
    except (SafetensorError, OSError, ValueError) as exc:
        raise UsageError(f"{path} is not a readable depth decoder ({exc})") from None
    if meta.get("sslcli_format") != DEPTH_DECODER_FORMAT:
        raise UsageError(f"{path} is not a depth decoder sslcli wrote (sslcli_format {meta.get('sslcli_format')!r})")
    if meta.get("encoder_sha256") != hashlib.sha256(encoder_path.read_bytes()).hexdigest():
        raise UsageError(f"{path} belongs to another save of the encoder than {encoder_path}; let the run write "
                         "both again (--resume auto)")
    try:
        decoder = DepthDecoder(DecoderLayout.from_json(meta["layout"]))
        decoder.load_state_dict(state, strict=True)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise UsageError(f"{path}: the weights do not match its layout ({str(exc).splitlines()[0]})") from None
    return encoder, info, decoder


@torch.no_grad()
def predict_disparity(encoder: nn.Module, info: EncoderInfo, decoder: DepthDecoder, frames: torch.Tensor,
                      batch_size: int = 32) -> torch.Tensor:
    """uint8 frames [N, 3, S, S] -> disparity [N, size, size] in (0, 1) at the encoder's training size (the finest
    scale), the frames resized as training resized them."""
    encoder.eval()
    decoder.eval()
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    out = []
    for chunk in frames.split(batch_size):
        x = chunk.float().div(255)
        if x.shape[-1] != info.image_size:
            x = F.interpolate(x, size=(info.image_size, info.image_size), mode="bilinear", antialias=True,
                              align_corners=False)
        x = (x - mean) / std
        out.append(decoder(multi_scale_features(encoder, x), tuple(x.shape[-2:]))[0][:, 0])
    return torch.cat(out)
