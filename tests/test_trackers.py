"""--log-to: TensorBoard, MLflow and W&B get the run's metrics, spec, report and results, read back with each
tracker's own reader; a resumed run continues the same tracker run and sends no step twice."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sslcli.errors import Interrupted, UsageError
from sslcli.spec import FinetuneSpec, PretrainSpec, resolve
from tests.helpers import wandb_history
from tests.test_resume import spec_for, stop_after

ALL = "tensorboard,mlflow,wandb"


@pytest.fixture(autouse=True)
def _offline_trackers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No tracker reaches the network or the user's home: W&B offline, MLflow's default store in the run."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    return scalars | {"_images": events.Tags()["images"], "_text": events.Tags()["tensors"]}


def mlflow_client(run: Path):
    import os

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow import MlflowClient

    return MlflowClient((run / "mlruns").resolve().as_uri())


def metrics_of(run: Path, key: str) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r[key]) for r in records if key in r]


def test_log_to_is_a_comma_list_of_known_trackers():
    spec = resolve(PretrainSpec, options={"logging.to": "tensorboard, wandb,tensorboard"})
    assert spec.logging.to == ["tensorboard", "wandb"]
    assert resolve(FinetuneSpec, sets=["logging.to=[\"mlflow\"]"]).logging.to == ["mlflow"]
    assert resolve(PretrainSpec).logging.to == []
    with pytest.raises(UsageError, match="logging.to"):
        resolve(PretrainSpec, options={"logging.to": "tensorbord"})


MISSING = """
import sys
sys.modules["mlflow"] = None  # as if the extra were not installed
from sslcli.cli import main
main(sys.argv[1:])
"""


def test_a_tracker_that_is_not_installed_is_one_line_and_exit_2_before_training(cifar_tiny: Path, tmp_path: Path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", MISSING, "pretrain", str(cifar_tiny), "--out", str(out),
                           "--log-to", "tensorboard,mlflow", "--epochs", "1"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith(("error", "warning"))] == [
        "error: --log-to mlflow: the mlflow package is not installed; pip install 'sslcli[mlflow]'"]
    assert not out.exists()  # refused before a run folder was made


@pytest.mark.slow
def test_every_tracker_gets_the_run_and_a_resume_continues_it_without_repeating_a_step(
        cifar_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from sslcli import checkpoint
    from sslcli.commands import pretrain

    run = tmp_path / "run"
    spec = spec_for(cifar_small, run, monitored=True, **{"logging.to": ALL})
    with monkeypatch.context() as m:  # stopped during step 6 (SIGUSR1): a checkpoint at 6, the trackers hold 6
        stop_after(m, 6)
        with pytest.raises(Interrupted):
            pretrain.run(spec)
    first = json.loads((run / "trackers.json").read_text())
    assert {name: first[name]["sent_to"] for name in first} == {"tensorboard": 6, "mlflow": 6, "wandb": 6}
    # The newest checkpoint lost (a kill before it was written): the run continues from step 4, so steps 5 and 6
    # are trained again, and the trackers, which hold them already, must not get them twice.
    checkpoint.complete_states(run / "checkpoints")[-1].unlink()
    result = pretrain.run(spec, resume="auto")
    assert result["resumed_from_step"] == 4 and result["steps"] == 8
    state = json.loads((run / "trackers.json").read_text())
    assert {name: state[name]["run_id"] for name in state} == {name: first[name]["run_id"] for name in first}

    losses = metrics_of(run, "loss")
    assert [s for s, _ in losses] == list(range(1, 9))

    scalars = tensorboard_scalars(run / "tensorboard")
    assert [s for s, _ in scalars["loss"]] == list(range(1, 9))  # each step once, across both processes
    assert [v for _, v in scalars["loss"]] == pytest.approx([v for _, v in losses], rel=1e-6)
    assert [s for s, _ in scalars["knn_top1"]] == [s for s, _ in metrics_of(run, "knn_top1")] == [0, 4, 8]
    assert {"lr", "images_per_s", "features_effective_rank", "final/knn_top1"} <= scalars.keys()
    assert {"report/curves", "report/neighbors"} <= set(scalars["_images"])
    assert "spec" in " ".join(scalars["_text"])

    client = mlflow_client(run)
    run_id = state["mlflow"]["run_id"]
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == list(range(1, 9))
    finished = client.get_run(run_id)
    assert finished.info.status == "FINISHED"
    assert finished.data.params["train.batch_size"] == "32" and finished.data.params["method.name"] == "simclr"
    assert finished.data.metrics["final/steps"] == 8
    artifacts = {f.path for folder in ("", "model", "report") for f in client.list_artifacts(run_id, folder)}
    assert {"model/encoder.safetensors", "report/curves.png", "result.json", "spec.json"} <= artifacts

    files = sorted((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2  # one per process, the same run
    steps = []
    for file in files:
        run_id, rows = wandb_history(file)
        assert run_id == state["wandb"]["run_id"]
        steps += [row["_step"] for row in rows if "loss" in row]
    assert steps == list(range(1, 9))


@pytest.mark.slow
def test_finetune_logs_its_metrics_and_classifier(resnet10t_encoder: Path, cifar_tiny: Path, tmp_path: Path):
    from sslcli.commands import finetune

    out = tmp_path / "ft"
    spec = resolve(FinetuneSpec, options={"encoder": str(resnet10t_encoder), "data.path": str(cifar_tiny),
                                          "out": str(out), "logging.to": "tensorboard,mlflow"},
                   sets=["train.epochs=2", "train.batch_size=25", "train.log_every=1", "data.num_workers=0"])
    result = finetune.run(spec)
    scalars = tensorboard_scalars(out / "tensorboard")
    assert [s for s, _ in scalars["val_top1"]] == [h["step"] for h in result["history"]]
    assert scalars["final/top1"][-1][1] == pytest.approx(result["top1"])
    client = mlflow_client(out)
    run_id = json.loads((out / "trackers.json").read_text())["mlflow"]["run_id"]
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [s for s, _ in metrics_of(out, "loss")]
    assert "model/classifier.safetensors" in {f.path for f in client.list_artifacts(run_id, "model")}


# ---------------------------------------------------------------- a tracker that fails


TINY = ["--epochs", "2", "--batch-size", "32", "--set", "encoder.name=resnet10t", "--set", "encoder.small_stem=false",
        "--set", "method.proj_hidden_dim=64", "--set", "monitor.knn_every=0", "--set", "monitor.report=false",
        "--set", "data.num_workers=0", "--set", "train.log_every=1", "--set", "optim.warmup_epochs=1"]


def cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, list[str]]:
    """The CLI in this process: its exit code, stdout, and the warning and error lines of stderr."""
    from sslcli.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as stopped:
        code = stopped.code or 0
    captured = capsys.readouterr()
    return code, captured.out, [line for line in captured.err.splitlines() if line.startswith(("warning", "error"))]


def take_store_away_at(monkeypatch: pytest.MonkeyPatch, step: int, store: Path, away: Path) -> None:
    """MLflow's store disappears (a server gone, a disk unmounted) just before the record of `step` is sent."""
    from sslcli import trackers

    real = trackers.Trackers.record

    def record(self, record):
        if record.get("step") == step and "loss" in record and store.exists():
            store.rename(away)
        return real(self, record)

    monkeypatch.setattr(trackers.Trackers, "record", record)


def test_a_tracker_that_fails_mid_run_is_dropped_with_one_warning_and_training_ends_as_usual(
        cifar_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    run = tmp_path / "run"
    take_store_away_at(monkeypatch, 2, run / "mlruns", tmp_path / "gone")
    code, out, lines = cli(capsys, "pretrain", str(cifar_tiny), "--out", str(run), "--log-to", "tensorboard,mlflow",
                           *TINY, "--json")
    assert code == 0, lines
    result = json.loads(out)
    failed = [line for line in lines if "mlflow" in line]
    assert len(failed) == 1 and failed[0].startswith("warning: mlflow failed ("), lines
    assert f"{run / 'mlruns'}' does not exist" in failed[0]  # MLflow's own reason
    assert "not logging to mlflow for the rest of this run" in failed[0]
    steps = list(range(1, result["steps"] + 1))
    assert [s for s, _ in metrics_of(run, "loss")] == steps  # the run lost nothing
    assert [s for s, _ in tensorboard_scalars(run / "tensorboard")["loss"]] == steps  # nor did the other tracker
    assert (run / "encoder.safetensors").is_file()
    state = json.loads((run / "trackers.json").read_text())
    assert state["mlflow"]["sent_to"] == 1 and state["tensorboard"]["sent_to"] == result["steps"]
    assert not (run / "mlruns").exists()  # nothing went on writing to the store once it failed


def test_a_tracker_dropped_before_a_stop_gets_the_steps_it_missed_on_resume(
        cifar_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from sslcli.commands import pretrain

    run = tmp_path / "run"
    spec = spec_for(cifar_tiny, run, **{"logging.to": "mlflow"})
    with monkeypatch.context() as m:  # the store is away from step 3 to the stop after step 4, then back
        take_store_away_at(m, 3, run / "mlruns", tmp_path / "away")
        stop_after(m, 4)
        with pytest.raises(Interrupted):
            pretrain.run(spec)
    state = json.loads((run / "trackers.json").read_text())
    assert state["mlflow"]["sent_to"] == 2  # step 3 failed: not held
    (tmp_path / "away").rename(run / "mlruns")
    result = pretrain.run(spec, resume="auto")
    assert result["resumed_from_step"] == 4
    client = mlflow_client(run)
    assert json.loads((run / "trackers.json").read_text())["mlflow"]["run_id"] == state["mlflow"]["run_id"]
    history = client.get_metric_history(state["mlflow"]["run_id"], "loss")
    assert sorted(m.step for m in history) == list(range(1, result["steps"] + 1))  # each step once
    assert {m.step: m.value for m in history} == pytest.approx(dict(metrics_of(run, "loss")), rel=1e-6)


def test_a_tracker_that_cannot_start_stops_the_command_before_training(cifar_tiny: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "bogus://nowhere")  # a scheme MLflow has no store for
    run = tmp_path / "run"
    code, out, lines = cli(capsys, "pretrain", str(cifar_tiny), "--out", str(run), "--log-to", "tensorboard,mlflow",
                           *TINY)
    assert code == 2 and out == ""
    errors = [line for line in lines if line.startswith("error")]
    assert len(errors) == 1 and errors[0].startswith("error: --log-to mlflow: cannot start its run ("), lines
    assert "bogus://nowhere" in errors[0] and "fix MLFLOW_TRACKING_URI or leave mlflow out of --log-to" in errors[0]
    assert not (run / "metrics.jsonl").exists() and not (run / "encoder.safetensors").exists()  # nothing trained


# ---------------------------------------------------------------- torchrun


def test_under_torchrun_only_rank_0_logs_each_step_once(cifar_tiny: Path, tmp_path: Path):
    """Two ranks (gloo, CPU) train one run: one TensorBoard event file and one MLflow run, each step once."""
    from tests.test_distributed import torchrun

    run = tmp_path / "run"
    proc = torchrun("-m", "sslcli", "pretrain", str(cifar_tiny), "--out", str(run), "--log-to", "tensorboard,mlflow",
                    *TINY, "--json", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # one JSON object: rank 1 prints nothing
    assert summary["processes"] == 2 and summary["steps"] == 2 * (100 // 32)
    steps = list(range(1, summary["steps"] + 1))
    assert [s for s, _ in metrics_of(run, "loss")] == steps

    events = sorted(tmp_path.rglob("events.out.tfevents.*"))
    assert events == sorted((run / "tensorboard").glob("events.out.tfevents.*")) and len(events) == 1, events
    scalars = tensorboard_scalars(run / "tensorboard")
    assert [s for s, _ in scalars["loss"]] == steps  # each step once
    assert [v for _, v in scalars["loss"]] == pytest.approx([v for _, v in metrics_of(run, "loss")], rel=1e-6)

    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("mlruns")) == [Path("run/mlruns")]
    client = mlflow_client(run)
    experiment = client.get_experiment_by_name("sslcli")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].info.run_id == json.loads((run / "trackers.json").read_text())["mlflow"]["run_id"]
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")] == steps
    started = [line for line in proc.stderr.splitlines() if line.startswith(("tensorboard: ", "mlflow: "))]
    assert len(started) == 2 and all(" started run " in line for line in started), started


def test_under_torchrun_a_tracker_that_cannot_start_stops_every_rank_before_training(
        cifar_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Rank 0 alone opens the trackers; the others learn it failed and stop too (exit 2, one line each), instead
    of waiting for it in the first step's all-reduce until gloo reports a closed connection (a RuntimeError)."""
    from tests.test_distributed import torchrun

    run = tmp_path / "run"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "bogus://nowhere")
    proc = torchrun("-m", "sslcli", "pretrain", str(cifar_tiny), "--out", str(run), "--log-to", "mlflow", *TINY,
                    cwd=tmp_path, timeout=300)
    assert proc.returncode != 0 and proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 2, proc.stderr[-3000:]
    assert errors[0].startswith("error: --log-to mlflow: cannot start its run (") or \
        errors[1].startswith("error: --log-to mlflow: cannot start its run (")
    assert any(line.startswith("error: [rank 1] rank 0 could not start the experiment trackers") for line in errors)
    assert not any("RuntimeError" in line for line in errors) and "exitcode: 2" in proc.stderr  # torchrun's report
    assert not (run / "metrics.jsonl").exists()
