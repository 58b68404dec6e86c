"""Exact resume: a run stopped and continued ends with the very weights of a run never stopped."""

from __future__ import annotations

import collections
import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sslcli import checkpoint, train
from sslcli.commands import pretrain
from sslcli.errors import Interrupted, RunError, UsageError
from sslcli.methods import method_class
from sslcli.spec import PretrainSpec, resolve

STEPS_PER_EPOCH, EPOCHS = 4, 2
TINY_VIT = ["encoder.name=vit_tiny_patch16_224",
            'encoder.kwargs={"patch_size": 4, "depth": 2, "embed_dim": 32, "num_heads": 2}']


def spec_for(data: Path, out: Path, method: str = "simclr", monitored: bool = False, **extra: str) -> PretrainSpec:
    """A 2-epoch run; the online kNN and report (tested elsewhere) only when `monitored`, to keep the suite fast."""
    sets = ["encoder.name=resnet10t", "encoder.small_stem=false", "data.max_images=128", "train.batch_size=32",
            f"train.epochs={EPOCHS}", "data.num_workers=0", "train.log_every=1", "train.checkpoint_every=1",
            "optim.warmup_epochs=1"]
    if not monitored:
        sets += ["monitor.knn_every=0", "monitor.report=false"]
    small = {"simclr": ["method.proj_hidden_dim=64"],
             "byol": ["method.proj_hidden_dim=64", "method.pred_hidden_dim=64"],
             "rotation": ["data.image_size=16"],  # 4 rotated copies per image: a smaller image keeps it quick
             "jigsaw": ["method.num_permutations=10", "method.tile_dim=64", "method.hidden_dim=64"],
             "colorization": ["method.decoder_dim=32"],
             "deepcluster": ["data.image_size=16", "method.proj_hidden_dim=64", "method.num_prototypes=[20,10]",
                             "method.num_local_crops=2"],
             # a 3 x 3 grid of 8 px patches at 16 px; every per-patch draw on (the affine one is off by default)
             "cpc": ["data.image_size=16", "method.grid_size=3", "method.context_blocks=1", "method.context_dim=32",
                     "method.target_dim=32", "method.patch_affine_p=0.5"],
             # A 2-block ViT at 16 px (16 patches) with small heads: masks, Sinkhorn, KoLeo and both EMA heads.
             "dinov2": ["encoder.name=vit_tiny_patch16_224", "data.image_size=16",
                        'encoder.kwargs={"patch_size": 4, "depth": 2, "embed_dim": 32, "num_heads": 2}',
                        "method.out_dim=64", "method.hidden_dim=64", "method.bottleneck_dim=16",
                        "method.ibot_out_dim=64", "method.ibot_hidden_dim=64", "method.ibot_bottleneck_dim=16",
                        "method.num_local_crops=2"],
             "instdisc": ["method.num_negatives=256", "data.image_size=16"],
             # ViTs as their papers train them: MoCo v3's frozen patch projection and sin-cos positions, DINO's
             # weight decay 0.04 -> 0.4 (its spec default), which a resumed run must pick up at its step.
             "mocov3": [*TINY_VIT, "data.image_size=16", "method.proj_hidden_dim=64", "method.pred_hidden_dim=64"],
             "dino": [*TINY_VIT, "data.image_size=16", "method.out_dim=64", "method.hidden_dim=64",
                      "method.bottleneck_dim=16", "method.num_local_crops=2", "method.freeze_last_layer_epochs=0.5"],
             "cmc": ["method.num_negatives=256", "data.image_size=16"],
             # instance recognition in epoch 1, k-means at its end, local aggregation in epoch 2 (stopped in it)
             "localagg": ["method.num_background=64", "method.num_clusters=8", "method.instance_epochs=1",
                          "method.instance_negatives=64", "data.image_size=16"]}[method]
    sets += small + [f"{k}={v}" for k, v in extra.items()]
    return resolve(PretrainSpec, options={"method.name": method, "data.path": str(data), "out": str(out)}, sets=sets)


def stop_after(monkeypatch: pytest.MonkeyPatch, stop_step: int) -> None:
    """Send this process SIGUSR1 during step `stop_step`: the loop stops after it, like a pre-emption."""
    real = train._Loop.synchronous_step
    calls = {"n": 0}

    def step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == stop_step:
            os.kill(os.getpid(), signal.SIGUSR1)
        return real(*args, **kwargs)

    monkeypatch.setattr(train._Loop, "synchronous_step", step)


def final_state(run: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the last training state: model (EMA target included), optimizer, RNG."""
    return load_file(str(checkpoint.complete_states(run / "checkpoints")[-1]))


RESUME_CASES = [("simclr", 6, True, "fp32"), ("simclr", 4, True, "fp32"), ("byol", 6, True, "fp32"),
                ("rotation", 6, False, "fp32"), ("jigsaw", 6, False, "fp32"), ("colorization", 6, False, "fp32"),
                ("deepcluster", 6, False, "fp32"), ("cpc", 6, False, "fp32"), ("dinov2", 6, False, "fp32"),
                ("instdisc", 6, False, "fp32"), ("cmc", 6, False, "fp32"), ("localagg", 6, False, "fp32"),
                ("mocov3", 6, False, "fp32"), ("dino", 6, False, "fp32"),
                # bf16 autocast on any CPU (emulated where the CPU has no bf16 instructions), so every machine
                # covers the precision a bf16 CPU runs by default: the methods whose state is not just weights,
                # and the ones whose 16 px maps met oneDNN's bf16 weight-gradient fault (onednn.py).
                ("simclr", 6, False, "bf16"), ("byol", 6, False, "bf16"), ("rotation", 6, False, "bf16"),
                ("deepcluster", 6, False, "bf16"), ("cpc", 6, False, "bf16"), ("instdisc", 6, False, "bf16")]


@pytest.mark.parametrize(("method", "stop_step", "monitored", "precision"), RESUME_CASES,
                         ids=[f"{m}-{'epoch-boundary' if s == 4 else 'mid-epoch'}-{p}" for m, s, _, p in RESUME_CASES])
def test_interrupted_and_resumed_equals_uninterrupted(method: str, stop_step: int, monitored: bool, precision: str,
                                                      cifar_small: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch):
    # Monitored: the online kNN, monitors and report run too, and must not change what is trained (the simclr
    # and byol rows show it; the colorization row, about its checkpointed prior, skips their cost).
    def spec_of(out: Path) -> PretrainSpec:
        return spec_for(cifar_small, out, method, monitored=monitored, **{"train.precision": precision})

    whole = pretrain.run(spec_of(tmp_path / "whole"))
    assert whole["steps"] == STEPS_PER_EPOCH * EPOCHS and (whole["knn_top1"] is not None) == monitored

    with monkeypatch.context() as m:
        stop_after(m, stop_step)
        with pytest.raises(Interrupted, match="--resume auto"):
            pretrain.run(spec_of(tmp_path / "split"))
    assert checkpoint.complete_states(tmp_path / "split" / "checkpoints")[-1].name == f"state-{stop_step:09d}.safetensors"
    resumed = pretrain.run(spec_of(tmp_path / "split"), resume="auto")
    assert resumed["resumed_from_step"] == stop_step and resumed["steps"] == whole["steps"]

    a, b = final_state(tmp_path / "whole"), final_state(tmp_path / "split")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"resume is not exact: {different[:5]}"
    if method == "byol":
        assert any(k.startswith("model/target_encoder.") for k in a)  # the EMA target is part of the state
    if method == "jigsaw":
        assert "model/permutations" in a  # the permutation set is part of the state
    if method == "deepcluster":  # memory, clusters and prototypes are state: the resumed steps trained on the
        # clusters of the k-means before the stop, the k-means after it clustered the memory written on both sides
        assert a["model/filled"].all() and (a["model/assignments"] >= 0).all()
    if method == "dinov2":  # the teacher's iBOT head and the mask token are part of the state
        assert any(k.startswith("model/teacher_ibot_head.") for k in a) and "model/mask_token" in a
    if method == "colorization":  # the running rebalancing prior is part of the state, and it moved
        assert a["model/prior_batches"].item() == STEPS_PER_EPOCH * EPOCHS
    if method == "instdisc":  # the memory bank (one entry per image) and its NCE constant Z are part of the state
        assert a["model/bank.memory"].shape[0] == 128 and a["model/bank.z"].item() > 0
    if method == "localagg":  # the bank and the clusterings of the last epoch's end are part of the state
        assert a["model/bank.memory"].shape[0] == 128 and a["model/assignments"].shape[1] == 128
    if method == "cmc":  # both views' banks, and the ab encoder, which is not exported
        assert all(a[f"model/bank_{v}.memory"].shape[0] == 128 and a[f"model/bank_{v}.z"].item() > 0 for v in ("l", "ab"))
        assert any(k.startswith("model/ab_encoder.") for k in a)
    enc_a = load_file(str(tmp_path / "whole" / "encoder.safetensors"))
    enc_b = load_file(str(tmp_path / "split" / "encoder.safetensors"))
    assert all(torch.equal(enc_a[k], enc_b[k]) for k in enc_a)


def test_s4l_with_its_labeled_batches_resumes_exactly(cifar_small: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch):
    """--label-fraction: the labeled stream (64 labeled images, batches of 32: two to its epoch, so it wraps
    within the run) continues at the step it stopped, and the supervised head is part of the state."""
    def spec_of(out: Path) -> PretrainSpec:
        return spec_for(cifar_small, out, "rotation", **{"data.label_fraction": "0.5"})

    pretrain.run(spec_of(tmp_path / "whole"))
    with monkeypatch.context() as m:
        stop_after(m, 5)
        with pytest.raises(Interrupted, match="--resume auto"):
            pretrain.run(spec_of(tmp_path / "split"))
    assert pretrain.run(spec_of(tmp_path / "split"), resume="auto")["resumed_from_step"] == 5
    a, b = final_state(tmp_path / "whole"), final_state(tmp_path / "split")
    assert "model/supervised_head.weight" in a
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert a.keys() == b.keys() and not different, f"resume is not exact: {different[:5]}"


def test_negative_control_resume_without_rng_state_differs(cifar_small: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch):
    """The exactness test can fail: a resume that loses the RNG states ends elsewhere."""
    pretrain.run(spec_for(cifar_small, tmp_path / "whole"))
    with monkeypatch.context() as m:
        stop_after(m, 6)
        with pytest.raises(Interrupted):
            pretrain.run(spec_for(cifar_small, tmp_path / "split"))
    real = checkpoint.load_train_state

    def without_rng(path, model, optimizer):
        record, rng = real(path, model, optimizer)
        torch.manual_seed(12345)
        fresh = torch.Generator().manual_seed(12345).get_state()
        return record, {name: fresh for name in rng}

    monkeypatch.setattr(checkpoint, "load_train_state", without_rng)
    pretrain.run(spec_for(cifar_small, tmp_path / "split"), resume="auto")
    a, b = final_state(tmp_path / "whole"), final_state(tmp_path / "split")
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("model/"))


def test_resume_auto_is_idempotent_and_refuses_another_runs_checkpoint(cifar_small: Path, tmp_path: Path):
    run = tmp_path / "run"
    first = pretrain.run(spec_for(cifar_small, run), resume="auto")  # nothing to resume: starts the run
    assert first["resumed_from_step"] == 0
    again = pretrain.run(spec_for(cifar_small, run), resume="auto")  # finished: nothing to do
    assert again["already_complete"] and again["steps"] == first["steps"]
    other = spec_for(cifar_small, run, **{"train.seed": "1"})
    other.train.epochs = 3  # more steps and another seed: a different run
    with pytest.raises(UsageError, match="total steps, seed"):
        pretrain.run(other, resume="auto")
    with pytest.raises(UsageError, match="already holds a finished run .* it is complete. To train further, .*"
                       "--init-from .*encoder.safetensors --out NEW_RUN_DIR"):
        pretrain.run(spec_for(cifar_small, run))  # a new run never overwrites an existing one
    with pytest.raises(UsageError, match="needs the run folder"):
        pretrain.run(spec_for(cifar_small, run).model_copy(update={"out": None}), resume="auto")


def test_init_from_starts_a_new_run_from_an_encoder(cifar_small: Path, tmp_path: Path):
    donor = pretrain.run(spec_for(cifar_small, tmp_path / "donor"))
    spec = spec_for(cifar_small, tmp_path / "new", **{"init_from": donor["encoder"], "train.epochs": "1"})
    seen = {}
    real = method_class("simclr").__init__

    def capture(self, cfg, encoder, *args, **kwargs):
        seen.update({k: v.clone() for k, v in encoder.state_dict().items()})
        real(self, cfg, encoder, *args, **kwargs)

    method_class("simclr").__init__ = capture
    try:
        pretrain.run(spec)
    finally:
        method_class("simclr").__init__ = real
    donor_weights = load_file(donor["encoder"])
    assert all(torch.equal(seen[k], donor_weights[k]) for k in donor_weights)
    resnet18 = spec_for(cifar_small, tmp_path / "bad", **{"init_from": donor["encoder"], "encoder.name": "resnet18"})
    with pytest.raises(UsageError, match="same encoder settings"):
        pretrain.run(resnet18)


def test_on_nan_skip_skips_bounded_number_of_steps(cifar_small: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch):
    real = method_class("simclr").forward

    def poisoned(self, views, step):
        out = real(self, views, step)
        if step in (2, 3):
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(method_class("simclr"), "forward", poisoned)
    summary = pretrain.run(spec_for(cifar_small, tmp_path / "skip", **{"train.on_nan": "skip"}))
    assert summary["skipped_steps"] == 2 and summary["steps"] == STEPS_PER_EPOCH * EPOCHS
    with pytest.raises(RunError, match="step 4"):  # one skip allowed: the second bad step stops the run
        pretrain.run(spec_for(cifar_small, tmp_path / "bounded", **{"train.on_nan": "skip", "train.max_nan_skips": "1"}))
    with pytest.raises(RunError, match="step 3 .*last checkpoint is intact"):
        pretrain.run(spec_for(cifar_small, tmp_path / "stop"))


KILL_DURING_SECOND_STATE_WRITE = """
import os, signal, sys
from sslcli import checkpoint, cli
real = checkpoint.atomic_write_bytes
writes = {"n": 0}
def torn(path, data):
    if path.name.startswith("state-") and path.suffix == ".safetensors":
        writes["n"] += 1
        if writes["n"] == 2:  # half the bytes in the temp file, then the power goes
            (path.parent / ("." + path.name + ".tmp")).write_bytes(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
    real(path, data)
checkpoint.atomic_write_bytes = torn
sys.argv = ["sslcli"] + sys.argv[1:]
cli.main()
"""


def test_kill_9_during_a_checkpoint_write_then_resume_auto(cifar_small: Path, tmp_path: Path):
    run = tmp_path / "run"
    args = ["pretrain", str(cifar_small), "--out", str(run), "--method", "simclr", "--set", "encoder.name=resnet10t",
            "--set", "encoder.small_stem=false", "--set", "data.max_images=128", "--batch-size", "32",
            "--epochs", "3", "--set", "train.checkpoint_every=1", "--set", "method.proj_hidden_dim=64",
            "--set", "data.num_workers=0"]
    killed = subprocess.run([sys.executable, "-c", KILL_DURING_SECOND_STATE_WRITE, *args], capture_output=True,
                            text=True)
    assert killed.returncode == -signal.SIGKILL
    states = checkpoint.complete_states(run / "checkpoints")
    assert [p.name for p in states] == ["state-000000004.safetensors"]  # the first epoch's, intact
    resumed = subprocess.run([sys.executable, "-m", "sslcli", *args, "--resume", "auto", "--json"],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr and "step 4/12" in resumed.stderr
    assert checkpoint.complete_states(run / "checkpoints")[-1].name == "state-000000012.safetensors"


def test_unwritable_run_folder_and_a_full_disk_are_refused_before_training(cifar_small: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match="cannot write the run folder"):
        pretrain.run(spec_for(cifar_small, blocker / "run"))
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: usage(2**40, 2**40 - 2**20, 2**20))
    with pytest.raises(UsageError, match="1 MiB free"):
        pretrain.run(spec_for(cifar_small, tmp_path / "full"))
    assert not (tmp_path / "full" / "metrics.jsonl").exists()  # refused before the first step


def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(cifar_small: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch):
    real = checkpoint.atomic_write_bytes

    def disk_full_at_step_8(path: Path, data: bytes) -> None:
        if path.name == "state-000000008.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", disk_full_at_step_8)
    with pytest.raises(RunError, match="step 8 .*No space left.*previous checkpoint is intact"):
        pretrain.run(spec_for(cifar_small, tmp_path / "run"))
    states = checkpoint.complete_states(tmp_path / "run" / "checkpoints")
    assert [p.name for p in states] == ["state-000000004.safetensors"] and checkpoint.state_is_intact(states[0])
    assert not list((tmp_path / "run" / "checkpoints").glob(".*.tmp"))  # no temp file left behind


def test_hostile_resume_targets_are_clean_usage_errors(cifar_small: Path, tmp_path: Path):
    garbage = tmp_path / "state-000000004.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(UsageError, match="no readable training-state record|recorded sha256"):
        pretrain.run(spec_for(cifar_small, tmp_path / "run"), resume=str(garbage))
    garbage.with_suffix(".json").write_text('{"format": "sslcli.train-state.v1", "sha256": "0", "step": 4}')
    with pytest.raises(UsageError, match="recorded sha256"):
        pretrain.run(spec_for(cifar_small, tmp_path / "run"), resume=str(garbage))
    (tmp_path / "empty-run").mkdir()
    with pytest.raises(UsageError, match="no intact checkpoint"):
        pretrain.run(spec_for(cifar_small, tmp_path / "run"), resume=str(tmp_path / "empty-run"))
    with pytest.raises(UsageError, match="no such file or folder"):
        pretrain.run(spec_for(cifar_small, tmp_path / "run"), resume=str(tmp_path / "missing"))
