"""The command line: thin Typer commands that build a spec and hand it to a command module.

Each command parses its options into a spec (spec.py, no torch), imports `sslcli.commands.<name>` only when
it runs, and prints what `run(spec)` returns through one emitter: text for people, one JSON line with
--json. Every failure ends here as one line on stderr and an exit code: 2 for bad input, 1 for runtime
failures, 130 for Ctrl-C. SSLCLI_DEBUG=1 shows the traceback instead.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperCommand

from sslcli import __version__, console
from sslcli.errors import Interrupted, SslcliError, Terminated


class Command(TyperCommand):
    """A command whose usage line reads `sslcli probe [OPTIONS] ENCODER`: typer writes required arguments
    as {ENCODER}, which reads like a placeholder to fill with braces."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [p[1:-1] if p.startswith("{") and p.endswith("}") else p for p in super().collect_usage_pieces(ctx)]


app = typer.Typer(
    name="sslcli",
    help="Self-supervised visual representation learning: pretrain an encoder on unlabeled images, then probe it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# Options several commands share, declared once.
JsonOption = typer.Option(False, "--json", help="print the result as one JSON object on stdout")
QuietOption = typer.Option(False, "--quiet", "-q", help="no progress or info lines on stderr")
BadImageOption = typer.Option(None, "--on-bad-image", help="skip (default) or fail on unreadable images")
LabelFractionOption = typer.Option(None, "--label-fraction", help="train on a seeded class-balanced fraction of "
                                   "the labeled train split, e.g. 0.01 or 0.1")
DryRunOption = typer.Option(False, "--dry-run", help="print the resolved spec and exit")
EpochsOption = typer.Option(None, "--epochs", help="training epochs")
EncoderArgument = typer.Argument(..., metavar="ENCODER", help="an encoder.safetensors written by sslcli pretrain, "
                                "or its run folder (probe, finetune: or pretrained:NAME, hf-hub:ORG/NAME, "
                                "local-dir:DIR)")
LabeledDataOption = typer.Option(..., "--data", "-d", help="labeled train split: class folders, a folder with "
                                 "train/ and val/ or test/, or a .csv list (path,label)")
DeviceOption = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N")
LogToOption = typer.Option(None, "--log-to", metavar="TRACKERS", help="also log to experiment trackers, comma-"
                           "separated: tensorboard, mlflow, wandb (each an extra: pip install 'sslcli[mlflow]')")


INTERRUPTED = "interrupted: stopped at once (Ctrl-C); nothing was saved at this point"


def _method_names() -> str:
    """The methods, one package each under sslcli/methods/, listed without importing them (--help stays fast)."""
    folder = Path(__file__).resolve().parent / "methods"
    return ", ".join(sorted(path.parent.name for path in folder.glob("*/config.py")))


def set_option(example: str) -> Any:
    return typer.Option(None, "--set", metavar="KEY=VALUE", help=f"override any spec key, repeatable: --set {example}")


def out_option(required: bool, help: str) -> Any:
    return typer.Option(... if required else None, "--out", "-o", help=help)


def batch_size_option(default: int | None, help: str) -> Any:
    return typer.Option(default, "--batch-size", "-b", help=help)


def _reporting_rank() -> bool:
    """Under torchrun only rank 0 prints the result (the module is only loaded when a command uses it)."""
    module = sys.modules.get("sslcli.distributed")
    return module is None or module.is_main()


def _run(command: str, spec: Any, json_out: bool, **options: Any) -> None:
    """Run sslcli.commands.<command> and print its result: one JSON line, or its text."""
    module = importlib.import_module(f"sslcli.commands.{command}")
    try:
        result = module.run(spec, **options) if spec is not None else module.run()
    except KeyboardInterrupt:  # Ctrl-C outside a training loop, or a second one inside it (typer would exit silently)
        raise SslcliError(INTERRUPTED, exit_code=130) from None
    if not _reporting_rank():
        return
    console.result_json(result) if json_out else console.result(module.format_text(result))
    if hasattr(module, "finish"):  # what a command writes after its result is out (probe's JSON file)
        module.finish(result)


def _dry_run(spec: Any, json_out: bool) -> None:
    from sslcli.spec import dump

    console.result_json(dump(spec)) if json_out else console.result(spec.model_dump_json(indent=2))


def _path(value: Path | None) -> str | None:
    return str(value) if value is not None else None


def _artifact(value: Path) -> str:
    """Any sslcli artifact (inspect), or a run folder's encoder.safetensors."""
    from sslcli.headers import encoder_file

    return str(encoder_file(value))


def _version(value: bool) -> None:
    if value:
        console.result(f"sslcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    """sslcli: pretrain, probe, use."""


@app.command(cls=Command)
def pretrain(
    data: Path = typer.Argument(..., metavar="DATA", help="folder of images (ImageFolder or any nested folder; "
                                "train/ is used if present) or a list file (.txt: a path per line; .csv: path[,label])"),
    method: str = typer.Option(None, "--method", "-m", help=f"{_method_names()} (default simclr; sslcli methods)"),
    preset: str = typer.Option(None, "--preset", "-p", help="preset name (sslcli presets) or path to a .toml"),
    encoder: str = typer.Option(None, "--encoder", "-e", help="timm model name"),
    epochs: int = EpochsOption,
    budget: str = typer.Option(None, "--budget", metavar="DURATION", help="train for this wall-clock time "
                               "(90s, 5m, 2h, 1h30m) instead of --epochs: a short calibration fits the schedule"),
    batch_size: int = batch_size_option(None, "global batch size"),
    out: Path = out_option(False, "run folder (default runs/<method>-<timestamp>)"),
    on_bad_image: str = BadImageOption,
    sets: list[str] = set_option("train.epochs=10"),
    resume: str = typer.Option(None, "--resume", help="auto (continue --out from its newest intact checkpoint, "
                               "or start it), a run folder, or a checkpoints/state-*.safetensors file"),
    force: bool = typer.Option(False, "--force", help="resume although the spec changed (batch, seed, optimizer "
                               "settings, augmentation: the new values take effect), or start over a run folder "
                               "whose checkpoints are damaged"),
    init_from: Path = typer.Option(None, "--init-from", help="a new run starting from this encoder.safetensors"),
    init: str = typer.Option(None, "--init", metavar="WEIGHTS", help="start from weights sslcli did not train: "
                             "pretrained (timm's for --encoder, from the Hugging Face Hub cache), hf-hub:ORG/NAME, "
                             "local-dir:DIR or a .safetensors FILE (timm or torchvision layout)"),
    on_nan: str = typer.Option(None, "--on-nan", help="stop (default) or skip steps with a non-finite loss"),
    val: Path = typer.Option(None, "--val", help="labeled eval split (folder or .csv) for the online kNN (default: "
                             "DATA's val/ or test/)"),
    sync_bn: bool = typer.Option(None, "--sync-bn/--no-sync-bn", help="under torchrun: batch norm over the global "
                                 "batch (default: as the method's paper)"),
    label_fraction: float = typer.Option(None, "--label-fraction", help="S4L semi-supervised: a seeded class-balanced "
                                         "fraction of DATA's labels (class folders) adds a supervised cross entropy "
                                         "on a linear head, e.g. 0.1"),
    log_to: str = LogToOption,
    dry_run: bool = DryRunOption,
    json_out: bool = JsonOption,
    quiet: bool = QuietOption,
) -> None:
    """Pretrain an encoder with a self-supervised method; writes RUN/encoder.safetensors."""
    console.configure(quiet=quiet)
    from sslcli.command_specs import pretrain_spec

    spec = pretrain_spec(data, method=method, preset=preset, encoder=encoder, epochs=epochs, budget=budget,
                         batch_size=batch_size, out=out, on_bad_image=on_bad_image, init_from=init_from, init=init,
                         on_nan=on_nan, val=val, sync_bn=sync_bn, label_fraction=label_fraction, log_to=log_to,
                         sets=sets)
    if dry_run:
        return _dry_run(spec, json_out)
    _run("pretrain", spec, json_out, resume=resume, force=force, started=_started)


@app.command(cls=Command)
def probe(
    encoder: Path = EncoderArgument,
    data: Path = LabeledDataOption,
    val: Path = typer.Option(None, "--val", help="labeled eval split (class folders or a .csv list)"),
    label_fraction: float = LabelFractionOption,
    on_bad_image: str = BadImageOption,
    baseline: str = typer.Option(None, "--baseline", metavar="random|pretrained|WEIGHTS", help="the references "
                                 "scored beside ENCODER: random (the same architecture at a seeded random init; the "
                                 "default), pretrained (also the starting weights its --init recorded) or WEIGHTS "
                                 "(also these: FILE, local-dir:DIR, hf-hub:ORG/NAME, pretrained:NAME)"),
    no_baseline: bool = typer.Option(False, "--no-baseline", help="no random-init reference (about halves the time)"),
    out: Path = out_option(False, "result JSON file (default: probe-<eval split>.json beside ENCODER)"),
    sets: list[str] = set_option("probe.knn_k=[10,20]"),
    json_out: bool = JsonOption,
    quiet: bool = QuietOption,
) -> None:
    """Judge an encoder: weighted kNN (k=20, 200) and a linear probe on frozen features, beside chance and a
    random-init encoder of the same architecture."""
    console.configure(quiet=quiet)
    from sslcli.command_specs import probe_spec

    spec = probe_spec(encoder, data, val=val, label_fraction=label_fraction, on_bad_image=on_bad_image,
                      baseline=baseline, no_baseline=no_baseline, out=out, sets=sets)
    _run("probe", spec, json_out)


@app.command(cls=Command)
def finetune(
    encoder: Path = EncoderArgument,
    data: Path = LabeledDataOption,
    val: Path = typer.Option(None, "--val", help="labeled eval split, scored after every epoch"),
    epochs: int = EpochsOption,
    batch_size: int = batch_size_option(None, "batch size"),
    label_fraction: float = LabelFractionOption,
    preset: str = typer.Option(None, "--preset", "-p", help="path to a .toml of finetune spec sections"),
    out: Path = out_option(False, "output folder (default: finetune-<timestamp> beside ENCODER)"),
    on_bad_image: str = BadImageOption,
    baseline: bool = typer.Option(None, "--baseline/--no-baseline", help="then fine-tune the same architecture "
                                  "from a seeded random init with the same recipe, the reference (doubles the time)"),
    keep_projection_layers: int = typer.Option(None, "--keep-projection-layers", metavar="N",
                                               help="SimCLR v2: keep the first N layers of the encoder's pretrained "
                                               "projection head between it and the classifier (SimCLR v2: 1)"),
    sla: bool = typer.Option(None, "--sla", help="SLA: joint (class, rotation) labels over the four rotations, "
                             "aggregated inference over them (4x the compute per image)"),
    sla_distill: bool = typer.Option(None, "--sla-distill", help="SLA with its self-distillation head: a plain "
                                     "C-way head learns the aggregated prediction and alone is saved (implies --sla)"),
    distill_from: Path = typer.Option(None, "--distill-from", metavar="CLASSIFIER", help="SimCLR v2 distillation: "
                                      "a classifier.safetensors sslcli finetune wrote; its soft labels of the --unlabeled "
                                      "images, on the very views the student sees, train ENCODER (the student)"),
    unlabeled: Path = typer.Option(None, "--unlabeled", metavar="DIR", help="the images the --distill-from teacher "
                                   "labels (a folder or list file)"),
    log_to: str = LogToOption,
    sets: list[str] = set_option("train.epochs=10"),
    dry_run: bool = DryRunOption,
    json_out: bool = JsonOption,
    quiet: bool = QuietOption,
) -> None:
    """Fine-tune a classifier (the encoder plus a fresh head) on labeled images; writes classifier.safetensors."""
    console.configure(quiet=quiet)
    from sslcli.command_specs import finetune_spec

    spec = finetune_spec(encoder, data, val=val, epochs=epochs, batch_size=batch_size, label_fraction=label_fraction,
                         preset=preset, out=out, on_bad_image=on_bad_image, baseline=baseline,
                         keep_projection_layers=keep_projection_layers, log_to=log_to, sla=sla,
                         sla_distill=sla_distill, distill_from=distill_from, unlabeled=unlabeled, sets=sets)
    if dry_run:
        return _dry_run(spec, json_out)
    if spec.keep_projection_layers and spec.encoder is not None:
        from sslcli.headers import checked_projector

        checked_projector(Path(spec.encoder))  # a missing or mismatched head is refused before torch loads
    if spec.distill.teacher is not None:
        from sslcli.headers import checked_classifier

        checked_classifier(Path(spec.distill.teacher))  # so is a teacher that is not a classifier
    _run("finetune", spec, json_out)


@app.command(cls=Command)
def export(
    encoder: Path = EncoderArgument,
    to: str = typer.Option(..., "--to", help="timm (a local-dir model folder), hf (the timm folder plus a model card "
                           "for the Hugging Face Hub), torchvision (ResNets) or onnx (one .onnx file)"),
    out: Path = out_option(True, "folder for model.safetensors and config.json; with --to onnx the .onnx file"),
    data: Path = typer.Option(None, "--data", "-d", help="--to onnx: images to verify the export on (default: a "
                              "seeded batch of random images)"),
    json_out: bool = JsonOption,
    quiet: bool = QuietOption,
) -> None:
    """Export an encoder for timm (create_model("local-dir:DIR")), the Hugging Face Hub, torchvision
    (resnet18/34/50/...) or ONNX runtimes."""
    console.configure(quiet=quiet)
    from sslcli.command_specs import export_spec

    _run("export", export_spec(encoder, to=to, out=out, data=data), json_out)


@app.command(cls=Command)
def embed(
    encoder: Path = EncoderArgument,
    data: Path = typer.Option(..., "--data", "-d", help="folder of images (labeled or not) or a list file (.txt, .csv)"),
    out: Path = out_option(True, "embeddings file; its suffix picks the format: .safetensors (the CSV index goes "
                           "beside it), .parquet (path, label, class, embedding) or .csv (path, label, class, e0...)"),
    batch_size: int = batch_size_option(256, "images per forward pass"),
    device: str = DeviceOption,
    on_bad_image: str = BadImageOption,
    json_out: bool = JsonOption,
    quiet: bool = QuietOption,
) -> None:
    """Write the encoder's features of every image: an [N, D] matrix in safetensors plus a CSV index, or one
    Parquet or CSV file with a row per image."""
    console.configure(quiet=quiet)
    from sslcli.command_specs import embed_spec

    _run("embed", embed_spec(encoder, data, out=out, batch_size=batch_size, device=device,
                             on_bad_image=on_bad_image), json_out)


@app.command(cls=Command)
def neighbors(
    embeddings: Path = typer.Argument(..., metavar="EMBEDDINGS", help="embeddings written by sslcli embed: a "
                                      ".safetensors (its CSV index beside it), a .parquet or a .csv"),
    query: str = typer.Option(..., "--query", help="an image file, or a path in the embeddings' index"),
    k: int = typer.Option(10, "-k", "--k", help="how many neighbours"),
    encoder: Path = typer.Option(None, "--encoder", "-e", help="the encoder that embeds an image query (default: the "
                                 "one the embeddings were made with, as they record it)"),
    png: Path = typer.Option(None, "--png", help="draw the query and its neighbours into this PNG"),
    device: str = DeviceOption,
    json_out: bool = JsonOption,
    quiet: bool = QuietOption,
) -> None:
    """The k images nearest to a query among embeddings (cosine similarity, exact search)."""
    console.configure(quiet=quiet)
    from sslcli.command_specs import neighbors_spec

    _run("neighbors", neighbors_spec(embeddings, query=query, k=k, encoder=encoder, png=png, device=device), json_out)


@app.command(cls=Command)
def inspect(
    file: Path = typer.Argument(..., metavar="FILE", help="any sslcli artifact: encoder, classifier, training state, embeddings"),
    json_out: bool = JsonOption,
    quiet: bool = QuietOption,
) -> None:
    """Show what an sslcli artifact holds: its kind, metadata and tensor sizes."""
    console.configure(quiet=quiet)
    from sslcli.spec import InspectSpec, resolve

    _run("inspect", resolve(InspectSpec, options={"file": _artifact(file)}), json_out)


@app.command(cls=Command)
def presets(json_out: bool = JsonOption, quiet: bool = QuietOption) -> None:
    """List the presets, one line each (with the kNN top-1 each is expected to reach, where measured)."""
    console.configure(quiet=quiet)
    _run("presets", None, json_out)


@app.command(cls=Command)
def report(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="a run folder written by sslcli pretrain"),
    val: Path = typer.Option(None, "--val", help="labeled eval split for neighbors.png (default: the run's --val, "
                             "or DATA's val/ or test/)"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N (for the neighbour features)"),
    map_: bool = typer.Option(False, "--map", help="also draw report/map.png: the eval images' features in 2-D "
                              "(UMAP, else t-SNE, else PCA), coloured by class"),
    json_out: bool = JsonOption,
    quiet: bool = QuietOption,
) -> None:
    """Regenerate RUN/report/: curves.png, neighbors.png and summary.json (and map.png with --map)."""
    console.configure(quiet=quiet)
    from sslcli.spec import ReportSpec, resolve

    options = {"run_dir": str(run_dir), "device": device, "val": _path(val), "map": map_}
    _run("report", resolve(ReportSpec, options=options), json_out)


@app.command(cls=Command)
def methods(json_out: bool = JsonOption, quiet: bool = QuietOption) -> None:
    """List the methods, one line each with its paper."""
    console.configure(quiet=quiet)
    _run("methods", None, json_out)


_started = time.perf_counter()  # when the command started: --budget counts its loading of torch too


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM outside a training loop (which stops at a step boundary by itself): stop as Ctrl-C does, by an
    exception, so what is half-written (a decode cache being built) is removed on the way out. A forked child
    (a DataLoader worker) inherits the handler and ends as SIGTERM ends it by default."""
    if os.getpid() != _main_pid:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise Terminated(f"stopped by {signal.Signals(signum).name}; nothing half-written was kept", signum)


_main_pid = os.getpid()


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app and turn every failure into one line and an exit code."""
    global _started, _main_pid
    _started, _main_pid = time.perf_counter(), os.getpid()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
    _route_python_warnings()
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="sslcli", standalone_mode=False)
    except KeyboardInterrupt:
        console.error(INTERRUPTED)
        sys.exit(130)
    except (Interrupted, Terminated) as exc:  # a clean stop (after a checkpoint, or with nothing half-written)
        console.warn(str(exc))
        sys.exit(exc.exit_code)
    except SslcliError as exc:
        if os.environ.get("SSLCLI_DEBUG") == "1":
            raise
        for line in str(exc).splitlines():
            console.error(line)
        sys.exit(exc.exit_code)
    except Exception as exc:
        if _is_click_error(exc):  # usage errors from the parser (click, or the copy typer vendors)
            if type(exc).__name__ == "Abort":
                console.error("interrupted")
                sys.exit(130)
            ctx = getattr(exc, "ctx", None)
            where = f"sslcli {ctx.info_name}" if ctx is not None and ctx.parent is not None else "sslcli"
            console.error(f"{exc.format_message()} (see: {where} --help)")
            sys.exit(exc.exit_code)
        if os.environ.get("SSLCLI_DEBUG") == "1":
            raise
        console.error(f"{type(exc).__name__}: {exc} (run with SSLCLI_DEBUG=1 for the traceback)")
        sys.exit(1)
    finally:
        if "sslcli.distributed" in sys.modules:  # leave torchrun's process group cleanly, whatever happened
            sys.modules["sslcli.distributed"].shutdown()
    sys.exit(code if isinstance(code, int) else 0)


def _route_python_warnings() -> None:
    """Python's warnings (from torch, numpy, PIL) as one line each, like sslcli's own, once per message."""
    seen: set[str] = set()

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        text = f"{category.__name__}: {str(message).strip().splitlines()[0] if str(message).strip() else ''}"
        if text not in seen:
            seen.add(text)
            console.warn(text)

    warnings.showwarning = show


def _is_click_error(exc: Exception) -> bool:
    return type(exc).__module__.endswith("click.exceptions")


if __name__ == "__main__":
    main()
