"""Artifacts on disk: safetensors for tensors, JSON for everything else, never pickle.

Every write goes to a temporary file in the target folder, is fsynced, then renamed over the target,
and the folder is fsynced: a crash leaves either the old complete file or the new complete file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from torch import nn

from sslcli import __version__, console
from sslcli.encoder_args import INTERPOLATIONS, MAX_CHANNELS
from sslcli.encoders import EncoderInfo, rebuild_encoder
from sslcli.errors import RunError, UsageError
from sslcli.files import atomic_write_bytes, atomic_write_json
from sslcli.headers import (
    ENCODER_EXPECTED,
    ENCODER_FORMAT,
    PROJECTOR_FILE,
    PROJECTOR_FORMAT,
    STATE_FORMAT,
    check_encoder_format,
    checked_projector,
    encoder_file,
    read_metadata,
)
from sslcli.heads import MLPLayout


def _plain_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or strided storage: give it contiguous CPU copies.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


# ---------------------------------------------------------------- encoder


def encoder_metadata(info: EncoderInfo, *, method: str, epoch: int, step: int, spec: dict[str, Any],
                     trained_input: str | None = None) -> dict[str, str]:
    """The metadata of an encoder file: what rebuilds it (timm name, kwargs, stem, size, normalisation), how it
    was trained (method, step, spec) and, for a method whose encoder did not see the augmented RGB views,
    what it did see (`trained_input`, the method config's encoder_input)."""
    import timm

    return {
        "format": "pt",  # lets tools that expect a PyTorch state dict accept the file
        "sslcli_format": ENCODER_FORMAT,
        "sslcli_version": __version__,
        "torch_version": torch.__version__,
        "timm_version": timm.__version__,
        "method": method,
        "encoder": info.name,
        "encoder_kwargs": json.dumps(info.kwargs, sort_keys=True),
        "small_stem": json.dumps(info.small_stem),
        "feature_dim": str(info.feature_dim),
        "image_size": str(info.image_size),
        "mean": json.dumps(list(info.mean)),
        "std": json.dumps(list(info.std)),
        "channels": str(info.channels),
        "interpolation": info.interpolation,
        "epoch": str(epoch),
        "step": str(step),
        "spec": json.dumps(spec, sort_keys=True),
        **({"trained_input": trained_input} if trained_input else {}),
        # The weights the run started from (--init): kind, reference, file and its sha256.
        **({"init": json.dumps(info.init, sort_keys=True)} if info.init else {}),
    }


def save_encoder(path: Path, encoder: nn.Module, metadata: dict[str, str]) -> str:
    """The plain timm state dict of the encoder, loadable strictly into the rebuilt model; returns the file's
    sha256 (a projection head saved beside it records it)."""
    payload = save_bytes(_plain_tensors(encoder.state_dict()), metadata=metadata)
    atomic_write_bytes(path, payload)
    return hashlib.sha256(payload).hexdigest()


def save_projector(path: Path, head: nn.Module, layout: MLPLayout, *, encoder_sha256: str, method: str,
                   epoch: int, step: int) -> None:
    """The projection head beside its encoder (projector.safetensors): its state dict (mlp's keys: 0.weight,
    1.weight, 1.running_mean, ...), the layout that rebuilds it, and the sha256 of the encoder file it belongs
    to. The encoder file stays the plain timm state dict, so everything that loads encoders is unchanged."""
    metadata = {"format": "pt", "sslcli_format": PROJECTOR_FORMAT, "sslcli_version": __version__,
                "method": method, "layout": layout.to_json(), "encoder_sha256": encoder_sha256,
                "epoch": str(epoch), "step": str(step)}
    atomic_write_bytes(path, save_bytes(_plain_tensors(head.state_dict()), metadata=metadata))


def save_beside_encoder(path: Path, module: nn.Module, metadata: dict[str, str], *, method: str, epoch: int,
                        step: int) -> None:
    """Another part of a method's model beside its encoder (Monodepth's depth decoder): its state dict and the
    metadata that rebuilds it (the method's own sslcli_format and layout, the encoder file's sha256)."""
    meta = {"format": "pt", "sslcli_version": __version__, "method": method, "epoch": str(epoch), "step": str(step),
            **metadata}
    atomic_write_bytes(path, save_bytes(_plain_tensors(module.state_dict()), metadata=meta))


def load_projector(encoder_path: Path) -> tuple[nn.Sequential, MLPLayout]:
    """The projection head saved beside an encoder, rebuilt from its layout and loaded strictly (UsageError,
    one line, for a missing, foreign, mismatched or damaged file)."""
    path, meta = checked_projector(Path(encoder_path))
    try:
        layout = MLPLayout.from_json(meta["layout"])
    except (KeyError, ValueError) as exc:
        raise UsageError(f"{path} has damaged sslcli metadata ({exc!r}); take it from its run folder again") from None
    head = layout.build()
    try:
        head.load_state_dict(load_bytes(path.read_bytes()), strict=True)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise UsageError(f"{path}: the weights do not match its layout ({first})") from None
    return head, layout


def info_from_metadata(meta: dict[str, str], path: Path) -> EncoderInfo:
    check_encoder_format(meta, path)
    try:
        info = EncoderInfo(
            name=meta["encoder"],
            kwargs=json.loads(meta["encoder_kwargs"]),
            small_stem=bool(json.loads(meta["small_stem"])),
            feature_dim=int(meta["feature_dim"]),
            image_size=int(meta["image_size"]),
            mean=tuple(float(v) for v in json.loads(meta["mean"])),
            std=tuple(float(v) for v in json.loads(meta["std"])),
            channels=int(meta.get("channels", "3")),  # files written before data.channels are RGB encoders
            interpolation=meta.get("interpolation", "bilinear"),  # and before data.interpolation, bilinear
            init=json.loads(meta["init"]) if "init" in meta else None,
        )
        if not 1 <= info.channels <= MAX_CHANNELS:
            raise ValueError(f"channels {info.channels} is not 1 to {MAX_CHANNELS}")
        if info.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {info.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
        if not isinstance(info.init, (dict, type(None))):
            raise ValueError("init is not a JSON object")
        if not isinstance(info.kwargs, dict) or len(info.mean) != info.channels or len(info.std) != info.channels \
                or info.image_size <= 0:
            raise ValueError("encoder_kwargs, mean, std or image_size has the wrong shape")
    except (KeyError, ValueError, TypeError) as exc:
        raise UsageError(f"{path} has damaged sslcli metadata ({exc!r}); re-export it from its run") from None
    return info


def _first_reason(exc: Exception) -> str:
    """One line saying why a load failed: load_state_dict's first line is only "Error(s) in loading state_dict
    for X:"; the first of the lines under it names a tensor (a size mismatch, a missing or unexpected key)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return exc.__class__.__name__
    if lines[0].startswith("Error(s) in loading state_dict") and len(lines) > 1:
        return lines[1].rstrip(".")
    return lines[0]


def load_encoder(path: Path) -> tuple[nn.Module, EncoderInfo, dict[str, str]]:
    """Rebuild the encoder from the file's metadata and load its weights strictly (a run folder: its encoder)."""
    path = encoder_file(path)
    meta = read_metadata(path, ENCODER_EXPECTED)
    info = info_from_metadata(meta, path)
    model = rebuild_encoder(info)
    try:
        state = load_bytes(Path(path).read_bytes())
    except (SafetensorError, OSError, ValueError) as exc:
        raise UsageError(f"{path} is not a readable safetensors file ({exc})") from None
    expected = model.state_dict()
    # load_state_dict would cast silently; a tensor of another dtype means the file is not what it claims.
    for key, value in state.items():
        if key in expected and value.dtype != expected[key].dtype:
            raise UsageError(f"{path}: tensor {key} is {value.dtype}, a {info.name} encoder holds "
                             f"{expected[key].dtype}; the file was altered or is not this encoder's")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise UsageError(f"{path}: tensor {key} holds NaN or infinite values; these weights cannot give "
                             "features (a run that diverged, or a damaged file)")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UsageError(f"{path}: the weights do not match a {info.name} encoder ({_first_reason(exc)})") from None
    return model, info, meta


# ---------------------------------------------------------------- training state


def flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into tensors and JSON-able values."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, per_param in state["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{index}/{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: Mapping[str, torch.Tensor], info: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, index, name = key.split("/", 2)
            state.setdefault(int(index), {})[name] = value
    for index, values in info["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": info["param_groups"]}


def save_train_state(folder: Path, *, step: int, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                     extra: dict[str, Any], keep: int = 2, rng: Mapping[str, torch.Tensor] | None = None,
                     scaler: dict[str, Any] | None = None) -> Path:
    """checkpoints/state-<step>.safetensors (model, optimizer, RNG states) + .json (the rest), then
    checkpoints/latest.json pointing at them; keeps the newest `keep` states.

    Order matters for crash safety: tensors, then the JSON holding their sha256 (a state is complete only
    when both exist and the hash matches), then latest.json, and only then are older states removed.
    """
    folder = Path(folder)
    opt_tensors, opt_info = flatten_optimizer(optimizer.state_dict())
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    tensors.update(opt_tensors)
    tensors["rng/torch"] = torch.get_rng_state()
    tensors.update({f"rng/{k}": v for k, v in (rng or {}).items()})
    stem = folder / f"state-{step:09d}"
    payload = save_bytes(_plain_tensors(tensors), metadata={"sslcli_format": STATE_FORMAT})
    atomic_write_bytes(stem.with_suffix(".safetensors"), payload)
    digest = hashlib.sha256(payload).hexdigest()
    record = {"format": STATE_FORMAT, "step": step, "epoch": epoch, "sha256": digest, "optimizer": opt_info,
              "scaler": scaler, **extra}
    atomic_write_json(stem.with_suffix(".json"), record)
    atomic_write_json(folder / "latest.json", {"file": stem.with_suffix(".safetensors").name, "step": step,
                                               "sha256": digest, "fingerprint": extra.get("fingerprint")})
    for old in complete_states(folder)[:-keep]:
        old.with_suffix(".json").unlink(missing_ok=True)
        old.with_suffix(".safetensors").unlink(missing_ok=True)
    return stem.with_suffix(".safetensors")


def complete_states(folder: Path) -> list[Path]:
    """State files that have both halves, oldest first."""
    return sorted(p for p in Path(folder).glob("state-*.safetensors") if p.with_suffix(".json").is_file())


def read_state_record(path: Path) -> dict[str, Any]:
    """The JSON half of a training state; UsageError when it is missing, unreadable or not ours."""
    path = Path(path)
    try:
        record = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path} has no readable training-state record ({exc.__class__.__name__}); "
                         "give a checkpoints/state-*.safetensors written by sslcli pretrain") from None
    if not isinstance(record, dict) or record.get("format") != STATE_FORMAT:
        raise UsageError(f"{path} is not an sslcli training state")
    return record


def state_is_intact(path: Path) -> bool:
    """The tensors file exists and hashes to the sha256 its record holds (a torn write does not)."""
    try:
        record = read_state_record(path)
        return hashlib.sha256(Path(path).read_bytes()).hexdigest() == record.get("sha256")
    except (UsageError, OSError):
        return False


def newest_intact_state(folder: Path) -> Path | None:
    """The newest state whose hash checks out; states that fail are reported and passed over."""
    folder = Path(folder)
    pointed = None
    with contextlib.suppress(OSError, ValueError, AttributeError):  # latest.json is a hint; the hashes decide
        pointed = json.loads((folder / "latest.json").read_text()).get("file")
    skipped = []
    for path in reversed(complete_states(folder)):
        if state_is_intact(path):
            for bad in skipped:  # said only where the run goes on from an older one (else the caller says why not)
                console.warn(f"{bad} does not match its recorded sha256 (a torn or altered write); skipping it")
            if pointed and path.name != pointed:
                console.warn(f"{folder / pointed} is missing or damaged; resuming from the previous good "
                             f"checkpoint {path.name}")
            return path
        skipped.append(path)
    return None


def load_train_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer
                     ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Restore model, optimizer and the global torch RNG from a state written by save_train_state.

    Returns its JSON record and the other RNG states (rng/<name>) for the caller's generators.
    """
    path = Path(path)
    record = read_state_record(path)
    try:
        tensors = load_bytes(path.read_bytes())
    except (SafetensorError, OSError, ValueError) as exc:
        raise UsageError(f"{path} is not a readable safetensors file ({exc})") from None
    try:
        model.load_state_dict({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")},
                              strict=True)
        optimizer.load_state_dict(unflatten_optimizer(tensors, record["optimizer"]))
        torch.set_rng_state(tensors["rng/torch"])
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise UsageError(f"{path} does not fit this run's model and optimizer ({_first_reason(exc)})") from None
    return record, {k[len("rng/"):]: v for k, v in tensors.items() if k.startswith("rng/") and k != "rng/torch"}


# ---------------------------------------------------------------- the run folder and its checkpointer


def make_run_dir(out: Path | None, method: str, resuming: bool = False) -> Path:
    """The run folder, created and checked writable: --out, or runs/<method>-<timestamp>. A folder that holds a
    run is never reused by a new one (nothing the user made is overwritten)."""
    if out is not None:
        run_dir = Path(out)
        if (run_dir / "encoder.safetensors").exists() and not resuming:
            progress = run_progress(run_dir)
            if progress is not None and progress[0] >= progress[1]:
                raise UsageError(f"{run_dir} already holds a finished run ({progress[0]}/{progress[1]} steps): "
                                 f"{further_training(run_dir)}")
            where = f" (stopped at step {progress[0]}/{progress[1]})" if progress else ""
            raise UsageError(f"{run_dir} already holds a run{where}; continue it with --resume auto, or choose "
                             "another --out so nothing is overwritten")
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path("runs") / f"{method}-{stamp}"
        suffix = 1
        while run_dir.exists():
            suffix += 1
            run_dir = Path("runs") / f"{method}-{stamp}-{suffix}"
    try:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(run_dir / "checkpoints" / ".write-test", b"ok")
        (run_dir / "checkpoints" / ".write-test").unlink()
    except OSError as exc:
        raise UsageError(f"cannot write the run folder {run_dir} ({exc.strerror or exc}); choose a writable --out") \
            from None
    return run_dir


def run_progress(run_dir: Path) -> tuple[int, int] | None:
    """(step, total steps) of a run folder's newest training state, or None when it has none readable."""
    states = complete_states(Path(run_dir) / "checkpoints")
    if not states:
        return None
    try:
        record = read_state_record(states[-1])
        replans = record.get("replans") or [[0, record["fingerprint_parts"]["total steps"]]]
        return int(record["step"]), int(replans[-1][1])  # the total of the last plan (--budget re-plans)
    except (UsageError, KeyError, TypeError, ValueError):
        return None


def further_training(run_dir: Path) -> str:
    """How to train a finished run further: a new schedule that starts from its weights."""
    return (f"it is complete. To train further, start a new run from its weights with the schedule you want: "
            f"--init-from {Path(run_dir) / 'encoder.safetensors'} --out NEW_RUN_DIR")


def check_free_space(run_dir: Path, model: nn.Module, keep: int) -> None:
    """Refuse to start when the disk cannot hold the checkpoints: a run that dies at its first save wastes hours.

    A state is the model plus up to two optimizer buffers per parameter (momentum; Adam's two moments);
    keep + 1 of them exist while a new one is written, plus the exported encoder.
    """
    model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    needed = model_bytes * 3 * (keep + 1) + model_bytes
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        raise UsageError(f"{run_dir} has {free / 2**20:.0f} MiB free but the checkpoints need about "
                         f"{needed / 2**20:.0f} MiB; free some space or choose another --out")


@dataclass
class Checkpointer:
    """Saves a pretraining run: encoder.safetensors (the export), projector.safetensors beside it for a method
    that exports its projection head (SimCLR), and checkpoints/state-<step> (to resume).

    The generators' states are read when a checkpoint is written (`rng()`), so a resume draws the same
    augmentations. A failed write (disk full, folder removed) is a RunError; the previous state is intact.
    """

    run_dir: Path
    method: nn.Module  # exposes export_encoder(), export_projector() and export_files()
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    info: EncoderInfo
    method_name: str
    spec: dict[str, Any]  # the resolved spec, as JSON data
    fingerprint: dict[str, Any]  # {"hash", "parts"} (resume.fingerprint)
    keep: int
    rng: Callable[[], dict[str, torch.Tensor]]
    # A --budget run's re-plans so far, [at step, new total] (the pacer appends to this list): a resume
    # lays its schedules out the same way.
    replans: list[list[int]] = field(default_factory=list)
    trained_input: str | None = None  # the method's encoder_input, written into the encoder's metadata

    def save(self, epoch: int, step: int) -> None:
        """The training state first, then the encoder: a write that fails half-way never leaves an encoder
        newer than the newest intact checkpoint, and the error says which file holds which step."""
        try:
            self._write_state(epoch, step)
        except OSError as exc:
            raise RunError(f"could not write the checkpoint of step {step} to {self.run_dir} "
                           f"({exc.strerror or exc}); the previous checkpoint is intact, and so is encoder.safetensors, "
                           "of the same step: free space, then run again with --resume auto") from None
        try:
            self._write_encoder(epoch, step)
        except OSError as exc:
            raise RunError(f"the checkpoint of step {step} was saved to {self.run_dir}, but encoder.safetensors "
                           f"could not be written ({exc.strerror or exc}) and is still the previous save's: free "
                           "space, then run again with --resume auto (it continues from step "
                           f"{step} and writes the encoder again)") from None

    def _write_state(self, epoch: int, step: int) -> None:
        extra = {"spec": self.spec, "fingerprint": self.fingerprint["hash"],
                 "fingerprint_parts": self.fingerprint["parts"]}
        if self.replans:
            extra["replans"] = [list(r) for r in self.replans]
        save_train_state(self.run_dir / "checkpoints", step=step, epoch=epoch, model=self.method,
                         optimizer=self.optimizer, extra=extra, keep=self.keep, rng=self.rng(),
                         scaler=self.scaler.state_dict() or None)

    def _write_encoder(self, epoch: int, step: int) -> None:
        meta = encoder_metadata(self.info, method=self.method_name, epoch=epoch, step=step, spec=self.spec,
                                trained_input=self.trained_input)
        projector = self.method.export_projector()
        if projector is not None:
            meta["projector"] = PROJECTOR_FILE
        digest = save_encoder(self.run_dir / "encoder.safetensors", self.method.export_encoder(), meta)
        if projector is not None:  # after the encoder: it records the sha256 of the encoder file it belongs to
            head, layout = projector
            save_projector(self.run_dir / PROJECTOR_FILE, head, layout, encoder_sha256=digest,
                           method=self.method_name, epoch=epoch, step=step)
        for name, (module, extra) in getattr(self.method, "export_files", dict)().items():
            save_beside_encoder(self.run_dir / name, module, {**extra, "encoder_sha256": digest},
                                method=self.method_name, epoch=epoch, step=step)
