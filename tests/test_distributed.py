"""torchrun: 2 ranks x B images give the gradients of one process with 2B images, for every method.

Distributed SSL has a classic trap: negatives or statistics gathered across GPUs without gradients train
silently worse. The comparison below runs one step of every method on one process and under
`torchrun --nproc_per_node 2` (gloo, CPU), and two negative controls show the comparison would catch
the trap: gathering without the other ranks' gradients, and batch statistics left per rank.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests import dist_worker

REPO = Path(__file__).resolve().parents[1]
# in-batch negatives (tracking: its hard negatives), global cross-correlation, DINOv2's KoLeo nearest neighbours over
# the global batch
GATHERING = {"simclr", "simclr-s4l", "invariantspread", "mocov3", "mocov3-vit", "barlow", "vicreg", "cpc", "dinov2", "cmc-batch",
             "tcn-npairs", "dim", "exemplar", "tracking"}
NO_BATCH_STATISTICS = {"mae"}  # a ViT with a per-sample loss: nothing to synchronise


def torchrun(*args: str, nproc: int = 2, cwd: Path = REPO, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def relative_errors(reference: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per method, the worst |a - b| / (|a| + 1e-3 * the method's largest gradient) over every tensor.

    The floor keeps gradients that are zero in exact arithmetic (a bias right before a BN) from counting
    float noise as an error."""
    scale: dict[str, float] = defaultdict(float)
    for key, value in reference.items():
        scale[key.split("/")[0]] = max(scale[key.split("/")[0]], float(value.abs().max()))
    worst: dict[str, float] = defaultdict(float)
    for key, value in reference.items():
        method = key.split("/")[0]
        error = (value - other[key]).abs() / (value.abs() + 1e-3 * scale[method])
        worst[method] = max(worst[method], float(error.max()))
    return dict(worst)


@pytest.fixture(scope="module")
def single_process() -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for case in dist_worker.CASES:
        out.update(dist_worker.one_step(case))
    return out


def two_ranks(tmp_path: Path, control: str | None = None) -> dict[str, torch.Tensor]:
    out = tmp_path / f"{control or 'ddp'}.safetensors"
    proc = torchrun("-m", "tests.dist_worker", str(out), *(["--control", control] if control else []))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_file(str(out))


def test_two_ranks_give_the_gradients_of_one_process_with_the_global_batch(single_process, tmp_path):
    ranks = two_ranks(tmp_path)
    assert set(ranks) == set(single_process), "the same parameters get gradients on one process and under DDP"
    for case in dist_worker.CASES:
        assert any(k.startswith(f"{case}/grad/encoder.") for k in ranks), f"{case}: no encoder gradient"
    for case in ("simclr-s4l", "byol-s4l"):  # S4L's rotation head is trained and compared as well
        assert any(k.startswith(f"{case}/grad/rotation.") for k in ranks), f"{case}: no rotation-head gradient"
    # Memory banks are compared between the ranks too (InstDisc's, CMC's two).
    assert {k.split("/")[0] for k in ranks if k.endswith("bank_rank_spread")} >= {"instdisc", "cmc"}
    errors = relative_errors(single_process, ranks)
    bad = {m: e for m, e in errors.items() if e > 2e-2}
    assert not bad, f"gradients, loss, queue, center or memory bank differ from one process with the global batch: {bad}"


def test_gathering_without_gradients_is_caught(single_process, tmp_path):
    errors = relative_errors(single_process, two_ranks(tmp_path, control="gather"))
    caught = {m for m, e in errors.items() if e > 0.2}
    # Methods that gather with gradients fail the comparison; the others do not gather with gradients.
    assert caught == GATHERING, errors


def test_per_rank_batch_statistics_are_caught(single_process, tmp_path):
    errors = relative_errors(single_process, two_ranks(tmp_path, control="statistics"))
    caught = {m for m, e in errors.items() if e > 0.2}
    assert caught == set(dist_worker.CASES) - NO_BATCH_STATISTICS, errors


def sslcli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "sslcli", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_torchrun_pretrain_writes_one_run_folder_that_probes_and_finetunes(cifar_small: Path, tmp_path: Path):
    common = ["--method", "simclr", "--encoder", "resnet10t", "--epochs", "2", "--batch-size", "64",
              "--set", "encoder.small_stem=false", "--set", "data.image_size=32", "--set", "train.log_every=1",
              "--set", "method.proj_hidden_dim=128", "--set", "method.proj_out_dim=32", "--json"]
    proc = torchrun("-m", "sslcli", "pretrain", str(cifar_small), *common, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1, f"only rank 0 makes the run folder: {runs}"
    summary = json.loads(proc.stdout)  # one JSON object: the other rank prints nothing
    assert summary["processes"] == 2 and summary["steps"] == 2 * (400 // 64)
    assert "2 processes" in proc.stderr and "rank 1" not in proc.stderr
    metrics = [json.loads(line) for line in (runs[0] / "metrics.jsonl").read_text().splitlines()]
    steps = [m["step"] for m in metrics if "loss" in m]
    assert steps == list(range(1, summary["steps"] + 1)), "one writer, one line per step"
    # The online kNN extracts its features in shards on both ranks; rank 0 logs it and draws the report.
    assert [m["epoch"] for m in metrics if "knn_top1" in m] == [0, 1, 2] and summary["knn_top1"] > 0.1
    assert (runs[0] / "report" / "neighbors.png").is_file() and (runs[0] / "report" / "curves.png").is_file()
    encoder = runs[0] / "encoder.safetensors"

    # probe under torchrun: each rank extracts half the features; the scores equal a one-process probe
    probe_args = ["probe", str(encoder), "--data", str(cifar_small), "--json", "--set", "probe.knn_k=[20]", "--no-baseline"]
    distributed_probe = torchrun("-m", "sslcli", *probe_args, cwd=tmp_path)
    assert distributed_probe.returncode == 0, distributed_probe.stderr[-3000:]
    single_probe = sslcli(*probe_args, cwd=tmp_path)
    assert single_probe.returncode == 0, single_probe.stderr[-3000:]
    two, one = json.loads(distributed_probe.stdout), json.loads(single_probe.stdout)
    assert two["n_train"] == one["n_train"] == 400 and two["n_eval"] == one["n_eval"] == 200
    # The same features whatever the number of ranks (OMP threads differ: allow one image of 200 to flip).
    assert two["knn"]["k20"] == pytest.approx(one["knn"]["k20"], abs=0.006)
    assert two["linear"]["top1"] == pytest.approx(one["linear"]["top1"], abs=0.011)

    # finetune under torchrun: DDP classifier, one classifier written, val scored over the whole split
    tuned = torchrun("-m", "sslcli", "finetune", str(encoder), "--data", str(cifar_small), "--epochs", "1",
                     "--batch-size", "64", "--out", str(tmp_path / "ft"), "--json", cwd=tmp_path)
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    result = json.loads(tuned.stdout)
    assert result["n_eval"] == 200 and result["steps"] == 400 // 64 and 0 <= result["top1"] <= 1
    assert (tmp_path / "ft" / "classifier.safetensors").is_file()


def test_a_budget_run_under_torchrun_trains_one_plan_on_every_rank(cifar_small: Path, tmp_path: Path):
    """--budget under torchrun: the calibration runs the same steps on both ranks (each all-reduces) and every
    rank trains rank 0's plan and re-plans, so the run ends instead of one rank waiting for a step the other
    never takes."""
    proc = torchrun("-m", "sslcli", "pretrain", str(cifar_small), "--preset", "quickstart", "--budget", "40s",
                    "--batch-size", "32", "--set", "data.max_images=256", "--set", "method.proj_hidden_dim=64",
                    "--set", "monitor.report=false", "--set", "monitor.knn_every=0", "--set", "data.num_workers=0",
                    "--out", str(tmp_path / "run"), "--json", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    # Re-plans as it goes take rank 0's clock too: the ranks end at the same step (one printed line each).
    totals = [summary["planned_steps"]] + [total for _, total in summary["replans"]]
    assert summary["processes"] == 2 and summary["steps"] == totals[-1] > 0
    plan = [line for line in proc.stderr.splitlines() if line.startswith("--budget ")]
    assert len(plan) == 1 and f"{summary['planned_steps']} steps" in plan[0], plan
    replanned = [line for line in proc.stderr.splitlines() if line.startswith("--budget: at step")]
    assert len(replanned) == len(summary["replans"]), replanned


def test_cache_batches_shard_each_global_batch_between_ranks(tmp_path: Path):
    """Rank r's slice of step k, over all ranks, is the batch one process draws at step k (no image twice)."""
    import numpy as np

    from sslcli import cache

    class Decoded:  # the two fields cache.batches reads
        good_indices = np.arange(50)
        array = np.arange(50, dtype=np.uint8).reshape(50, 1, 1, 1).repeat(3, axis=1)

    single = [idx.tolist() for _, idx in cache.batches(Decoded, 16, seed=3, epoch=1)]
    ranks = [[idx.tolist() for _, idx in cache.batches(Decoded, 16, seed=3, epoch=1, shard=(r, 2))] for r in range(2)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 3
    for step, batch in enumerate(single):
        halves = ranks[0][step], ranks[1][step]
        assert len(halves[0]) == len(halves[1]) == 8 and not set(halves[0]) & set(halves[1])
        assert sorted(halves[0] + halves[1]) == sorted(batch)


def _rank_pid(agent: subprocess.Popen, rank: int, timeout: float = 120) -> int:
    """The pid of torchrun's worker with RANK=rank (a child of the agent)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in Path(f"/proc/{agent.pid}/task/{agent.pid}/children").read_text().split():
            try:
                env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in env:
                return int(child)
        time.sleep(0.2)
    raise AssertionError(f"no worker with RANK={rank}")


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads worker pids from /proc (Linux)")
def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step_and_resume_finishes(cifar_small: Path,
                                                                                   tmp_path: Path):
    run = tmp_path / "run"
    args = ["-m", "sslcli", "pretrain", str(cifar_small / "train"), "--method", "byol", "--encoder", "resnet10t",
            "--epochs", "4", "--batch-size", "32", "--out", str(run), "--resume", "auto",
            "--set", "encoder.small_stem=false", "--set", "data.image_size=32", "--set", "train.log_every=1",
            "--set", "method.proj_hidden_dim=64", "--set", "method.proj_out_dim=32",
            "--set", "method.pred_hidden_dim=64"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    agent = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    worker = _rank_pid(agent, rank=1)
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3) and time.monotonic() < deadline:
        time.sleep(0.1)
    os.kill(worker, signal.SIGTERM)  # rank 1 only, as a node-local pre-emption would
    _, stderr = agent.communicate(timeout=300)
    assert agent.returncode != 0, "an interrupted run is not reported as finished"
    assert "stopped by SIGTERM" in stderr and "--resume auto" in stderr, stderr[-3000:]
    states = json.loads((run / "checkpoints" / "latest.json").read_text())
    stopped_at = states["step"]
    assert 3 <= stopped_at < 4 * (400 // 32), "rank 0 saved the step every rank stopped after"
    assert len(metrics.read_text().splitlines()) == stopped_at

    resumed = torchrun(*args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr and f"at step {stopped_at}/" in resumed.stderr
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == list(range(1, 4 * (400 // 32) + 1)), "the resumed run continues where every rank stopped"
