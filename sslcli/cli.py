"""The command line: thin Typer commands that build a spec and hand it to a runner.

Heavy modules (torch, timm) are imported inside the commands so that `sslcli --help` stays instant.
Every failure ends here as one line on stderr and an exit code: 2 for bad input, 1 for runtime
failures, 130 for Ctrl-C. SSLCLI_DEBUG=1 shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer

from sslcli import __version__, console
from sslcli.errors import Interrupted, SslcliError

app = typer.Typer(
    name="sslcli",
    help="Self-supervised visual representation learning: pretrain an encoder on unlabeled images, then probe it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

SetOption = typer.Option(None, "--set", help="override any spec key, repeatable: --set train.epochs=10")
JsonOption = typer.Option(False, "--json", help="print the result as one JSON object on stdout")
QuietOption = typer.Option(False, "--quiet", "-q", help="no progress or info lines on stderr")
BadImageOption = typer.Option(None, "--on-bad-image", help="skip (default) or fail on unreadable images")
LabelFractionOption = typer.Option(None, "--label-fraction", help="train on a seeded class-balanced fraction of "
                                   "the labeled train split, e.g. 0.01 or 0.1")


def _reporting_rank() -> bool:
    """Under torchrun only rank 0 prints the result (the module is only loaded when a command uses it)."""
    module = sys.modules.get("sslcli.distributed")
    return module is None or module.is_main()


def closing_summary(s: dict[str, Any]) -> str:
    """pretrain's result for people: what ran, how fast, how good, and where the files are."""
    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.2f} %"

    lines = [f"{s['method']} · {s['encoder_name']} · {s['epochs']} epochs ({s['steps']} steps) · "
             f"{s['images_per_s']:.0f} images/s · {s['wall_s']:.0f} s · final loss {s['final_loss']:.4f}"]
    if s.get("knn_top1") is not None:
        lines.append(f"kNN top-1 {pct(s['knn_top1'])} · linear top-1 {pct(s.get('linear_top1'))}  "
                     "(online evaluation on the labeled eval split)")
    else:
        lines.append("kNN/linear: no labeled eval split (DATA with train/ and val/ or test/, or --val DIR); "
                     "`sslcli probe` scores the encoder later")
    if s.get("collapse_warnings"):
        lines.append(f"collapse warnings: {s['collapse_warnings']} (see metrics.jsonl)")
    lines.append(f"encoder {s['encoder']}")
    if s.get("report"):
        lines.append(f"report  {s['report']}/ (curves.png, neighbors.png, summary.json)")
    return "\n".join(lines)


def _version(value: bool) -> None:
    if value:
        console.result(f"sslcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    """sslcli: pretrain, probe, use."""


@app.command()
def pretrain(
    data: Path = typer.Argument(..., help="folder of images (ImageFolder or any nested folder); train/ is used if present"),
    method: str = typer.Option(None, "--method", "-m", help="simclr (default), mocov2, mocov3, byol, simsiam, swav, barlow, vicreg, dino or mae (sslcli methods)"),
    preset: str = typer.Option(None, "--preset", "-p", help="preset name (sslcli presets) or path to a .toml"),
    encoder: str = typer.Option(None, "--encoder", "-e", help="timm model name"),
    epochs: int = typer.Option(None, "--epochs", help="training epochs"),
    batch_size: int = typer.Option(None, "--batch-size", "-b", help="global batch size"),
    out: Path = typer.Option(None, "--out", "-o", help="run folder (default runs/<method>-<timestamp>)"),
    on_bad_image: str = BadImageOption,
    sets: list[str] = SetOption,
    resume: str = typer.Option(None, "--resume", help="auto (continue --out from its newest intact checkpoint, "
                               "or start it), a run folder, or a checkpoints/state-*.safetensors file"),
    force: bool = typer.Option(False, "--force", help="resume even if the spec fingerprint differs"),
    init_from: Path = typer.Option(None, "--init-from", help="a new run starting from this encoder.safetensors"),
    on_nan: str = typer.Option(None, "--on-nan", help="stop (default) or skip steps with a non-finite loss"),
    val: Path = typer.Option(None, "--val", help="labeled eval split for the online kNN (default: DATA's val/ or test/)"),
    sync_bn: bool = typer.Option(None, "--sync-bn/--no-sync-bn", help="under torchrun: batch norm over the global "
                                 "batch (default: as the method's paper)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the resolved spec and exit"),
    json_out: bool = JsonOption,
    quiet: bool = QuietOption,
) -> None:
    """Pretrain an encoder with a self-supervised method; writes RUN/encoder.safetensors."""
    console.configure(quiet=quiet)
    from sslcli.spec import PretrainSpec, dump, resolve

    options: dict[str, Any] = {
        "data.path": str(data), "method.name": method, "encoder.name": encoder, "train.epochs": epochs,
        "train.batch_size": batch_size, "out": str(out) if out else None, "data.on_bad_image": on_bad_image,
        "init_from": str(init_from) if init_from else None, "train.on_nan": on_nan, "train.sync_bn": sync_bn,
        "data.val": str(val) if val else None,
    }
    spec = resolve(PretrainSpec, preset=preset, options=options, sets=sets)
    if dry_run:
        console.result_json(dump(spec)) if json_out else console.result(spec.model_dump_json(indent=2))
        return
    from sslcli import pretrain as runner

    summary = runner.run(spec, resume=resume, force=force)
    if not _reporting_rank():
        return
    if json_out:
        console.result_json(summary)
    elif summary.get("already_complete"):
        console.result(f"encoder {summary['encoder']}  (already complete: {summary['steps']} steps)")
    else:
        console.result(closing_summary(summary))


@app.command()
def probe(
    encoder: Path = typer.Argument(..., help="an encoder.safetensors written by sslcli"),
    data: Path = typer.Option(..., "--data", "-d", help="labeled train split (or a folder with train/ and val/ or test/)"),
    val: Path = typer.Option(None, "--val", help="labeled eval split"),
    label_fraction: float = LabelFractionOption,
    on_bad_image: str = BadImageOption,
    sets: list[str] = SetOption,
    json_out: bool = JsonOption,
    quiet: bool = QuietOption,
) -> None:
    """Judge an encoder: weighted kNN (k=20, 200) and a linear probe on frozen features."""
    console.configure(quiet=quiet)
    from sslcli.spec import ProbeSpec, resolve

    options = {"encoder": str(encoder), "data": str(data), "val": str(val) if val else None,
               "on_bad_image": on_bad_image, "label_fraction": label_fraction}
    spec = resolve(ProbeSpec, options=options, sets=sets)
    from sslcli import probe as runner

    result = runner.run(spec)
    if not _reporting_rank():
        return
    if json_out:
        console.result_json(result)
    else:
        console.result(runner.format_table(result))


@app.command()
def finetune(
    encoder: Path = typer.Argument(..., help="an encoder.safetensors written by sslcli"),
    data: Path = typer.Option(..., "--data", "-d", help="labeled train split (or a folder with train/ and val/ or test/)"),
    val: Path = typer.Option(None, "--val", help="labeled eval split, scored after every epoch"),
    epochs: int = typer.Option(None, "--epochs", help="training epochs"),
    batch_size: int = typer.Option(None, "--batch-size", "-b", help="batch size"),
    label_fraction: float = LabelFractionOption,
    preset: str = typer.Option(None, "--preset", "-p", help="path to a .toml of finetune spec sections"),
    out: Path = typer.Option(None, "--out", "-o", help="output folder (default: finetune-<timestamp> beside ENCODER)"),
    on_bad_image: str = BadImageOption,
    sets: list[str] = SetOption,
    dry_run: bool = typer.Option(False, "--dry-run", help="print the resolved spec and exit"),
    json_out: bool = JsonOption,
    quiet: bool = QuietOption,
) -> None:
    """Fine-tune a classifier (the encoder plus a fresh head) on labeled images; writes classifier.safetensors."""
    console.configure(quiet=quiet)
    from sslcli.spec import FinetuneSpec, dump, resolve

    options: dict[str, Any] = {
        "encoder": str(encoder), "data.train": str(data), "data.val": str(val) if val else None,
        "data.label_fraction": label_fraction, "data.on_bad_image": on_bad_image, "train.epochs": epochs,
        "train.batch_size": batch_size, "out": str(out) if out else None,
    }
    spec = resolve(FinetuneSpec, preset=preset, options=options, sets=sets)
    if dry_run:
        console.result_json(dump(spec)) if json_out else console.result(spec.model_dump_json(indent=2))
        return
    from sslcli import finetune as runner

    result = runner.run(spec)
    if not _reporting_rank():
        return
    if json_out:
        console.result_json(result)
    else:
        console.result(f"classifier {result['classifier']}  val top-1 {100 * result['top1']:.2f}%  top-5 "
                       f"{100 * result['top5']:.2f}%  ({result['n_train']} train images, {result['steps']} steps, "
                       f"{result['wall_s']:.0f} s)")


@app.command()
def export(
    encoder: Path = typer.Argument(..., help="an encoder.safetensors written by sslcli"),
    to: str = typer.Option(..., "--to", help="timm (a local-dir model folder) or torchvision (ResNets)"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for model.safetensors and config.json"),
    json_out: bool = JsonOption,
    quiet: bool = QuietOption,
) -> None:
    """Export an encoder for timm (create_model("local-dir:DIR")) or torchvision (resnet18/34/50/...)."""
    console.configure(quiet=quiet)
    from sslcli import export as runner

    result = runner.export(encoder, to, out)
    if json_out:
        console.result_json(result)
    else:
        console.result(f"{result['weights']}  ({result['architecture']}, {result['tensors']} tensors; "
                       f"config {result['config']})")


@app.command()
def embed(
    encoder: Path = typer.Argument(..., help="an encoder.safetensors written by sslcli"),
    data: Path = typer.Option(..., "--data", "-d", help="folder of images (labeled or not)"),
    out: Path = typer.Option(..., "--out", "-o", help="embeddings file (.safetensors); the CSV index goes beside it"),
    batch_size: int = typer.Option(256, "--batch-size", "-b", help="images per forward pass"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N"),
    on_bad_image: str = typer.Option("skip", "--on-bad-image", help="skip (default) or fail on unreadable images"),
    json_out: bool = JsonOption,
    quiet: bool = QuietOption,
) -> None:
    """Write the encoder's features of every image: an [N, D] matrix in safetensors plus a CSV index."""
    console.configure(quiet=quiet)
    from sslcli import embed as runner
    from sslcli.errors import UsageError

    if on_bad_image not in ("skip", "fail"):
        raise UsageError(f"--on-bad-image must be skip or fail, not '{on_bad_image}'")
    result = runner.run(encoder, data, out, batch_size=batch_size, device=device, on_bad_image=on_bad_image)
    if json_out:
        console.result_json(result)
    else:
        console.result(f"{result['embeddings']}  ({result['count']} x {result['feature_dim']}; "
                       f"index {result['index']})")


@app.command()
def inspect(
    file: Path = typer.Argument(..., help="any sslcli artifact: encoder, classifier, training state, embeddings"),
    json_out: bool = JsonOption,
    quiet: bool = QuietOption,
) -> None:
    """Show what an sslcli artifact holds: its kind, metadata and tensor sizes."""
    console.configure(quiet=quiet)
    from sslcli import artifacts

    described = artifacts.describe(file)
    if json_out:
        console.result_json(described)
    else:
        console.result(artifacts.format_text(described))


@app.command()
def presets(json_out: bool = JsonOption, quiet: bool = QuietOption) -> None:
    """List the presets, one line each (with the kNN top-1 each is expected to reach, where measured)."""
    console.configure(quiet=quiet)
    from sslcli.spec import list_presets, preset_expectations

    rows = list_presets()
    expected = preset_expectations()
    if json_out:
        console.result_json({name: {"description": description, "expected": expected.get(name)}
                             for name, description in rows})
        return
    width = max((len(name) for name, _ in rows), default=0)
    for name, description in rows:
        e = expected.get(name)
        note = f"  [expect kNN {e['knn_top1']:.1f} % ± {e['tolerance']:.1f}]" if e else ""
        console.result(f"{name:<{width}}  {description}{note}")


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="a run folder written by sslcli pretrain"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N (for the neighbour features)"),
    json_out: bool = JsonOption,
    quiet: bool = QuietOption,
) -> None:
    """Regenerate RUN/report/: curves.png, neighbors.png and summary.json."""
    console.configure(quiet=quiet)
    from sslcli import report as runner

    summary = runner.regenerate(run_dir, device)
    if json_out:
        console.result_json(summary)
    else:
        console.result("\n".join(f"{name:<12} {path}" for name, path in summary["files"].items()))


@app.command()
def methods(json_out: bool = JsonOption, quiet: bool = QuietOption) -> None:
    """List the methods, one line each with its paper."""
    console.configure(quiet=quiet)
    from sslcli.methods import METHODS

    rows = {name: {"summary": cls.summary, "paper": cls.paper} for name, cls in METHODS.items()}
    if json_out:
        console.result_json(rows)
        return
    width = max(len(name) for name in rows)
    for name, row in rows.items():
        console.result(f"{name:<{width}}  {row['summary']}  {row['paper']}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app and turn every failure into one line and an exit code."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="sslcli", standalone_mode=False)
    except KeyboardInterrupt:
        console.error("interrupted")
        sys.exit(130)
    except Interrupted as exc:  # a clean stop after a checkpoint, not a failure
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


def _is_click_error(exc: Exception) -> bool:
    return type(exc).__module__.endswith("click.exceptions")


if __name__ == "__main__":
    main()
