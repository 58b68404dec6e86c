"""The first hour of a new user: messages that are true, every score with its baseline, runs that
explain themselves. One test per message: the exact situation, the one line, the exit code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from sslcli import console
from sslcli.spec import resolve
from tests.test_cli import assert_one_clean_error, sslcli_run

COMMANDS = ["pretrain", "probe", "finetune", "export", "embed", "neighbors", "inspect", "presets", "report", "methods"]


def flat_copy(labeled: Path, dst: Path) -> Path:
    """The images of an ImageFolder tree as one unlabeled folder of symlinks."""
    dst.mkdir()
    for file in sorted(p for p in labeled.rglob("*") if p.is_file() or p.is_symlink()):
        (dst / f"{file.parent.name}-{file.name}").symlink_to(file)
    return dst


@pytest.fixture(scope="module")
def unlabeled_run(cifar_small: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    """One epoch on 400 unlabeled images plus one unreadable file, no --val: no online kNN, no neighbours."""
    tmp = tmp_path_factory.mktemp("unlabeled")
    data = flat_copy(cifar_small / "train", tmp / "flat")
    (data / "broken.jpg").write_bytes(b"not a jpeg")
    run = tmp / "run"
    proc = sslcli_run("pretrain", str(data), "--preset", "quickstart", "--epochs", "1", "--batch-size", "128",
                      "--set", "method.proj_hidden_dim=64", "--out", str(run))
    assert proc.returncode == 0, proc.stderr
    return data, run, proc


# ---------------------------------------------------------------- 1. messages that are true


def test_summary_lists_only_the_report_files_drawn(unlabeled_run):
    _, run, proc = unlabeled_run
    report_line = next(line for line in proc.stdout.splitlines() if line.startswith("report"))
    assert report_line == f"report  {run / 'report'}/ (curves.png, summary.json)"
    assert not (run / "report" / "neighbors.png").exists()
    summary = json.loads((run / "report" / "summary.json").read_text())
    assert set(summary["files"]) == {"curves.png", "summary.json", "encoder"}


def test_image_count_is_what_trains_and_plurals_are_right(unlabeled_run):
    _, _, proc = unlabeled_run
    header = next(line for line in proc.stderr.splitlines() if line.startswith("run folder"))
    assert "400 images (1 unreadable skipped) at 32 px, 3 steps/epoch x 1 epoch on" in header
    assert " · 1 epoch (3 steps) · " in proc.stdout.splitlines()[0]


def test_report_val_draws_neighbours_for_an_unlabeled_run(unlabeled_run, cifar_small: Path, tmp_path: Path):
    _, run, _ = unlabeled_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    proc = sslcli_run("report", str(copy), "--val", str(cifar_small / "test"), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert "neighbors.png" in summary["files"] and (copy / "report" / "neighbors.png").is_file()
    assert summary["chance"] == 0.1
    missing = sslcli_run("report", str(copy), "--val", str(tmp_path / "nope"))
    assert_one_clean_error(missing, 2, "does not exist", "--val")


def test_bad_image_warnings_are_not_printed_by_a_refused_run(unlabeled_run):
    data, run, _ = unlabeled_run
    proc = sslcli_run("pretrain", str(data), "--preset", "quickstart", "--epochs", "1", "--batch-size", "128",
                      "--out", str(run), "--quiet")
    assert "broken.jpg" not in proc.stderr
    assert_one_clean_error(proc, 2, "already")


def test_probe_on_a_folder_without_images_says_so(encoder_file: Path, tmp_path: Path, cifar_small: Path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    proc = sslcli_run("probe", str(encoder_file), "--data", str(tmp_path / "empty"))
    assert_one_clean_error(proc, 2, f"no images found in {tmp_path / 'empty'}", "point --data at a folder")
    proc = sslcli_run("probe", str(encoder_file), "--data", str(cifar_small / "train"), "--val",
                      str(tmp_path / "empty"))
    assert_one_clean_error(proc, 2, f"no images found in {tmp_path / 'empty'}", "point --val at a folder")


@pytest.mark.parametrize(("command", "content", "kind"), [
    ("probe", b'{"weights": [1, 2]}', "JSON text"), ("probe", b"hello\n", "a text file"),
    ("probe", None, "a PNG image"), ("finetune", b"{}", "JSON text"), ("embed", None, "a PNG image"),
    ("export", b"hello\n", "a text file"), ("inspect", b"[1]", "JSON text")])
def test_a_file_that_is_not_an_encoder_says_what_it_is(tmp_path: Path, content: bytes | None, kind: str,
                                                       command: str):
    path = tmp_path / "encoder.safetensors"
    if content is None:
        Image.new("RGB", (8, 8)).save(path, format="PNG")
    else:
        path.write_bytes(content)
    extra = {"probe": ["--data", str(tmp_path)], "finetune": ["--data", str(tmp_path)],
             "embed": ["--data", str(tmp_path), "--out", str(tmp_path / "e.safetensors")],
             "export": ["--to", "timm", "--out", str(tmp_path / "x")], "inspect": []}[command]
    proc = sslcli_run(command, str(path), *extra)
    expected = "an sslcli artifact" if command == "inspect" else "an encoder.safetensors written by `sslcli pretrain`"
    assert_one_clean_error(proc, 2, f"{path} is not a safetensors file (it is {kind}); expected {expected}")


def test_a_run_folder_given_as_encoder_uses_its_encoder(encoder_file: Path, tmp_path: Path):
    run = tmp_path / "my1"
    run.mkdir()
    shutil.copy(encoder_file, run / "encoder.safetensors")
    proc = sslcli_run("inspect", str(run))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [f"{run} is a run folder: using {run / 'encoder.safetensors'}"]
    assert proc.stdout.startswith(f"{run / 'encoder.safetensors'}: encoder, ")
    exported = sslcli_run("export", str(run), "--to", "timm", "--out", str(tmp_path / "x"), "--json")
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)["encoder"] == str(run / "encoder.safetensors")
    empty = tmp_path / "empty-run"
    empty.mkdir()
    assert_one_clean_error(sslcli_run("probe", str(empty), "--data", str(tmp_path)), 2,
                           f"{empty} is a folder without encoder.safetensors")


def test_a_classifier_given_as_encoder_is_named(encoder_file: Path, tmp_path: Path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(encoder_file), "pt") as f:
        meta = {**f.metadata(), "sslcli_format": "sslcli.classifier.v1"}
    save_file(load_file(encoder_file), tmp_path / "classifier.safetensors", metadata=meta)
    proc = sslcli_run("export", str(tmp_path / "classifier.safetensors"), "--to", "timm", "--out", str(tmp_path / "x"))
    assert_one_clean_error(proc, 2, "is not an sslcli encoder (it is an sslcli classifier (sslcli finetune))")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_no_braces_or_type_placeholders_in_usage(command: str):
    proc = sslcli_run(command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "{" not in proc.stdout and "}" not in proc.stdout and "list[" not in proc.stdout
    usage = proc.stdout.splitlines()[0]
    argument = {"pretrain": "DATA", "inspect": "FILE", "report": "RUN_DIR", "neighbors": "EMBEDDINGS",
                "presets": "[OPTIONS]", "methods": "[OPTIONS]"}.get(command, "ENCODER")
    assert usage == f"Usage: sslcli {command} [OPTIONS]" + ("" if argument == "[OPTIONS]" else f" {argument}")


def test_plural():
    assert console.plural(1, "epoch") == "1 epoch" and console.plural(2, "epoch") == "2 epochs"
    assert console.plural(1, "step/epoch") == "1 step/epoch" and console.plural(0, "step/epoch") == "0 steps/epoch"


# ---------------------------------------------------------------- 2. every score with its baseline


def test_probe_prints_chance_and_a_seeded_random_init_baseline(encoder_file: Path, cifar_tiny: Path, tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(encoder_file, run / "encoder.safetensors")  # a resnet10t at random init, seed 0
    proc = sslcli_run("probe", str(run), "--data", str(cifar_tiny), "--set", "probe.knn_k=[20]", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["chance"] == 0.1
    # The baseline is the same architecture at seed 0: here that is the very encoder probed, score for score.
    assert result["baseline"]["knn"] == result["knn"] and result["baseline"]["linear"] == result["linear"]
    assert result["baseline"]["seed"] == 0
    text = sslcli_run("probe", str(run / "encoder.safetensors"), "--data", str(cifar_tiny), "--set", "probe.knn_k=[20]")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].split()[-3:] == ["random", "init", "top-1"]
    knn = result["knn"]["k20"]["top1"]
    assert lines[1].split() == ["kNN", "k=20", f"{100 * knn:.2f}%", f"{100 * result['knn']['k20']['top5']:.2f}%",
                                f"{100 * knn:.2f}%"]
    assert lines[3] == "chance 10.00 % (1 / 10 classes)"
    off = sslcli_run("probe", str(run), "--data", str(cifar_tiny), "--set", "probe.knn_k=[20]", "--no-baseline", "--json")
    assert off.returncode == 0, off.stderr
    assert json.loads(off.stdout)["baseline"] is None and json.loads(off.stdout)["knn"] == result["knn"]


# ---------------------------------------------------------------- 3. the online kNN from epoch 0, beside chance


def test_curves_draw_a_chance_line_in_the_knn_panel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from sslcli import report

    drawn = {}
    monkeypatch.setattr(report, "_save", lambda fig, path: drawn.setdefault("fig", fig))
    records = [{"step": 0, "epoch": 0, "knn_top1": 0.33, "knn_chance": 0.1},
               {"step": 5, "epoch": 1, "loss": 3.0, "lr": 0.1},
               {"step": 5, "epoch": 1, "knn_top1": 0.35, "knn_chance": 0.1}]
    report.curves_png(records, tmp_path / "curves.png", "t")
    knn_panel = drawn["fig"].axes[2]
    assert knn_panel.get_title() == "online kNN top-1 (%)"
    chance = [line for line in knn_panel.lines if line.get_label() == "chance"]
    assert len(chance) == 1 and list(chance[0].get_ydata()) == [10.0, 10.0]
    assert knn_panel.get_ylim()[0] <= 10 < 33 < knn_panel.get_ylim()[1]  # noise around 33 % is not the whole scale
    drawn.clear()
    report.curves_png(records[1:2], tmp_path / "curves.png", "t")  # no kNN: no chance line either
    assert not [line for line in drawn["fig"].axes[2].lines if line.get_label() == "chance"]


# ---------------------------------------------------------------- 4. interrupts and finished runs


def test_a_second_ctrl_c_says_what_was_kept(cifar_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from sslcli import train
    from sslcli.commands import pretrain
    from sslcli.errors import Interrupted
    from tests.test_resume import spec_for

    real, calls = train._Loop.synchronous_step, {"n": 0}

    def second_ctrl_c(*args, **kwargs):  # what train.py's handler does on a second SIGINT
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train._Loop, "synchronous_step", second_ctrl_c)
    run = tmp_path / "run"
    with pytest.raises(Interrupted) as stopped:
        pretrain.run(spec_for(cifar_small, run))  # a checkpoint after epoch 1 (step 4), stopped in step 6
    assert str(stopped.value) == (f"interrupted again: stopped at once without a checkpoint; the last checkpoint "
                                  f"(step 4) is intact; --out {run} --resume auto continues from it")
    assert stopped.value.exit_code == 130


def test_ctrl_c_outside_training_is_one_line_and_exit_130(monkeypatch: pytest.MonkeyPatch, capsys, tmp_path: Path):
    from sslcli import cli
    from sslcli.commands import methods

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(methods, "run", interrupted)
    with pytest.raises(SystemExit) as exited:
        cli.main(["methods"])
    assert exited.value.code == 130
    err = capsys.readouterr().err
    assert err == "error: interrupted: stopped at once (Ctrl-C); nothing was saved at this point\n"


def test_metrics_after_the_resumed_step_are_dropped(tmp_path: Path):
    from sslcli.resume import drop_metrics_after

    path = tmp_path / "metrics.jsonl"
    lines = [{"step": 0, "knn_top1": 0.3}, {"step": 1, "loss": 3}, {"step": 2, "loss": 2.9}, {"step": 3, "loss": 2.8}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 4, "lo')  # cut short by a kill
    assert drop_metrics_after(path, 2) == 2
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0, 1, 2]
    assert drop_metrics_after(path, 0) == 3 and path.read_text() == ""  # a fresh start keeps nothing
    assert drop_metrics_after(tmp_path / "none.jsonl", 0) == 0


def test_restart_without_checkpoint_and_resume_keep_one_history(cifar_small: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch):
    from sslcli import train
    from sslcli.commands import pretrain
    from sslcli.errors import Interrupted
    from tests.test_resume import STEPS_PER_EPOCH, spec_for

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "loss": 8.0}\n')  # an attempt killed early
    real, calls = train._Loop.synchronous_step, {"n": 0}

    def stop_at_6(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(train._Loop, "synchronous_step", stop_at_6)
        with pytest.raises(Interrupted):
            pretrain.run(spec_for(cifar_small, run), resume="auto")  # no checkpoint: starts afresh
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5], "the killed attempt's records are gone; step 6 never finished"
    done = pretrain.run(spec_for(cifar_small, run), resume="auto")
    assert done["resumed_from_step"] == STEPS_PER_EPOCH
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 2 * STEPS_PER_EPOCH + 1)), "one history: step 5 of the stopped attempt dropped"


def test_a_finished_run_says_how_to_train_further(cifar_small: Path, tmp_path: Path, caplog, capsys):
    from sslcli.commands import pretrain
    from sslcli.errors import UsageError
    from tests.test_resume import spec_for

    run = tmp_path / "run"
    pretrain.run(spec_for(cifar_small, run))
    capsys.readouterr()
    again = pretrain.run(spec_for(cifar_small, run), resume="auto")
    assert again["already_complete"]
    err = capsys.readouterr().err
    further = f"To train further, start a new run from its weights with the schedule you want: --init-from " \
              f"{run / 'encoder.safetensors'} --out NEW_RUN_DIR"
    assert f"{run} holds a finished run (8/8 steps), so there is nothing to resume: it is complete. {further}" in err
    longer = spec_for(cifar_small, run, **{"train.epochs": "3"})
    with pytest.raises(UsageError) as refused:
        pretrain.run(longer, resume="auto")
    assert str(refused.value) == (f"{run} holds a finished run (8 steps) and a finished schedule is not extended "
                                  f"(its learning rate has decayed): it is complete. {further}")
    with pytest.raises(UsageError) as refused:
        pretrain.run(spec_for(cifar_small, run))
    assert str(refused.value) == f"{run} already holds a finished run (8/8 steps): it is complete. {further}"


# ---------------------------------------------------------------- 5. runs too short to mean much


def test_a_run_shorter_than_its_warm_up_and_log_every_warns_once(unlabeled_run):
    _, _, proc = unlabeled_run  # quickstart for 1 epoch: 3 steps, a 1-epoch warm-up, log_every 20
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: this run")]
    assert warnings == [
        "warning: this run (3 steps) is no longer than its warm-up (3 steps: optim.warmup_epochs 1 x 3 steps/epoch), "
        "so the learning rate never reaches its peak; train longer or lower optim.warmup_epochs",
        "warning: this run (3 steps) is no longer than train.log_every (20): only its last step is logged and the "
        "curves will be single dots; --set train.log_every=1 logs more"]


def test_a_short_fine_tune_warns_and_prints_chance(encoder_file: Path, cifar_small: Path, tmp_path: Path):
    proc = sslcli_run("finetune", str(encoder_file), "--data", str(cifar_small), "--epochs", "1", "--batch-size", "64",
                      "--out", str(tmp_path / "ft"))
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: this fine-tune is only 6 steps: its score says little about the encoder; give it "
                        "at least 100 steps (--epochs 17 here)"]
    assert "(chance 10.00 %: 1 / 10 classes)" in proc.stdout and "6 steps" in proc.stdout
    assert json.loads((tmp_path / "ft" / "finetune.json").read_text())["chance"] == 0.1


def test_finetune_baseline_is_the_same_recipe_from_a_seeded_random_init(encoder_file: Path, cifar_small: Path,
                                                                      tmp_path: Path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from sslcli.commands import finetune
    from sslcli.spec import FinetuneSpec

    # A "pretrained" encoder: the seed-0 random init (encoder_file) with every weight halved.
    with safe_open(str(encoder_file), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    pretrained = tmp_path / "pretrained.safetensors"
    save_file({k: v * 0.5 if v.is_floating_point() else v for k, v in tensors.items()}, str(pretrained), meta)

    def tune(encoder: Path, out: str, baseline: bool) -> dict:
        spec = resolve(FinetuneSpec, options={"encoder": str(encoder), "data.path": str(cifar_small),
                                              "train.epochs": 1, "train.batch_size": 64, "out": str(tmp_path / out),
                                              "baseline": baseline}, sets=["data.num_workers=0"])
        return finetune.run(spec)

    with_baseline = tune(pretrained, "ft", baseline=True)
    random_init = tune(encoder_file, "ft-random", baseline=False)
    # The baseline is exactly the fine-tune of the seed-0 random init, step for step...
    assert with_baseline["baseline"]["final_loss"] == random_init["final_loss"]
    assert with_baseline["baseline"]["history"] == random_init["history"] and with_baseline["baseline"]["seed"] == 0
    # ...and not the encoder given (negative control), whose classifier it did not overwrite.
    assert with_baseline["final_loss"] != random_init["final_loss"]
    saved = json.loads((tmp_path / "ft" / "finetune.json").read_text())
    assert saved["baseline"]["top1"] == with_baseline["baseline"]["top1"] and saved["final_loss"] == with_baseline["final_loss"]
    assert (tmp_path / "ft" / "baseline-metrics.jsonl").is_file() and (tmp_path / "ft" / "metrics.jsonl").is_file()
    assert random_init["baseline"] is None and not (tmp_path / "ft-random" / "baseline-metrics.jsonl").exists()
    text = finetune.format_text(with_baseline)
    assert f"random init: val top-1 {100 * random_init['top1']:.2f}%" in text and "chance 10.00 %" in text
    assert "random init" not in finetune.format_text(random_init)


def test_finetune_baseline_flag_sets_the_spec(encoder_file: Path, cifar_small: Path):
    for flag, value in (("--baseline", True), ("--no-baseline", False), (None, False)):
        proc = sslcli_run("finetune", str(encoder_file), "--data", str(cifar_small), *([flag] if flag else []),
                          "--dry-run", "--json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["baseline"] is value


# ---------------------------------------------------------------- 6. data.image_size=auto


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few 500x375 JPEG photos (and one unreadable file, which says nothing about the size)."""
    root = tmp_path_factory.mktemp("photos")
    for i in range(6):
        Image.new("RGB", (500, 375), (40 * i, 100, 200)).save(root / f"photo{i}.jpg", quality=80)
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    return root


@pytest.mark.parametrize(("side", "size"), [(32, 32), (40, 32), (64, 64), (96, 96), (112, 96), (150, 160),
                                             (200, 224), (375, 224), (3000, 224)])
def test_size_rule(side: float, size: int):
    from sslcli.sizing import size_for

    assert size_for(side) == size


def test_auto_image_size_follows_the_data(cifar10: Path, photos: Path):
    from sslcli.spec import PretrainSpec, resolve

    imagenette = cifar10.parent / "imagenette"
    for data, size in ((cifar10, 32), (imagenette, 96), (photos, 224)):
        spec = resolve(PretrainSpec, options={"data.path": str(data)})
        assert spec.data.image_size == size and spec.augment.size == size, data
    explicit = resolve(PretrainSpec, options={"data.path": str(photos)}, sets=["data.image_size=64"])
    assert explicit.data.image_size == 64  # an explicit value wins
    preset = resolve(PretrainSpec, preset="simclr-cifar10", options={"data.path": str(photos)})
    assert preset.data.image_size == 32  # presets set their size explicitly: unchanged
    # MAE's patch size is a default that depends on the size: it sees the resolved one.
    mae = {data: resolve(PretrainSpec, options={"data.path": str(data), "method.name": "mae"})
           for data in (cifar10, imagenette)}
    assert mae[cifar10].encoder.kwargs["patch_size"] == 4 and mae[imagenette].encoder.kwargs["patch_size"] == 12


def test_dry_run_shows_the_auto_size_and_why(photos: Path):
    proc = sslcli_run("pretrain", str(photos), "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["data"]["image_size"] == 224
    assert proc.stderr.splitlines() == ["data.image_size auto: 224 px (median shorter side 375 px over 6 sampled "
                                        "images; --set data.image_size=N to choose)"]


def test_auto_size_without_images_is_the_data_error(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    proc = sslcli_run("pretrain", str(tmp_path / "empty"), "--out", str(tmp_path / "run"))
    assert_one_clean_error(proc, 2, "no images found")
