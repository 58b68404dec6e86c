"""What may shape an encoder: the timm architecture arguments a spec or an encoder file's metadata can pass to
`timm.create_model`, and the input sizes a run can use. Torch-free, so the CLI checks a file before torch loads.

The arguments are an allow-list of architecture settings. timm's create_model also takes arguments that load
files or download weights (checkpoint_path, pretrained, pretrained_cfg_overlay with a file or URL): an encoder
file's metadata must never choose what gets opened, so anything outside the list is refused with one line
before timm sees it, and no string value may name a path or an address.
"""

from __future__ import annotations

import re
from typing import Any

# timm's architecture arguments (ResNet, ViT, ConvNeXt, EfficientNet and the other families' __init__):
# layout, widths, depths, norms, activations, dropouts, input size and channels.
ARCHITECTURE_KWARGS = frozenset({
    "act_layer", "attn_drop_rate", "avg_down", "base_width", "block_reduce_first", "cardinality", "channels",
    "class_token", "conv_mlp", "depth", "depths", "dims", "down_kernel_size", "drop_block_rate", "drop_path_rate",
    "drop_rate", "dynamic_img_pad", "dynamic_img_size", "embed_dim", "embed_dims", "fc_norm", "final_norm",
    "fix_init", "global_pool", "head_hidden_size", "img_size", "in_chans", "init_values", "kernel_sizes",
    "layer_scale_init_value", "layers", "ls_init_value", "mlp_ratio", "no_embed_class", "norm_layer", "num_features",
    "num_heads", "output_stride", "patch_drop_rate", "patch_size", "pos_drop_rate", "pos_embed", "pre_norm",
    "proj_drop_rate", "qk_norm", "qkv_bias", "reg_tokens", "replace_stem_pool", "stem_type", "stem_width",
    "weight_init", "width_multiplier", "zero_init_last",
})
# Arguments that load weights or files, named in the refusal.
LOADING_KWARGS = frozenset({"pretrained", "checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay",
                            "pretrained_strict", "cache_dir", "features_only", "out_indices"})
MAX_CHANNELS = 64  # data.channels: a multispectral stack has tens of bands; more is a wrong axis
# data.interpolation: the resampling filters Pillow, torchvision and F.interpolate all have (timm's pretrained_cfg
# uses bilinear and bicubic).
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
MAX_IMAGE_SIZE = 2048  # px; a larger training crop is a typo (a 100000 px side needs 30 GB per image)

_NAME = re.compile(r"^[A-Za-z0-9_.+-]*$")  # a string value is a name (groupnorm1, gelu, avg), never a path or URL


def encoder_kwargs_problem(kwargs: Any) -> str | None:
    """Why these timm arguments cannot shape an encoder (None when they can)."""
    if not isinstance(kwargs, dict):
        return f"encoder kwargs must be a table of timm architecture arguments, got {type(kwargs).__name__}"
    for key, value in kwargs.items():
        # Checked against the allow-list first: drop_path_rate names a path but loads nothing.
        loads = key in LOADING_KWARGS or (key not in ARCHITECTURE_KWARGS and any(
            word in str(key).lower() for word in ("path", "url", "file", "pretrained")))
        if loads:
            return (f"encoder kwargs '{key}' would make timm load weights or a file; sslcli never lets an encoder's "
                    "settings choose what gets opened (pretrained weights have their own option)")
        if key not in ARCHITECTURE_KWARGS:
            return (f"encoder kwargs '{key}' is not a timm architecture argument sslcli passes on; allowed: "
                    f"{', '.join(sorted(ARCHITECTURE_KWARGS))}")
        if not _plain(value):
            return f"encoder kwargs '{key}' = {value!r}: a value must be a number, a boolean or a plain name"
        if key == "img_size" and isinstance(value, int) and image_size_problem(value):
            return f"encoder kwargs 'img_size': {image_size_problem(value)}"
    return None


def _plain(value: Any) -> bool:
    if isinstance(value, str):
        return bool(_NAME.match(value)) and len(value) <= 64
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float))


def image_size_problem(size: Any) -> str | None:
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= MAX_IMAGE_SIZE:
        return f"image size {size!r} is not a side in px from 1 to {MAX_IMAGE_SIZE}"
    return None


# ---------------------------------------------------------------- where starting weights come from

INIT_KINDS = ("pretrained", "hf-hub", "local-dir", "file")
INIT_FORMS = ("pretrained (timm's weights for the encoder name), pretrained:NAME, hf-hub:ORG/NAME, "
              "local-dir:DIR (config.json + model.safetensors) or a .safetensors FILE")


def split_init(ref: str) -> tuple[str, str]:
    """(kind, what) of a weights reference: pretrained[:NAME], hf-hub:ORG/NAME, local-dir:DIR or a file path.
    Torch-free, so a spec with a malformed reference is refused before anything loads."""
    if ref == "pretrained":
        return "pretrained", ""
    for kind in ("pretrained", "hf-hub", "local-dir"):
        if ref.startswith(f"{kind}:"):
            what = ref[len(kind) + 1:]
            if not what:
                raise ValueError(f"'{ref}' names no {'model' if kind != 'local-dir' else 'folder'}; use {INIT_FORMS}")
            if kind == "hf-hub" and not re.fullmatch(r"[\w.-]+/[\w.-]+(@[\w./-]+)?", what):
                raise ValueError(f"'{ref}': a Hugging Face Hub model is hf-hub:ORG/NAME")
            return kind, what
    if not ref:
        raise ValueError(f"an empty weights reference; use {INIT_FORMS}")
    return "file", ref
