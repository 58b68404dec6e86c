"""CUDA paths: run with `make test-gpu` on a machine with a GPU (deselected by `make test`).

Sized to finish in under 3 minutes on one H200 with `make test-gpu` (4 at a time, 120 s per test): small
data (cifar_small, at most 512 images), a handful of steps, the online kNN off where it is not the subject.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sslcli.augment import Augmenter, ViewConfig
from sslcli.methods import CONFIGS, PRESET_FAMILIES

pytestmark = pytest.mark.gpu

CHEAP = ["--set", "train.device=cuda", "--set", "monitor.knn_every=0", "--set", "data.max_images=256"]


def gpu_run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m sslcli ARGS` in a fresh process; pytest-timeout stops it first, with the test's name."""
    env = {k: v for k, v in os.environ.items() if k != "SSLCLI_DEBUG"}
    env.setdefault("OMP_NUM_THREADS", "4")  # several tests share the machine's cores under pytest-xdist
    return subprocess.run([sys.executable, "-m", "sslcli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_augment_on_cuda_stays_on_device_and_matches_cpu_statistics():
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    views = [ViewConfig(size=32)] * 2
    cuda = Augmenter(views, (0.5,) * 3, (0.25,) * 3, torch.Generator("cuda").manual_seed(0))(x.cuda())
    cpu = Augmenter(views, (0.5,) * 3, (0.25,) * 3, torch.Generator().manual_seed(0))(x)
    assert all(v.is_cuda and v.dtype == torch.float32 for v in cuda)
    for a, b in zip(cuda, cpu, strict=True):
        assert torch.isfinite(a).all()
        assert abs(a.mean().item() - b.mean().item()) < 0.2  # same recipe, different random streams


def test_pretrain_bf16_channels_last_on_cuda_with_online_knn_then_probe(cifar_small: Path, tmp_path: Path):
    """The one end-to-end GPU run with the online kNN on (cifar_small: a 400-image bank, 200 to classify)."""
    run = tmp_path / "run"
    proc = gpu_run("pretrain", str(cifar_small), "--preset", "quickstart", "--epochs", "1", "--batch-size", "64",
                   "--out", str(run), "--set", "train.device=cuda", "--set", "data.max_images=256", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["device"].startswith("cuda") and summary["final_loss"] > 0 and summary["steps"] == 4
    assert summary["knn_top1"] is not None
    assert "(bf16)" in proc.stderr
    probe = gpu_run("probe", str(run / "encoder.safetensors"), "--data", str(cifar_small), "--json")
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout)["linear"]["top1"] > 0.1


def test_fp16_with_grad_scaler_on_cuda(cifar_small: Path, tmp_path: Path):
    proc = gpu_run("pretrain", str(cifar_small), "--preset", "quickstart", "--epochs", "1", "--batch-size", "64",
                   "--out", str(tmp_path / "run"), *CHEAP, "--set", "train.precision=fp16", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["final_loss"] > 0 and summary["skipped_steps"] == 0


@pytest.mark.timeout(170)  # torch.compile's first compilation (Inductor, Triton kernels) dominates
def test_compile_on_cuda(cifar_small: Path, tmp_path: Path):
    proc = gpu_run("pretrain", str(cifar_small), "--preset", "quickstart", "--epochs", "1", "--batch-size", "64",
                   "--out", str(tmp_path / "run"), *CHEAP, "--set", "train.compile=true", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["final_loss"] > 0


@pytest.mark.parametrize("method", [*CONFIGS, *PRESET_FAMILIES])
def test_every_cpu_preset_trains_on_cuda_in_bf16(method: str, cifar_small: Path, videos: Path, tmp_path: Path):
    teacher = ["--set", "method.teacher=random:resnet10t"] if method == "distill" else []  # no default teacher
    # A temporal method trains on the real clips, at the rate that gives 4 steps of 64 per epoch.
    temporal = method in CONFIGS and CONFIGS[method].frames_per_sample > 0
    proc = gpu_run("pretrain", str(videos if temporal else cifar_small), "--preset", f"{method}-cpu", "--epochs",
                   "2", "--batch-size", "64", "--out", str(tmp_path / "run"), *CHEAP, *teacher,
                   *(["--set", "data.fps=14"] if temporal else []), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["device"].startswith("cuda") and summary["steps"] == 8


SYNC_FREE_SCRIPT = textwrap.dedent("""
    import sys
    from sslcli.cli import main
    data, out, preset, epochs, *more = sys.argv[1:]
    main(["pretrain", data, "--preset", preset, "--epochs", epochs, "--batch-size", "64", "--out", out,
          "--set", "train.device=cuda", "--set", "data.max_images=512", "--set", "monitor.knn_every=0",
          "--set", "train.log_every=1000", "--set", "train.debug_sync=true", "--json", *more])
""")


# The quickstart (SimCLR, LARS) and the methods that carry state across steps: a queue (MoCo v2, SwAV), an
# EMA target (BYOL), a center and a frozen last layer (DINO), random masks (MAE), masks drawn on the device into a
# buffer sized on the host and Sinkhorn centering (DINOv2), a memory bank with its drawn negatives and NCE
# constant (InstDisc: 2 epochs, as its first only fills the bank), two of them and a Lab split on the device (CMC).
@pytest.mark.parametrize("preset", ["quickstart", "mocov2-cpu", "byol-cpu", "swav-cpu", "dino-cpu", "dinov2-cpu",
                                    "mae-cpu", "instdisc-cpu", "cmc-cpu"])
def test_pretraining_steps_make_no_host_synchronisation(preset: str, cifar_small: Path, tmp_path: Path):
    """train.debug_sync=true runs the steps between two log reads under torch.cuda.set_sync_debug_mode("error"):
    any hidden device-to-host synchronisation in them raises, so the run fails. One epoch of cifar_small's
    400 images (max_images=512 keeps them all) at batch 64: 6 steps, logged only at the last."""
    out = tmp_path / "run"
    epochs = 2 if preset == "instdisc-cpu" else 1
    steps = min(512, sum(1 for f in (cifar_small / "train").rglob("*") if f.is_file())) // 64 * epochs
    env = {**os.environ, "SSLCLI_DEBUG": "1"}  # a sync raises with its traceback, which names the culprit
    env.setdefault("OMP_NUM_THREADS", "4")
    proc = subprocess.run([sys.executable, "-c", SYNC_FREE_SCRIPT, str(cifar_small), str(out), preset, str(epochs)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["device"].startswith("cuda") and summary["steps"] == steps and summary["skipped_steps"] == 0
    if epochs == 2:
        assert summary["final_loss"] > 0, "the second epoch trained against the filled bank (the first's loss is 0)"


def test_fp16_steps_with_their_grad_scaler_make_no_host_synchronisation(cifar_small: Path, tmp_path: Path):
    """fp16: the GradScaler's unscale, overflow check and scale update stay on the device (GradScaler.step,
    which reads the overflow on the host, is not called): the quickstart's steps under debug_sync."""
    steps = min(512, sum(1 for f in (cifar_small / "train").rglob("*") if f.is_file())) // 64
    env = {**os.environ, "SSLCLI_DEBUG": "1"}
    env.setdefault("OMP_NUM_THREADS", "4")
    proc = subprocess.run([sys.executable, "-c", SYNC_FREE_SCRIPT, str(cifar_small), str(tmp_path / "run"),
                           "quickstart", "1", "--set", "train.precision=fp16"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["device"].startswith("cuda") and summary["steps"] == steps and summary["final_loss"] > 0


def test_deepcluster_memory_kmeans_and_steps_make_no_host_synchronisation(cifar_small: Path, tmp_path: Path):
    """DeepCluster v2 as above, over 3 epochs: its first epoch trains nothing (the optimizer holds no state, so
    those steps are checked on the host), the second and third are deferred steps that write the memory,
    and the k-means at the second's end runs in one of them (the spherical k-means on the device, seeded
    by a CUDA generator): none of it may read a value to the host."""
    out = tmp_path / "run"
    steps = min(512, sum(1 for f in (cifar_small / "train").rglob("*") if f.is_file())) // 64 * 3
    env = {**os.environ, "SSLCLI_DEBUG": "1"}
    env.setdefault("OMP_NUM_THREADS", "4")
    proc = subprocess.run([sys.executable, "-c", SYNC_FREE_SCRIPT, str(cifar_small), str(out), "deepcluster-cpu",
                           "3"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["device"].startswith("cuda") and summary["steps"] == steps and summary["skipped_steps"] == 0
    assert summary["final_loss"] > 0  # the last epoch trained on clusters


def test_debug_sync_catches_a_hidden_host_read():
    """The negative control of the test above: a loss that reads a value to the host inside a deferred step
    makes the run fail under train.debug_sync, so a passing run there means no step synchronised."""
    from torch import nn

    from sslcli.train import Events, LoopConfig, Step, StepOut, fit

    device = torch.device("cuda")
    model = nn.Linear(8, 1).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def loss(batch, step: int) -> StepOut:
        out = model(batch.float()).pow(2).mean()
        if step >= 2:
            float(out)  # a host read: what the sync-free loop must never do between reads
        return StepOut(loss=out)

    def batches(epoch: int, skip: int = 0):
        for _ in range(4 - skip):
            yield torch.ones(4, 8, dtype=torch.uint8)

    cfg = LoopConfig(epochs=1, steps_per_epoch=4, log_every=100, sync_free=True, debug_sync=True)
    with pytest.raises(RuntimeError, match="synchroniz"):
        fit(Step(model, loss, optimizer, torch.full((4,), 0.01, dtype=torch.float64)), batches, cfg, device, Events())


def test_batches_prepared_ahead_on_a_side_stream_train_in_order_and_checkpoint_the_right_rng(cifar_small: Path,
                                                                                            tmp_path: Path):
    """With train.prefetch on CUDA the next batch is copied and augmented on a side stream while this one trains. Each step must
    train the views of its own batch (in order), and a checkpoint between two steps must hold the augmentation
    generator as it was before the next batch was augmented (that batch is already augmented by then), so a
    resume draws what the run would have drawn."""
    from sslcli import pretraining
    from sslcli.train import Events, fit
    from tests.test_resume import spec_for

    spec = spec_for(cifar_small, tmp_path / "run", **{"train.device": "cuda", "train.log_every": "100",
                                                       "train.prefetch": "true"})
    device = torch.device("cuda")
    train_data = pretraining.load_data(spec, device)
    loop = pretraining.loop_config(spec, train_data.steps_per_epoch, device)
    model = pretraining.build_model(spec, loop, device)
    optimizer, lr_schedule = pretraining.optimizer_and_schedule(spec, model.method, loop)
    step = pretraining.step_function(spec, loop, model, device, optimizer, lr_schedule)
    before_augmenting, trained, saved = [], [], []
    prepare, loss = step.prepare, step.loss

    class Marked(list):  # views that know which batch they came from
        batch = -1

    def recording_prepare(batch):
        before_augmenting.append(model.generator.get_state())
        views, labels, indices = prepare(batch)
        views = Marked(views)
        views.batch = len(before_augmenting) - 1
        return views, labels, indices

    def checked_loss(prepared, i: int):
        trained.append(prepared[0].batch)
        return loss(prepared, i)

    step.prepare, step.loss = recording_prepare, checked_loss
    events = Events(on_step_end=lambda i: saved.append(pretraining.rng_states(model, device)["augment"]))
    fit(step, train_data.batches, loop, device, events)
    steps = loop.total_steps
    assert trained == list(range(steps)), "each step trained the views of its own batch, in order"
    # After step i (0-based) the next batch to train is i + 1: its pre-augmentation state, not the live one.
    for i in range(steps - 1):
        assert torch.equal(saved[i], before_augmenting[i + 1]), i
    assert not torch.equal(before_augmenting[1], before_augmenting[2]), "the generator moves between batches"
