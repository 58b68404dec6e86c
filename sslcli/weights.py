"""Starting weights that sslcli did not train: timm's pretrained weights (through its Hugging Face Hub cache),
a Hub model (hf-hub:ORG/NAME), a timm local-dir folder (config.json + model.safetensors) or a .safetensors
state dict on disk (timm's or torchvision's ResNet layout), and sslcli's own encoder files.

Only safetensors are read (a pickled pytorch_model.bin is refused, never unpickled). The Hub is asked only
when the file is not already in the local cache; a cached file is used without any network request. Every
source is recorded (kind, reference, file, sha256) so a run says what it started from.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from torch import nn

from sslcli import console
from sslcli.encoder_args import INTERPOLATIONS, encoder_kwargs_problem, split_init
from sslcli.encoders import (
    EncoderInfo,
    accepts_dynamic_size,
    apply_small_stem,
    create,
    is_resnet,
    normalisation,
)
from sslcli.errors import RunError, UsageError
from sslcli.headers import ENCODER_FORMAT, read_metadata

WEIGHTS_FILE = "model.safetensors"
UNREACHABLE = ("not in the local cache and the Hugging Face Hub is unreachable; pass --init local-dir:DIR or "
               "a .safetensors FILE (or connect once to fill the cache)")


@dataclass(frozen=True)
class WeightsSource:
    """Where starting weights come from, and what the source says about the model they fit."""

    kind: str  # pretrained | hf-hub | local-dir | file | sslcli (an encoder file written by sslcli)
    ref: str  # as the user gave it
    file: Path  # the safetensors file read
    sha256: str
    architecture: str | None  # timm name (None: a plain state dict, whose architecture the run names)
    model_args: dict[str, Any] = field(default_factory=dict)
    pretrained_cfg: dict[str, Any] = field(default_factory=dict)  # mean, std, input_size, interpolation
    small_stem: bool = False  # the weights were trained with sslcli's small-image stem

    def record(self) -> dict[str, Any]:
        """What a run's metadata, spec.json and resume fingerprint keep of it."""
        return {"kind": self.kind, "ref": self.ref, "file": str(Path(self.file).resolve()), "sha256": self.sha256,
                "architecture": self.architecture}

    @property
    def image_size(self) -> int | None:
        size = self.pretrained_cfg.get("input_size")
        return int(size[-1]) if isinstance(size, (list, tuple)) and size else None

    @property
    def interpolation(self) -> str | None:
        """The resampling filter the weights were trained with, when their pretrained_cfg names one sslcli has."""
        value = self.pretrained_cfg.get("interpolation")
        return value if value in INTERPOLATIONS else None


# ---------------------------------------------------------------- locating the file


@functools.lru_cache(maxsize=16)
def _sha256(path: Path, size: int, mtime: float) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    stat = path.stat()
    return _sha256(path.resolve(), stat.st_size, stat.st_mtime)


def _hub_file(repo_id: str, filename: str, ref: str) -> Path:
    """A file of a Hub repository: from the local cache without any request when it is there, else downloaded
    (the user asked for Hub weights). Unreachable: one line, exit 1; a wrong name: one line, exit 2."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo, _, revision = repo_id.partition("@")
    cached = try_to_load_from_cache(repo, filename, revision=revision or None)
    if isinstance(cached, str):
        return Path(cached)
    try:
        return Path(hf_hub_download(repo, filename, revision=revision or None))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        raise RunError(f"{ref}: {repo}/{filename} is {UNREACHABLE}") from None
    except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError):
        raise UsageError(f"{ref}: the Hub has no model {repo_id} that can be read without a login "
                         "(a typo, or a private or gated repository)") from None
    except EntryNotFoundError:
        raise UsageError(f"{ref}: the Hub model {repo} has no {filename}; sslcli reads safetensors only (a "
                         "pytorch_model.bin is a pickle): convert it, or pass a .safetensors FILE") from None
    except (HfHubHTTPError, OSError) as exc:  # connection refused, DNS, proxy, 5xx
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunError(f"{ref}: {repo}/{filename} is {UNREACHABLE} ({first})") from None


def _json_file(path: Path, ref: str) -> dict[str, Any]:
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{ref}: cannot read {path} ({exc})") from None
    if not isinstance(config, dict) or not isinstance(config.get("architecture"), str):
        raise UsageError(f"{ref}: {path} is not a timm model config (it names no 'architecture')")
    return config


def _from_config(kind: str, ref: str, config: dict[str, Any], weights: Path) -> WeightsSource:
    args = config.get("model_args") or {}
    problem = encoder_kwargs_problem(args)
    if problem:
        raise UsageError(f"{ref}: its config.json's model_args are refused: {problem}")
    own = config.get("sslcli") if isinstance(config.get("sslcli"), dict) else {}
    return WeightsSource(kind, ref, weights, sha256_of(weights), config["architecture"], dict(args),
                         dict(config.get("pretrained_cfg") or {}), bool(own.get("small_stem", False)))


def locate(ref: str, encoder_name: str | None = None) -> WeightsSource:
    """Find the weights a reference names (the Hub only when they are not cached) and what they fit.

    encoder_name: the run's timm name, which `pretrained` means and a plain state dict is loaded into."""
    try:
        kind, what = split_init(ref)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if kind == "pretrained":
        return _timm_pretrained(ref, what or encoder_name)
    if kind == "hf-hub":
        config = _json_file(_hub_file(what, "config.json", ref), ref)
        return _from_config(kind, ref, config, _hub_file(what, WEIGHTS_FILE, ref))
    if kind == "local-dir":
        folder = Path(what)
        if not (folder / "config.json").is_file():
            raise UsageError(f"{ref}: {folder} holds no config.json (a timm local-dir folder holds config.json "
                             f"and {WEIGHTS_FILE}; sslcli export --to timm writes one)")
        if not (folder / WEIGHTS_FILE).is_file():
            pickled = " (it holds pytorch_model.bin, a pickle sslcli does not read)" if (
                folder / "pytorch_model.bin").exists() else ""
            raise UsageError(f"{ref}: {folder} holds no {WEIGHTS_FILE}{pickled}")
        return _from_config(kind, ref, _json_file(folder / "config.json", ref), folder / WEIGHTS_FILE)
    path = Path(what)
    if path.is_dir() and (path / "encoder.safetensors").is_file():
        path = path / "encoder.safetensors"  # a run folder
    meta = read_metadata(path, "a .safetensors state dict (timm or torchvision layout) or an sslcli encoder")
    if meta.get("sslcli_format") == ENCODER_FORMAT:  # its own resampling filter (bilinear before it was recorded)
        return WeightsSource("sslcli", ref, path, sha256_of(path), meta.get("encoder"),
                             pretrained_cfg={"interpolation": meta.get("interpolation", "bilinear")})
    return WeightsSource("file", ref, path, sha256_of(path), None)


def _timm_pretrained(ref: str, name: str | None) -> WeightsSource:
    import timm
    from timm.models import get_pretrained_cfg

    if not name:
        raise UsageError(f"{ref}: which model? pass --encoder NAME (a timm name such as resnet50.a1_in1k)")
    if not timm.is_model(name):
        create(name, {})  # the one-line unknown-encoder error, with its suggestions
    cfg = get_pretrained_cfg(name, allow_unregistered=False)
    if cfg is None or not cfg.hf_hub_id:
        raise UsageError(f"{ref}: timm has no Hugging Face Hub weights for {name} (timm.list_pretrained() lists "
                         "those it has); download them as safetensors and pass the FILE")
    if cfg.hf_hub_filename and not cfg.hf_hub_filename.endswith(".safetensors"):
        raise UsageError(f"{ref}: timm keeps {name}'s weights in {cfg.hf_hub_filename}, a pickle sslcli does not "
                         "read; convert them to safetensors and pass the FILE")
    weights = _hub_file(cfg.hf_hub_id, cfg.hf_hub_filename or WEIGHTS_FILE, ref)
    architecture = name if "." in name else f"{name}.{cfg.tag}" if cfg.tag else name
    return WeightsSource("pretrained", ref, weights, sha256_of(weights), architecture,
                         pretrained_cfg=cfg.to_dict())


# ---------------------------------------------------------------- loading


def read_state(source: WeightsSource) -> dict[str, torch.Tensor]:
    try:
        return load_bytes(Path(source.file).read_bytes())
    except (SafetensorError, OSError, ValueError) as exc:
        raise UsageError(f"{source.ref}: {source.file} is not a readable safetensors file ({exc})") from None


def _head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """The classifier modules a pretrained file carries and a feature extractor lacks: timm's pretrained_cfg
    names them (fc, head, head.fc); torchvision's ResNets call theirs fc."""
    names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    return (*names, "fc") if is_resnet(model) else names


def _first_convs(model: nn.Module) -> tuple[str, ...]:
    """The input convs timm's pretrained_cfg names for the architecture (conv1, conv1.0, patch_embed.proj, ...)."""
    names = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv") or ()
    return (names,) if isinstance(names, str) else tuple(names)


Adapted = list[tuple[str, int, int]]  # (input conv, channels of the weights, channels of the model)


def adapt_input_channels(model: nn.Module, state: dict[str, torch.Tensor], source: WeightsSource,
                         name: str | None = None) -> tuple[dict[str, torch.Tensor], Adapted]:
    """The state with its first conv adapted to the model's input channels when the weights take 3 (RGB) and the
    model takes data.channels: timm's adapt_input_conv, as timm.create_model(pretrained=True, in_chans=N) does it
    (1 channel: the RGB filters summed; N: the RGB filters repeated and scaled by 3/N). Said on stderr once."""
    from timm.models import adapt_input_conv

    adapted: Adapted = []
    for conv in _first_convs(model):
        key = f"{conv}.weight"
        try:
            target = model.get_submodule(conv).weight
        except AttributeError:
            continue
        weight = state.get(key)
        if weight is None or weight.ndim != 4 or weight.shape[1] == target.shape[1]:
            continue
        try:
            state = {**state, key: adapt_input_conv(int(target.shape[1]), weight, base_chans=int(weight.shape[1]))}
        except (NotImplementedError, AssertionError, ValueError) as exc:
            raise UsageError(f"{source.ref}: its input conv {conv} ({list(weight.shape)}) cannot be adapted to "
                             f"{target.shape[1]} channels ({exc or type(exc).__name__})") from None
        adapted.append((conv, int(weight.shape[1]), int(target.shape[1])))
    if adapted:
        convs = ", ".join(conv for conv, _, _ in adapted)
        old, new = adapted[0][1], adapted[0][2]
        how = "the filters summed" if new == 1 else f"the filters repeated and scaled by {old}/{new}"
        console.info(f"data.channels={new}: the input conv {convs} of {source.ref} ({name or source.architecture}) "
                     f"adapted from {old} to {new} channels by timm's adapt_input_conv ({how})")
    return state, adapted


def adapted_record(source: WeightsSource, adapted: Adapted) -> dict[str, Any]:
    """source.record(), plus the input convs adapted to the run's channels (recorded in the encoder's init)."""
    record = source.record()
    if adapted:
        record["adapted_input_conv"] = {"convs": [conv for conv, _, _ in adapted], "from": adapted[0][1],
                                        "to": adapted[0][2], "by": "timm.models.adapt_input_conv"}
    return record


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: WeightsSource,
                 name: str | None = None) -> Adapted:
    """Load a state dict into `model` as it is (no cast of shapes, no guessing): the classifier keys a
    feature extractor has no place for are dropped, RGB input convs are adapted to the model's channels
    (adapt_input_channels, returned); anything else that differs is one line naming the first tensor."""
    state, adapted = adapt_input_channels(model, state, source, name)
    expected = model.state_dict()
    heads = _head_prefixes(model)
    state = {k: v for k, v in state.items() if k in expected or not any(k.startswith(h + ".") for h in heads)}
    what = f"{source.ref} does not fit a {name or source.architecture or type(model).__name__} encoder"
    for key, value in expected.items():
        if key not in state:
            raise UsageError(f"{what}: the file has no tensor {key}")
        if tuple(state[key].shape) != tuple(value.shape):
            raise UsageError(f"{what}: tensor {key} is {list(state[key].shape)} in the file, {list(value.shape)} "
                             "in the encoder")
    extra = [k for k in state if k not in expected]
    if extra:
        raise UsageError(f"{what}: the file has a tensor {extra[0]} the encoder does not (and {len(extra) - 1} more)"
                         if len(extra) > 1 else f"{what}: the file has a tensor {extra[0]} the encoder does not")
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise UsageError(f"{source.ref}: tensor {key} holds NaN or infinite values")
    model.load_state_dict(state, strict=True)
    return adapted


def build_from(source: WeightsSource, encoder_name: str, image_size: int | None, small_stem: bool | str = "auto",
               kwargs: dict[str, Any] | None = None, channels: int = 3) -> tuple[nn.Module, EncoderInfo]:
    """The encoder the weights fit, loaded with them, and the EncoderInfo a run records.

    Architecture: the source's (config.json, timm tag, sslcli metadata), else encoder_name. Input size:
    image_size, else the weights' pretrained_cfg. Normalisation and resampling filter: the weights'
    pretrained_cfg (their mean and std only when they hold one value per channel: RGB statistics do not
    describe 1 or N channels, which keep 0.5/0.25). Channels: an RGB input conv is adapted to `channels`
    (adapt_input_channels). The small-image stem only where the weights were trained with it, or when asked
    (said on stderr: it changes the stem the weights were trained with)."""
    if source.kind == "sslcli":
        from dataclasses import replace

        from sslcli.checkpoint import load_encoder
        from sslcli.encoders import rebuild_encoder

        model, info, _ = load_encoder(source.file)
        adapted: Adapted = []
        if info.channels != channels:  # an sslcli encoder of other channels: the same architecture, adapted
            trained, info = model, replace(info, channels=channels)
            model = rebuild_encoder(info)
            mean, std = normalisation(model)  # the default of these channels: its statistics were the others'
            info = replace(info, mean=mean, std=std)
            adapted = load_weights(model, trained.state_dict(), source, info.name)
        info.image_size = image_size or info.image_size
        info.init = adapted_record(source, adapted)
        return model, info
    name = source.architecture or encoder_name
    args = {**source.model_args, **(kwargs or {})}
    args.pop("in_chans", None)  # the weights' own (3): the run's channels are data.channels
    model = create(name, args, channels)
    if accepts_dynamic_size(model) and "dynamic_img_size" not in args:
        # Built at the weights' own size (their position embeddings) and fed views of any size.
        args["dynamic_img_size"] = True
        model = create(name, args, channels)
    stem = source.small_stem or small_stem is True  # 'auto': not on weights trained without it
    if source.small_stem:  # weights trained with the stem (an sslcli export) fit it
        apply_small_stem(model)
    adapted = load_weights(model, read_state(source), source, name)
    if stem and not source.small_stem:
        replaced = isinstance(getattr(model, "conv1", None), nn.Conv2d)
        console.info(f"encoder.small_stem=true on the {name} weights of {source.ref}: "
                     + ("conv1 becomes a fresh 3x3 stride-1 conv (its pretrained 7x7 weights are dropped) and the "
                        "max-pool goes" if replaced else "the stem's first conv keeps its weights at stride 1 and the "
                        "max-pool goes"))
        apply_small_stem(model)
    mean, std = normalisation(model)
    cfg = source.pretrained_cfg
    if cfg.get("mean") and cfg.get("std") and len(cfg["mean"]) == len(cfg["std"]) == channels:
        mean, std = tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])
        # normalisation(model) is what methods that need the pixels back read (colorization, distill's teacher)
        model.pretrained_cfg = {**(getattr(model, "pretrained_cfg", None) or {}), "mean": mean, "std": std}
    info = EncoderInfo(name=name, kwargs=args, small_stem=stem, feature_dim=int(model.num_features),
                       image_size=image_size or source.image_size or 224, mean=mean, std=std, channels=channels,
                       interpolation=source.interpolation or "bilinear", init=adapted_record(source, adapted))
    return model, info


def load_into(model: nn.Module, source: WeightsSource, name: str | None = None) -> None:
    """The starting weights into an encoder already built for them (probe's pretrained baseline: the trained
    encoder's architecture, stem and channels included: an RGB input conv is adapted as the run adapted it)."""
    if source.kind == "sslcli":
        from sslcli.checkpoint import load_encoder

        state = load_encoder(source.file)[0].state_dict()
    else:
        state = read_state(source)
    load_weights(model, state, source, name)


def recorded_ref(init: dict[str, Any]) -> str:
    """A reference that finds a recorded init again from any folder: its file for files and folders (absolute),
    its model for timm's pretrained weights."""
    kind, file = init.get("kind"), init.get("file") or ""
    if kind in ("file", "sslcli"):
        return file
    if kind == "local-dir":
        return f"local-dir:{Path(file).parent}"
    if kind == "pretrained" and init.get("architecture"):
        return f"pretrained:{init['architecture']}"
    return str(init.get("ref"))


def check_unchanged(source: WeightsSource, recorded: dict[str, Any]) -> None:
    """The weights a run recorded are the weights found now (same sha256), or one line saying they changed."""
    if recorded.get("sha256") and recorded["sha256"] != source.sha256:
        raise UsageError(f"{source.ref}: {source.file} is not the file this encoder started from (its sha256 "
                         f"{source.sha256[:12]}... differs from the recorded {recorded['sha256'][:12]}...)")


def is_reference(value: str) -> bool:
    """A weights reference sslcli did not write (pretrained:NAME, hf-hub:ORG/NAME, local-dir:DIR), not a path."""
    return str(value).startswith(("pretrained:", "hf-hub:", "local-dir:"))


def load_encoder_ref(ref: str | Path, channels: int | None = None) -> tuple[nn.Module, EncoderInfo, dict[str, str]]:
    """What probe and finetune take as ENCODER: an sslcli encoder file (or run folder), or weights sslcli did not
    train (pretrained:NAME, hf-hub:ORG/NAME, local-dir:DIR) at their own input size, normalisation and
    resampling filter; the metadata then holds only where they came from. `channels` (distill's teacher for
    data.channels != 3): the input conv adapted to them when the weights take others."""
    from sslcli.checkpoint import load_encoder

    if not is_reference(str(ref)):
        if channels is None:
            return load_encoder(Path(ref))
        source = locate(str(ref))
        model, info = build_from(source, source.architecture or "", None, channels=channels)
        return model, info, {"method": "", "init": json.dumps(info.init, sort_keys=True)}
    source = locate(str(ref))
    model, info = build_from(source, source.architecture or "", None, channels=channels or 3)
    console.info(f"{ref}: {info.name} at {info.image_size} px, sha256 {source.sha256[:12]}...")
    return model, info, {"method": "", "init": json.dumps(info.init, sort_keys=True)}
