"""Continuing a run and starting from one: --resume targets, the spec fingerprint, --init-from, rank seeds.

The pretrain command calls these; they decide what a resumed run may load and restore it, never how
the run trains.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from sslcli import checkpoint, console, data, distributed
from sslcli.augment import Augmenter
from sslcli.errors import UsageError
from sslcli.spec import PretrainSpec


def fingerprint(spec: PretrainSpec, images: data.ImageSet, total_steps: int) -> dict[str, Any]:
    """What must not change for a resume to continue the same run, part by part, plus one hash of it all."""
    # The paths' own bytes (os.fsencode): a file name that is not valid UTF-8 is hashed as it is on disk.
    manifest = hashlib.sha256(b"\0".join(os.fsencode(p) for p in images.paths)).hexdigest()
    # The init keys join the encoder's part only when set, so the runs without them keep their fingerprints.
    encoder = spec.encoder.model_dump(mode="json", exclude={"init", "pretrained", "init_sha256"})
    parts = {"method": spec.method.model_dump(mode="json"), "encoder": encoder,
             "data manifest": manifest, "image size": spec.data.image_size, "batch size": spec.train.batch_size,
             "total steps": total_steps, "seed": spec.train.seed, "optimizer": spec.optim.model_dump(mode="json"),
             "augmentation": spec.augment.model_dump(mode="json")}
    if spec.data.channels != 3:  # only then, so the RGB runs keep their fingerprints
        parts["channels"] = spec.data.channels
    if spec.data.resize_filter() != "bilinear":  # only then, so the runs before data.interpolation keep theirs
        parts["interpolation"] = spec.data.resize_filter()
    if spec.data.mean is not None or spec.data.std is not None:  # likewise for the normalisation the user sets
        parts["normalisation"] = {"mean": spec.data.mean, "std": spec.data.std}
    if spec.encoder.init is not None:  # the starting weights: their reference and the sha256 of their file
        parts["init"] = {"ref": spec.encoder.init, "sha256": spec.encoder.init_sha256}
    if spec.data.label_fraction is not None:  # only then, so the runs without labels keep their fingerprints
        parts["semi-supervised"] = {"label fraction": spec.data.label_fraction,
                                    "supervised weight": spec.train.supervised_weight,
                                    "labeled batch size": spec.train.labeled_batch_size or spec.train.batch_size}
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return {"hash": digest, "parts": parts}


def run_folder(spec: PretrainSpec, resume: str | None) -> Path | None:
    """The folder a pretrain command will write: --out, or the run folder it resumes (None: a new folder it
    names itself). Known before anything is read, so the command can hold the folder's lock from the start."""
    if spec.out is not None:
        return Path(spec.out)
    if resume is None or resume == "auto":
        return None
    target = Path(resume)
    return target if target.is_dir() else target.parent.parent


def resume_point(spec: PretrainSpec, resume: str | None, force: bool = False) -> tuple[Path | None, Path | None]:
    """(run folder, state to load) for --resume auto|RUN_DIR|STATE_FILE; (None, None) for a fresh run.

    `auto` with no usable checkpoint yet starts the run in --out, so the same command can be repeated
    after any interruption (idempotent). A folder whose checkpoints are all damaged, or that holds an encoder
    but no checkpoint, is not started over unless `force` says so: that would replace the user's encoder.
    """
    if resume is None:
        return None, None
    if resume == "auto":
        if spec.out is None:
            raise UsageError("--resume auto needs the run folder: add --out RUN_DIR (the one the run writes to)")
        run_dir = Path(spec.out)
        state = checkpoint.newest_intact_state(run_dir / "checkpoints") if (run_dir / "checkpoints").is_dir() else None
        if state is None:
            refuse_to_start_over(run_dir, force)
            console.info(f"no checkpoint in {run_dir} yet: starting the run there")
        return run_dir, state
    target = Path(resume)
    if target.is_dir():  # a run folder
        state = checkpoint.newest_intact_state(target / "checkpoints")
        if state is None:
            raise UsageError(f"{target} holds no intact checkpoint to resume from (checkpoints/state-*.safetensors)")
        return Path(spec.out) if spec.out else target, state
    if not target.is_file():
        raise UsageError(f"--resume {resume}: no such file or folder; give auto, a run folder or a state file")
    if not checkpoint.state_is_intact(target):
        raise UsageError(f"{target} does not match its recorded sha256 (torn or altered); resume from the run folder "
                         "to fall back to the previous good checkpoint")
    return (Path(spec.out) if spec.out else target.parent.parent), target


def refuse_to_start_over(run_dir: Path, force: bool) -> None:
    """--resume auto found no intact checkpoint: starting over is right for a folder that holds no run yet, and
    wrong, unless forced, for one whose checkpoints are damaged or whose encoder would be replaced."""
    damaged = checkpoint.complete_states(run_dir / "checkpoints") if (run_dir / "checkpoints").is_dir() else []
    encoder = run_dir / "encoder.safetensors"
    if not damaged and not encoder.exists():
        return
    if damaged:
        what = (f"its checkpoint{'s' if len(damaged) > 1 else ''} ({', '.join(p.name for p in damaged)}) "
                f"{'do' if len(damaged) > 1 else 'does'} not match the recorded sha256 (torn or altered)")
    else:
        what = "it holds encoder.safetensors but no checkpoint to continue from"
    if force:
        console.warn(f"{run_dir}: {what}; starting the run over there (--force): its encoder and checkpoints "
                     "will be replaced")
        return
    kept = " encoder.safetensors is intact and stays as it is;" if encoder.exists() else ""
    raise UsageError(f"{run_dir} cannot be resumed: {what};{kept} to start this run over deliberately add --force "
                     "(its files are replaced), or choose another --out")


def drop_metrics_after(path: Path, step: int) -> int:
    """Keep only the metrics.jsonl records up to `step`, the step a run continues from (none for a fresh start),
    so the curves never mix the history being replaced with the new one. Returns how many were dropped."""
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            at = json.loads(line).get("step")
        except (json.JSONDecodeError, AttributeError):
            at = None  # a line cut short by a kill
        if step > 0 and isinstance(at, int) and at <= step:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        checkpoint.atomic_write_bytes(path, "".join(f"{line}\n" for line in kept).encode())
        console.info(f"metrics.jsonl: dropped {dropped} records after step {step} (they belong to the history "
                     "this run replaces)")
    return dropped


# Parts an older sslcli did not record: their absence from a checkpoint is no change.
UNRECORDED_BEFORE = ("optimizer", "augmentation")


def check_fingerprint(record: dict[str, Any], current: dict[str, Any], state: Path, force: bool) -> None:
    """Refuse a state written by a different run: the parts that changed are named. A changed optimizer or
    augmentation is accepted with --force and then takes effect (restore sets the spec's optimizer settings);
    another optimizer is never accepted: its state does not carry over."""
    if record.get("fingerprint") == current["hash"]:
        return
    saved = record.get("fingerprint_parts") or {}
    changed = [k for k, v in current["parts"].items()
               if saved.get(k) != v and not (k in UNRECORDED_BEFORE and k not in saved)]
    if not changed and saved:
        return  # the hash differs only by parts this checkpoint's version did not record
    old_optimizer = (saved.get("optimizer") or {}).get("name")
    new_optimizer = current["parts"]["optimizer"]["name"]
    if old_optimizer and old_optimizer != new_optimizer:
        raise UsageError(f"{state} was trained with optimizer {old_optimizer}, and an optimizer's state does not "
                         f"carry over to another ({new_optimizer}), even with --force; start a new run from its "
                         f"weights: --init-from {Path(state).parent.parent / 'encoder.safetensors'} --out NEW_RUN_DIR")
    if changed == ["total steps"] and not force and record.get("step") == final_total(record):
        run_dir = Path(state).parent.parent
        raise UsageError(f"{run_dir} holds a finished run ({record['step']} steps) and a finished schedule is not "
                         f"extended (its learning rate has decayed): {checkpoint.further_training(run_dir)}")
    what = ", ".join(changed) if changed else "the run's settings"
    if force:
        console.warn(f"resuming {state} although {what} changed (--force)")
        return
    raise UsageError(f"{state} belongs to a different run: {what} changed since it was written; resume with the "
                     "original settings, start a new run (--init-from to reuse the weights), or pass --force")


def recorded_replans(state: Path) -> list[list[int]]:
    """The re-plans [at step, new total] a --budget run made before this state was written (none for others);
    each at a step of the plan before it, in order, and no later than the state's own step."""
    record = checkpoint.read_state_record(state)
    replans = record.get("replans") or []
    total, previous_at = (record.get("fingerprint_parts") or {}).get("total steps"), 0
    for replan in replans:
        if not (isinstance(replan, list) and len(replan) == 2 and all(type(v) is int for v in replan)
                and isinstance(total, int) and previous_at <= replan[0] < min(total, replan[1])
                and replan[0] <= record.get("step", 0)):
            raise UsageError(f"{state} records re-plans it could not have written ({replans!r}); resume from an "
                             "intact checkpoint or start a new run")
        previous_at, total = replan
    return replans


def final_total(record: dict[str, Any]) -> int | None:
    """The total steps a state's run was last planned for: its last re-plan's, or its fingerprint's."""
    replans = record.get("replans") or []
    return replans[-1][1] if replans else (record.get("fingerprint_parts") or {}).get("total steps")


def init_from(encoder: torch.nn.Module, info, path: Path) -> None:
    """--init-from: start a new run from an encoder.safetensors of the same architecture."""
    loaded, loaded_info, _ = checkpoint.load_encoder(path)
    same = ((loaded_info.name, loaded_info.kwargs, loaded_info.small_stem, loaded_info.channels)
            == (info.name, info.kwargs, info.small_stem, info.channels))
    if not same:
        raise UsageError(f"--init-from {path} holds a {loaded_info.name} {loaded_info.kwargs} encoder of "
                         f"{loaded_info.channels} channels, but this run builds {info.name} {info.kwargs} of "
                         f"{info.channels}; use the same encoder settings and data.channels")
    encoder.load_state_dict(loaded.state_dict(), strict=True)
    console.info(f"encoder initialised from {path}")


def reseed_rank(seed: int, step: int, generator: torch.Generator, augment: Augmenter) -> None:
    """A resumed rank other than 0 continues with generators of its own, derived from the seed and the step."""
    fresh = distributed.seed_for_rank(seed) + step
    torch.manual_seed(fresh)
    generator.manual_seed(fresh)
    augment.order_generator.manual_seed(fresh)


def restore(state: Path, spec: PretrainSpec, identity: dict[str, Any], force: bool, method: torch.nn.Module,
            optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, generator: torch.Generator,
            augment: Augmenter, device: torch.device) -> int:
    """Load a training state into the run's objects; returns the step it continues from.

    Weights, optimizer, scaler and every generator come back as they were, so rank 0 (and a one-process
    run) continues bit for bit; other ranks reseed from (seed, rank, step)."""
    # The optimizer's settings are the spec's, the restored state only its buffers (momentum, Adam's moments):
    # after a forced resume with another weight decay or momentum, what runs is what spec.json says.
    settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    record, rng = checkpoint.load_train_state(state, method, optimizer)
    check_fingerprint(record, identity, state, force)
    for group, own in zip(optimizer.param_groups, settings, strict=True):
        group.update(own)
    if not {"augment", "augment_order"} <= rng.keys() or not isinstance(record.get("step"), int):
        raise UsageError(f"{state} lacks the step or augmentation RNG state an exact resume needs (an older or "
                         "altered checkpoint); start a new run, with --init-from RUN/encoder.safetensors")
    generator.set_state(rng["augment"])
    augment.order_generator.set_state(rng["augment_order"])
    if "cuda" in rng and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], device)
    if record.get("scaler"):
        scaler.load_state_dict(record["scaler"])
    step = int(record["step"])
    if distributed.rank():  # the state holds rank 0's generators: the others draw fresh ones
        reseed_rank(spec.train.seed, step, generator, augment)
    return step
