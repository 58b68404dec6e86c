"""Nothing lost, nothing hangs, nothing unpickled: each case as a user or an attacker would meet it, from outside,
with real processes, real files, real signals."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from sslcli import checkpoint
from tests.test_cli import assert_one_clean_error, sslcli_run

# A run of a few seconds on cifar_tiny's 100 images: resnet10t at 16 px, no online kNN and no report.
QUICK = ["--set", "encoder.name=resnet10t", "--set", "encoder.small_stem=false", "--set", "data.image_size=16",
         "--batch-size", "16", "--set", "data.num_workers=0", "--set", "monitor.knn_every=0",
         "--set", "monitor.report=false", "--set", "train.log_every=1", "--set", "optim.warmup_epochs=0"]


def pretrain(data: Path, out: Path, *extra: str, epochs: int = 2) -> subprocess.CompletedProcess:
    return sslcli_run("pretrain", str(data), "--out", str(out), "--epochs", str(epochs), *QUICK, *extra)


def with_metadata(src: Path, dst: Path, **changes: str) -> Path:
    meta = checkpoint.read_metadata(src)
    meta.update(changes)
    save_file(load_file(str(src)), str(dst), metadata=meta)
    return dst


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- 1. metadata never chooses what is opened


@pytest.mark.parametrize("command", ["probe", "export"])
def test_metadata_that_names_a_file_is_refused_before_timm_opens_it(command: str, encoder_file: Path,
                                                                    cifar_tiny: Path, tmp_path: Path):
    """The canary is a named pipe: anything that opened it would block until the test's timeout. The command
    ends at once, exit 2, one line naming the argument; timm never saw it."""
    canary = tmp_path / "canary.pth"
    os.mkfifo(canary)
    hostile = with_metadata(encoder_file, tmp_path / "encoder.safetensors",
                            encoder_kwargs=json.dumps({"checkpoint_path": str(canary)}))
    extra = ["--data", str(cifar_tiny), "--no-baseline"] if command == "probe" else ["--to", "timm", "--out",
                                                                                     str(tmp_path / "x")]
    started = time.perf_counter()
    proc = sslcli_run(command, str(hostile), *extra)
    assert time.perf_counter() - started < 60
    assert_one_clean_error(proc, 2, "checkpoint_path", "never lets")
    assert canary.exists() and not (tmp_path / "x").exists()
    # The allow-list also refuses what it does not know, and plain names stay allowed.
    other = with_metadata(encoder_file, tmp_path / "other.safetensors", encoder_kwargs='{"pretrained_cfg_overlay": 1}')
    assert_one_clean_error(sslcli_run(command, str(other), *extra), 2, "pretrained_cfg_overlay")


# ---------------------------------------------------------------- 2. one process at a time in a run folder


def test_a_second_pretrain_on_the_same_folder_is_refused_naming_the_first(cifar_small: Path, tmp_path: Path):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "sslcli", "pretrain", str(cifar_small), "--out", str(out),
                              "--epochs", "4", *QUICK, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        lock = out / ".sslcli-lock"
        deadline = time.time() + 120
        while not (lock.exists() and lock.read_text().strip() == str(first.pid)) and time.time() < deadline:
            assert first.poll() is None, first.communicate()
            time.sleep(0.05)
        second = pretrain(cifar_small, out, epochs=4)
        assert_one_clean_error(second, 2, f"PID {first.pid}", "in use")
    finally:
        stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == json.loads(stdout)["steps"], "every step logged once"
    # The lock went with the process: the same folder resumes (here: is already complete) at once.
    again = pretrain(cifar_small, out, "--resume", "auto", epochs=4)
    assert again.returncode == 0 and "already complete" in again.stdout


def test_a_lock_left_by_a_killed_process_does_not_block(cifar_tiny: Path, tmp_path: Path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".sslcli-lock").write_text("999999999\n")  # a PID that cannot be running: kill -9 leaves this behind
    proc = pretrain(cifar_tiny, out, epochs=1)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------- 3. a damaged only checkpoint


def test_resume_auto_never_starts_over_a_run_whose_checkpoints_are_damaged(cifar_tiny: Path, tmp_path: Path):
    out = tmp_path / "run"
    assert pretrain(cifar_tiny, out, epochs=1).returncode == 0
    encoder, before = out / "encoder.safetensors", sha256(out / "encoder.safetensors")
    for state in checkpoint.complete_states(out / "checkpoints"):
        data = bytearray(state.read_bytes())
        data[-100] ^= 0xFF  # a flipped bit in the weights
        state.write_bytes(bytes(data))
    proc = pretrain(cifar_tiny, out, "--resume", "auto", epochs=2)
    assert_one_clean_error(proc, 2, "cannot be resumed", "sha256", "--force", "encoder.safetensors is intact")
    assert sha256(encoder) == before, "the intact encoder was not touched"
    forced = pretrain(cifar_tiny, out, "--resume", "auto", "--force", epochs=2)
    assert forced.returncode == 0 and "starting the run over" in forced.stderr


# ---------------------------------------------------------------- 4. what a resume may change


def _stopped_run(cifar_tiny: Path, out: Path) -> None:
    """A run of 6 epochs stopped by SIGTERM after its first epoch's checkpoint."""
    proc = subprocess.Popen([sys.executable, "-m", "sslcli", "pretrain", str(cifar_tiny), "--out", str(out),
                             "--epochs", "6", *QUICK, "--set", "train.checkpoint_every=1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not checkpoint.complete_states(out / "checkpoints") and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 143


def test_a_resume_that_changes_the_optimizer_is_refused_or_takes_effect_with_force(cifar_tiny: Path,
                                                                                  tmp_path: Path):
    out = tmp_path / "run"
    _stopped_run(cifar_tiny, out)

    def resume(*sets: str, force: bool = False) -> subprocess.CompletedProcess:
        extra = [item for s in sets for item in ("--set", s)] + (["--force"] if force else [])
        return pretrain(cifar_tiny, out, "--resume", "auto", "--quiet", *extra, epochs=6)

    proc = resume("optim.name=sgd", "optim.base_lr=0.9")
    assert_one_clean_error(proc, 2, "optimizer lars", "does not carry over")
    proc = resume("optim.weight_decay=0.125")
    assert_one_clean_error(proc, 2, "optimizer changed")
    proc = resume("augment.hue=0.05")
    assert_one_clean_error(proc, 2, "augmentation changed")
    proc = resume("optim.weight_decay=0.125", force=True)
    assert proc.returncode == 0, proc.stderr
    # What spec.json says is what ran: the restored optimizer carries the new weight decay.
    assert json.loads((out / "spec.json").read_text())["optim"]["weight_decay"] == 0.125
    record = checkpoint.read_state_record(checkpoint.complete_states(out / "checkpoints")[-1])
    decays = {group["weight_decay"] for group in record["optimizer"]["param_groups"]}
    assert decays == {0.0, 0.125}, "biases and norms keep none; every other group the new value"


# ---------------------------------------------------------------- 5. special files


def test_a_named_pipe_among_the_images_is_skipped_not_read(cifar_tiny: Path, tmp_path: Path):
    data = tmp_path / "data"
    (data / "a").mkdir(parents=True)
    for image in sorted((cifar_tiny / "train" / "airplane").iterdir())[:10]:
        (data / "a" / image.name).symlink_to(image)
    os.mkfifo(data / "a" / "x.jpg")
    dry = subprocess.run([sys.executable, "-m", "sslcli", "pretrain", str(data), "--dry-run"], capture_output=True,
                         text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    proc = subprocess.run([sys.executable, "-m", "sslcli", "pretrain", str(data), "--out", str(tmp_path / "run"),
                           "--epochs", "1", *QUICK, "--batch-size", "4"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if "not a regular file" in line]
    assert len(warned) == 1 and warned[0].endswith("x.jpg")


# ---------------------------------------------------------------- 6. SIGTERM while the decode cache is built


def test_sigterm_while_the_decode_cache_is_built_leaves_no_temporary_file(tmp_path: Path):
    from bench.common import SHARED_DATA

    cache = tmp_path / "cache"
    env = {**os.environ, "SSLCLI_CACHE_DIR": str(cache)}
    env.pop("SSLCLI_DEBUG", None)
    proc = subprocess.Popen([sys.executable, "-m", "sslcli", "pretrain", str(SHARED_DATA / "imagenette"), "--out",
                             str(tmp_path / "run"), "--epochs", "1", "--set", "data.num_workers=0",
                             "--set", "data.cache=on", "--set", "monitor.knn_every=0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while not list(cache.glob(".*.tmp")) and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    time.sleep(0.5)  # well inside the build
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr and lines[-1].startswith("warning: stopped by SIGTERM"), stderr
    assert not list(cache.glob(".*.tmp")), "the half-built array was removed"
    # A temporary array of a build killed outright (kill -9) is removed by the next build.
    stale = cache / f".{'0' * 32}.u8.999999999.abc.tmp"
    stale.write_bytes(b"x")
    from sslcli import cache as decode_cache

    decode_cache.remove_stale_builds(cache / f"{'0' * 32}.u8")
    assert not stale.exists()


# ---------------------------------------------------------------- 7, 8. odd file names


def _odd_names(cifar_tiny: Path, root: Path) -> Path:
    """20 images, one named with bytes that are not UTF-8, and an unreadable file with a newline in its name."""
    (root / "a").mkdir(parents=True)
    for image in sorted((cifar_tiny / "train" / "airplane").iterdir())[:10]:
        (root / "a" / image.name).symlink_to(image)
    odd = os.fsencode(root / "a") + b"/caf\xe9.png"
    os.symlink(sorted((cifar_tiny / "train" / "cat").iterdir())[0], odd)
    (root / "a" / "bad\nerror: fake.jpg").write_text("not an image")
    return root


def test_file_names_that_are_not_utf8_train_and_embed(cifar_tiny: Path, resnet10t_encoder: Path, tmp_path: Path):
    data = _odd_names(cifar_tiny, tmp_path / "data")
    proc = pretrain(data, tmp_path / "run", "--batch-size", "4", epochs=1)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "emb.safetensors"
    proc = sslcli_run("embed", str(resnet10t_encoder), "--data", str(data), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    index = (tmp_path / "emb.csv").read_bytes()
    assert b"caf\xe9.png" in index, "the CSV keeps the name's own bytes"
    assert load_file(str(out))["embeddings"].shape[0] == 11


def test_a_newline_in_a_file_name_prints_no_line_of_its_own(cifar_tiny: Path, tmp_path: Path):
    data = _odd_names(cifar_tiny, tmp_path / "data")
    proc = pretrain(data, tmp_path / "run", "--batch-size", "4", epochs=1)
    assert proc.returncode == 0, proc.stderr
    assert not [line for line in proc.stderr.splitlines() if line.startswith("error: fake")]
    assert any("bad\\nerror: fake.jpg" in line for line in proc.stderr.splitlines())


# ---------------------------------------------------------------- 9. an empty eval split


def test_an_empty_test_split_turns_the_online_knn_off_and_the_run_trains(cifar_tiny: Path, tmp_path: Path):
    data = tmp_path / "data"
    (data / "test").mkdir(parents=True)
    (data / "train").symlink_to(cifar_tiny / "train")
    proc = sslcli_run("pretrain", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", *QUICK,
                      "--set", "monitor.knn_every=1")
    assert proc.returncode == 0, proc.stderr
    assert [line for line in proc.stderr.splitlines() if "online kNN off" in line] == [
        line for line in proc.stderr.splitlines() if "online kNN off: no images found in" in line]
    assert (tmp_path / "run" / "encoder.safetensors").is_file()


def test_a_val_class_missing_from_train_turns_the_online_knn_off_as_probe_refuses(cifar_tiny: Path, tmp_path: Path,
                                                                                  resnet10t_encoder: Path, capsys):
    from sslcli.online_knn import find_splits

    val = tmp_path / "val"
    for name in ("cat", "unicorn"):  # one class train has, one it has not
        (val / name).mkdir(parents=True)
        (val / name / "x.png").symlink_to(sorted((cifar_tiny / "test" / "cat").iterdir())[0])
    assert find_splits(cifar_tiny / "train", val, 100, 100, 0) is None
    assert "online kNN off: eval classes not in the train split: unicorn" in capsys.readouterr().err
    proc = sslcli_run("probe", str(resnet10t_encoder), "--data", str(cifar_tiny / "train"), "--val", str(val))
    assert_one_clean_error(proc, 2, "eval classes not in the train split: unicorn")


# ---------------------------------------------------------------- 10, 11. sizes and weights no run can use


def test_a_run_with_no_readable_image_writes_no_encoder(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(20):
        (data / f"{i}.jpg").write_text("not an image")
    proc = sslcli_run("pretrain", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", *QUICK,
                      "--batch-size", "4", "--set", "data.cache=off")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "no training step ran" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run" / "encoder.safetensors").exists()


@pytest.mark.parametrize(("field", "value", "message"), [("image_size", "100000", "image size 100000"),
                                                         ("encoder_kwargs", '{"img_size": 100000}', None)])
def test_an_encoder_whose_metadata_asks_for_a_huge_input_is_refused(field: str, value: str, message: str | None,
                                                                    encoder_file: Path, cifar_tiny: Path,
                                                                    tmp_path: Path):
    hostile = with_metadata(encoder_file, tmp_path / "encoder.safetensors", **{field: value})
    proc = sslcli_run("probe", str(hostile), "--data", str(cifar_tiny), "--no-baseline")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert message is None or message in proc.stderr


def test_an_encoder_with_nan_weights_is_refused_naming_the_tensor(encoder_file: Path, cifar_tiny: Path,
                                                                  tmp_path: Path):
    tensors = load_file(str(encoder_file))
    name = sorted(k for k, v in tensors.items() if v.is_floating_point())[3]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")
    broken = tmp_path / "encoder.safetensors"
    save_file(tensors, str(broken), metadata=checkpoint.read_metadata(encoder_file))
    assert_one_clean_error(sslcli_run("probe", str(broken), "--data", str(cifar_tiny), "--no-baseline"), 2,
                           f"tensor {name} holds NaN")


# ---------------------------------------------------------------- 12, 13. outputs that cannot be written


@pytest.mark.parametrize("where", ["procfs", "a folder in the way"])
def test_probe_prints_its_scores_when_the_result_cannot_be_written(where: str, resnet10t_encoder: Path,
                                                                   cifar_tiny: Path, tmp_path: Path):
    out = "/proc/sslcli-probe.json" if where == "procfs" else str(tmp_path / "taken.json")
    if where != "procfs":
        (tmp_path / "taken.json").mkdir()
    proc = sslcli_run("probe", str(resnet10t_encoder), "--data", str(cifar_tiny), "--no-baseline", "--out", out,
                      "--set", "probe.knn_k=[5]", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["knn"]["k5"]["top1"] >= 0  # the scores are out
    assert any(line.startswith("warning: the result") and "written" in line for line in proc.stderr.splitlines())


def test_a_second_probe_on_other_data_keeps_the_first_one_s_file(resnet10t_encoder: Path, cifar_tiny: Path,
                                                                  tmp_path: Path):
    encoder = tmp_path / "enc" / "encoder.safetensors"
    encoder.parent.mkdir()
    encoder.write_bytes(resnet10t_encoder.read_bytes())
    args = ["--no-baseline", "--set", "probe.knn_k=[5]", "--json"]
    first = json.loads(sslcli_run("probe", str(encoder), "--data", str(cifar_tiny), *args).stdout)
    second = json.loads(sslcli_run("probe", str(encoder), "--data", str(cifar_tiny), "--label-fraction", "0.5",
                                   *args).stdout)
    third = json.loads(sslcli_run("probe", str(encoder), "--data", str(cifar_tiny), "--set", "probe.knn_k=[3]",
                                  "--no-baseline", "--json").stdout)
    files = sorted(p.name for p in encoder.parent.glob("probe-*.json"))
    assert first["out"] != second["out"] and len(files) == 3, files
    assert json.loads(Path(first["out"]).read_text())["spec"] == first["spec"], "the first result is still there"
    assert Path(third["out"]).name.endswith("-2.json"), "same data, other settings: the next free name"


def test_export_and_embed_refuse_an_output_in_the_way_before_any_work(resnet10t_encoder: Path, cifar_tiny: Path,
                                                                       tmp_path: Path):
    file = tmp_path / "file"
    file.write_text("mine")
    started = time.perf_counter()
    assert_one_clean_error(sslcli_run("export", str(resnet10t_encoder), "--to", "timm", "--out", str(file)), 2,
                           "is a file")
    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    assert_one_clean_error(sslcli_run("embed", str(resnet10t_encoder), "--data", str(cifar_tiny), "--out",
                                      str(folder)), 2, "is not a file")
    assert file.read_text() == "mine" and time.perf_counter() - started < 60


# ---------------------------------------------------------------- 14. values the spec accepts must be usable


@pytest.mark.parametrize("setting", ["train.seed=100000000000000", "train.seed=18446744073709551616",
                                     "data.num_workers=-1", "train.device=meta", "optim.base_lr=Infinity",
                                     "method.temperature=NaN", "data.image_size=100000",
                                     'encoder.kwargs={"checkpoint_path": "x.pth"}'])
def test_values_no_run_can_use_are_spec_errors_before_any_folder(setting: str, cifar_tiny: Path, tmp_path: Path):
    proc = sslcli_run("pretrain", str(cifar_tiny), "--out", str(tmp_path / "run"), "--set", setting, "--quiet")
    assert_one_clean_error(proc, 2, "spec error", setting.split("=")[0])
    assert not (tmp_path / "run").exists()


def test_epochs_beyond_reason_and_probe_lists_that_cannot_work_are_spec_errors(cifar_tiny: Path, tmp_path: Path,
                                                                               resnet10t_encoder: Path):
    proc = sslcli_run("pretrain", str(cifar_tiny), "--out", str(tmp_path / "run"), "--epochs", "1000000000", "--quiet")
    assert_one_clean_error(proc, 2, "train.epochs")
    for setting in ("probe.knn_k=[0]", "probe.linear_weight_decays=[]"):
        proc = sslcli_run("probe", str(resnet10t_encoder), "--data", str(cifar_tiny), "--set", setting)
        assert_one_clean_error(proc, 2, "spec error", setting.split("=")[0])


def test_a_tiny_knn_temperature_gives_a_finite_nearest_neighbour_score(resnet10t_encoder: Path, cifar_tiny: Path,
                                                                       tmp_path: Path):
    def top1(*sets: str) -> float:
        args = [item for s in sets for item in ("--set", s)]
        proc = sslcli_run("probe", str(resnet10t_encoder), "--data", str(cifar_tiny), "--no-baseline", "--json",
                          "--out", str(tmp_path / f"{len(sets)}.json"), *args)
        return json.loads(proc.stdout)["knn"]

    tiny = top1("probe.knn_k=[20]", "probe.knn_temperature=1e-9")["k20"]["top1"]
    nearest = top1("probe.knn_k=[1]")["k1"]["top1"]
    assert tiny == nearest


# ---------------------------------------------------------------- warnings and a disk-full stop


def test_python_warnings_are_one_line_each(tmp_path: Path):
    script = ("import warnings, sys\nfrom sslcli import cli\ncli._route_python_warnings()\n"
              "warnings.warn('first line\\nsecond line', UserWarning)\nwarnings.warn('first line\\nsecond line')\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.stderr.strip().splitlines() == ["warning: UserWarning: first line"]


def test_after_a_failed_encoder_write_the_message_says_which_file_holds_which_step(cifar_small: Path,
                                                                                   tmp_path: Path,
                                                                                   monkeypatch: pytest.MonkeyPatch):
    import errno

    from sslcli.commands import pretrain as command
    from sslcli.errors import RunError
    from tests.test_resume import spec_for

    real = checkpoint.atomic_write_bytes

    def disk_full_for_the_second_encoder(path: Path, data: bytes) -> None:
        if path.name == "encoder.safetensors" and (path.parent / "encoder.safetensors").exists():
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", disk_full_for_the_second_encoder)
    with pytest.raises(RunError, match="checkpoint of step 8 was saved.*still the previous save's"):
        command.run(spec_for(cifar_small, tmp_path / "run"))
    assert checkpoint.read_metadata(tmp_path / "run" / "encoder.safetensors")["step"] == "4"
    assert checkpoint.complete_states(tmp_path / "run" / "checkpoints")[-1].name == "state-000000008.safetensors"


# ---------------------------------------------------------------- every accepted spec runs, or is refused at once

NUMERIC_FIELDS = ["train.seed", "train.batch_size", "train.epochs", "train.max_steps", "train.log_every",
                  "train.checkpoint_every", "train.checkpoint_every_steps", "train.max_nan_skips",
                  "train.keep_checkpoints", "data.image_size", "data.max_images", "data.num_workers",
                  "data.cache_max_gb", "optim.base_lr", "optim.weight_decay", "optim.momentum", "optim.trust_coeff",
                  "optim.warmup_epochs", "optim.min_lr_ratio", "optim.clip_grad", "monitor.knn_every", "monitor.knn_k",
                  "monitor.knn_bank_max", "monitor.knn_val_max", "method.temperature", "method.proj_hidden_dim",
                  "method.proj_out_dim", "augment.hue", "augment.blur_p", "augment.brightness"]


def test_an_optimizer_value_past_float32_is_refused_at_validation():
    """base_lr or weight_decay 1e300 once reached the optimizer ("cannot be converted to type float without
    overflow" on the first step): past 1e6 they are spec errors now."""
    from sslcli.errors import UsageError
    from sslcli.spec import PretrainSpec, resolve

    for field in ("optim.base_lr", "optim.weight_decay", "optim.final_weight_decay"):
        with pytest.raises(UsageError, match=field.split(".")[1]):
            resolve(PretrainSpec, options={"data.path": "."}, sets=[f"{field}=1e300"])
    assert resolve(PretrainSpec, options={"data.path": "."}, sets=["optim.base_lr=1e6"]).optim.base_lr == 1e6


def test_a_head_wider_than_sslcli_builds_is_refused_at_validation(tmp_path: Path):
    """method.proj_hidden_dim=2**31 once reached the allocator (4 TB for one layer): any *_dim setting above
    MAX_WIDTH is a spec error now, one line, exit 2, before anything is made."""
    proc = sslcli_run("pretrain", str(tmp_path), "--set", "method.proj_hidden_dim=2147483648", "--dry-run")
    assert proc.returncode == 2 and "wider than 131072" in proc.stderr and len(proc.stderr.splitlines()) <= 2


class _Enough(Exception):
    """Two steps ran: the spec is one a run can use."""


def test_every_accepted_spec_runs_or_is_refused_at_validation(cifar_tiny: Path, tmp_path_factory, monkeypatch):
    """Hypothesis over the spec's numeric fields, one extreme value at a time, on a run small enough to take its
    first two steps: a value the spec accepts sets up a run that trains (or stops with one clean line, a
    UsageError or RunError), never with a Python error."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from sslcli import train
    from sslcli.commands import pretrain as command
    from sslcli.errors import RunError, UsageError
    from sslcli.spec import PretrainSpec, resolve

    real = train._Loop.train_step

    def two_steps(self, *args, **kwargs):
        if self.step >= 2:
            raise _Enough
        return real(self, *args, **kwargs)

    monkeypatch.setattr(train._Loop, "train_step", two_steps)
    extremes = st.one_of(st.sampled_from([0, 1, -1, 2**31, 2**32, 2**63, 2**64, 10**12, -10**12]),
                         st.integers(-10**6, 10**6),
                         st.sampled_from([0.0, -0.0, 1e-300, 1e300, float("inf"), float("-inf"), float("nan"),
                                          1e-9, 0.5, 1.0, 1.5, -1e-3]),
                         st.floats(-1e6, 1e6, allow_nan=False))

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(field=st.sampled_from(NUMERIC_FIELDS), value=extremes)
    def check(field: str, value) -> None:
        out = tmp_path_factory.mktemp("spec")
        quick = [item for flag, item in zip(QUICK[::2], QUICK[1::2], strict=True) if flag == "--set"]
        sets = [*quick, "train.epochs=1", "train.batch_size=8", f"{field}={json.dumps(value)}"]
        try:
            spec = resolve(PretrainSpec, options={"data.path": str(cifar_tiny), "out": str(out / "run")}, sets=sets)
        except UsageError:
            return  # refused at validation: exit 2
        try:
            command.run(spec)
        except (_Enough, UsageError, RunError):
            return  # ran, or stopped with one clean line (exit 2 or 1)

    check()
