"""The Python API: `sslcli.pretrain(...)`, `probe`, `finetune`, `export`, `embed` and `load_encoder`.

Each function builds the spec the CLI command builds, with the same function (command_specs.py) and the same
precedence (a preset < the arguments < `overrides`), runs the same command module and returns its result as a
typed object whose fields are the command's `--json` output. Errors are raised as sslcli's exceptions
(UsageError for bad input, RunError, Interrupted); Ctrl-C while training stops after a checkpoint, as in the
CLI, and then raises KeyboardInterrupt. Progress goes to stderr only with progress=True.

torch is imported when a function runs, not when `import sslcli` does.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import signal
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, PrivateAttr

from sslcli import command_specs, console
from sslcli.errors import Interrupted


class Result(BaseModel):
    """A command's result: its `--json` fields as attributes (result.knn_top1), `as_json()` the dict the CLI
    prints; `resolved_spec` the spec it ran (the pydantic model the CLI's --dry-run prints)."""

    model_config = ConfigDict(extra="allow")
    _resolved_spec: Any = PrivateAttr(None)

    @property
    def resolved_spec(self) -> Any:
        return self._resolved_spec

    def as_json(self) -> dict[str, Any]:
        """Exactly what `sslcli <command> --json` prints for the same spec."""
        return self.model_dump(mode="json")


class PretrainResult(Result):
    run_dir: Path
    encoder: Path

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """metrics.jsonl's records: one per logged step (loss, lr, monitors), per online kNN and per warning."""
        path = self.run_dir / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def curve(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one metric, e.g. curve("loss") or curve("knn_top1"), ready to plot."""
        points = [(r["step"], r[key]) for r in self.metrics if key in r and "step" in r]
        return [s for s, _ in points], [v for _, v in points]


class ProbeResult(Result):
    encoder: Path


class FinetuneResult(Result):
    classifier: Path
    encoder: Path


class ExportResult(Result):
    pass


class EmbedResult(Result):
    pass


@contextlib.contextmanager
def _reporting(progress: bool):
    """The CLI's --quiet for the length of one call: the API is quiet unless asked."""
    before = console._quiet
    console.configure(quiet=not progress)
    try:
        yield
    finally:
        console.configure(quiet=before)


def _run(command: str, build: Callable[[], Any], result_type: type[Result], progress: bool, **options: Any) -> Any:
    """Build the command's spec (which may say what it chose, e.g. the image size) and run the command."""
    with _reporting(progress):
        spec = build()
        module = importlib.import_module(f"sslcli.commands.{command}")
        try:
            out = module.run(spec, **options)
        except Interrupted as exc:
            if exc.signum == signal.SIGINT:  # Ctrl-C (a notebook's interrupt): stopped after a checkpoint
                raise KeyboardInterrupt(str(exc)) from exc
            raise
        if hasattr(module, "finish"):  # what a command writes after its result (probe's JSON file)
            module.finish(out)
    result = result_type(**out)
    result._resolved_spec = spec
    return result


def _overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """Keyword overrides: a dotted key in a dict (**{"train.epochs": 2}), a section (train={"epochs": 2}) or a
    double underscore (train__epochs=2)."""
    return {key.replace("__", "."): value for key, value in overrides.items()}


def pretrain(data: str | Path, method: str | None = None, preset: str | None = None, out: str | Path | None = None,
             *, encoder: str | None = None, epochs: int | None = None, budget: str | float | None = None,
             batch_size: int | None = None, val: str | Path | None = None, label_fraction: float | None = None,
             init_from: str | Path | None = None, init: str | None = None, resume: str | None = None,
             force: bool = False, log_to: str | list[str] | None = None, progress: bool = False, **overrides: Any) -> PretrainResult:
    """Pretrain an encoder on a folder of images; as `sslcli pretrain DATA ...`.

    overrides: any spec key, above the preset and the arguments: `train={"epochs": 2}`, `train__epochs=2` or
    `**{"train.epochs": 2}`. resume: "auto", a run folder or a state file, as --resume."""
    build = partial(command_specs.pretrain_spec, data, method=method, preset=preset, encoder=encoder, epochs=epochs,
                                       budget=budget, batch_size=batch_size, out=out, val=val,
                                       label_fraction=label_fraction, init_from=init_from, init=init, log_to=log_to,
                                       overrides=_overrides(overrides))
    return _run("pretrain", build, PretrainResult, progress, resume=resume, force=force)


def probe(encoder: str | Path, data: str | Path, *, val: str | Path | None = None,
          label_fraction: float | None = None, baseline: str | bool | None = None, out: str | Path | None = None,
          progress: bool = False, **overrides: Any) -> ProbeResult:
    """kNN and linear probe of an encoder (or its run folder) on labeled data; as `sslcli probe`.

    baseline: "random" (default), "pretrained" (also the starting weights the encoder's init recorded), weights
    (FILE, local-dir:DIR, hf-hub:ORG/NAME, pretrained:NAME) scored beside it, or False (no random init)."""
    build = partial(command_specs.probe_spec, encoder, data, val=val, label_fraction=label_fraction, baseline=baseline,
                                    out=out, overrides=_overrides(overrides))
    return _run("probe", build, ProbeResult, progress)


def finetune(encoder: str | Path, data: str | Path, *, val: str | Path | None = None, epochs: int | None = None,
             batch_size: int | None = None, label_fraction: float | None = None, preset: str | None = None,
             out: str | Path | None = None, baseline: bool | None = None, keep_projection_layers: int | None = None,
             log_to: str | list[str] | None = None, progress: bool = False, **overrides: Any) -> FinetuneResult:
    """Fine-tune a classifier on labeled data; as `sslcli finetune`."""
    build = partial(command_specs.finetune_spec, encoder, data, val=val, epochs=epochs, batch_size=batch_size,
                                       label_fraction=label_fraction, preset=preset, out=out, baseline=baseline,
                                       keep_projection_layers=keep_projection_layers, log_to=log_to,
                                       overrides=_overrides(overrides))
    return _run("finetune", build, FinetuneResult, progress)


def export(encoder: str | Path, to: str, out: str | Path, *, data: str | Path | None = None,
           progress: bool = False) -> ExportResult:
    """Write the encoder for timm, the Hugging Face Hub ("hf"), torchvision or ONNX ("onnx", checked on `data`'s
    images or seeded random ones); as `sslcli export`."""
    build = partial(command_specs.export_spec, encoder, to=to, out=out, data=data)
    return _run("export", build, ExportResult, progress)


def embed(encoder: str | Path, data: str | Path, out: str | Path, *, batch_size: int = 256, device: str = "auto",
          progress: bool = False, **overrides: Any) -> EmbedResult:
    """The encoder's features of every image into a safetensors file (and a CSV index); as `sslcli embed`."""
    build = partial(command_specs.embed_spec, encoder, data, out=out, batch_size=batch_size, device=device,
                                    overrides=_overrides(overrides))
    return _run("embed", build, EmbedResult, progress)


def load_encoder(path: str | Path):
    """An encoder.safetensors (or its run folder) as a timm model in eval mode, its pooled features out.

    `.transform` is its preprocessing for a PIL image, as sslcli's evaluation does it: the shorter side resized
    to the decode size with the encoder's resampling filter, the centre crop at its input size, normalised with
    its mean and std. `.sslcli_info` holds that metadata (name, image_size, mean, std, interpolation,
    feature_dim)."""
    from torchvision import transforms

    from sslcli import checkpoint
    from sslcli.data import storage_size_for

    model, info, _ = checkpoint.load_encoder(Path(command_specs.checked_encoder(path)))
    model.eval()
    model.transform = transforms.Compose([
        transforms.Lambda(lambda image: image.convert("RGB")),
        transforms.Resize(storage_size_for(info.image_size),
                          interpolation=transforms.InterpolationMode[info.interpolation.upper()]),
        transforms.CenterCrop(info.image_size),
        transforms.ToTensor(),
        transforms.Normalize(info.mean, info.std),
    ])
    model.sslcli_info = info
    return model
