"""Helpers shared by the benchmarks: the data they read, peak memory, isolated phases."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

# The real datasets: ../shared/data beside the repository, or $SSLCLI_SHARED_DATA (the tests read the same).
SHARED_DATA = Path(os.environ.get("SSLCLI_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def save_random_encoder(path: Path, name: str, image_size: int, small_stem: bool | str = "auto", *,
                        kwargs: dict[str, Any] | None = None, seed: int = 0, spec: dict[str, Any] | None = None) -> Path:
    """An encoder.safetensors at a seeded random init, written exactly as pretraining writes one."""
    import torch

    from sslcli import checkpoint
    from sslcli.encoders import build_encoder

    torch.manual_seed(seed)
    model, info = build_encoder(name, image_size, small_stem, kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = checkpoint.encoder_metadata(info, method="random-init", epoch=0, step=0, spec=spec or {"note": "random init"})
    checkpoint.save_encoder(path, model, meta)
    return path


def random_init_encoder(spec, folder: Path) -> Path:
    """The spec's encoder exactly as pretraining starts it (same seed), saved like a trained one."""
    from sslcli.spec import dump

    return save_random_encoder(folder / "encoder.safetensors", spec.encoder.name, spec.data.image_size,
                               spec.encoder.small_stem, kwargs=spec.encoder.kwargs, seed=spec.train.seed,
                               spec=dump(spec))


def peak_rss_mb() -> float:
    """Peak resident memory of this process plus its finished children (DataLoader workers), in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round((own + children) / 1024, 1)


def linked_subset(src: Path, dst: Path, per_class: int) -> Path:
    """An ImageFolder of symlinks to the first `per_class` files of each class (nothing copied)."""
    if dst.exists():
        return dst
    for class_dir in sorted(p for p in src.iterdir() if p.is_dir()):
        out = dst / class_dir.name
        out.mkdir(parents=True)
        for file in sorted(class_dir.iterdir())[:per_class]:
            (out / file.name).symlink_to(file.resolve())
    return dst


def run_phase(module: str, phase: str, args: list[str]) -> dict:
    """Run one measurement in a fresh process (own memory peak, no state shared) and read its JSON line."""
    proc = subprocess.run([sys.executable, "-m", module, "--phase", phase, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"phase {phase} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
