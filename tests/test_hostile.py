"""Hostile and wrong inputs: damaged encoder files, odd spec values and presets give one clean error."""

from __future__ import annotations

import contextlib
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from sslcli import checkpoint
from sslcli.errors import UsageError
from sslcli.spec import PretrainSpec, dump, resolve

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _raw(header: dict, body: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


def _with_metadata(src: Path, dst: Path, **changes: str) -> Path:
    from safetensors.torch import load_file

    meta = checkpoint.read_metadata(src)
    meta.update(changes)
    save_file(load_file(str(src)), str(dst), metadata=meta)
    return dst


def _with_tensors(src: Path, dst: Path, edit) -> Path:
    from safetensors.torch import load_file

    tensors = load_file(str(src))
    edit(tensors)
    save_file(tensors, str(dst), metadata=checkpoint.read_metadata(src))
    return dst


def hostile_files(src: Path, folder: Path) -> dict[str, Path]:
    def write(name: str, data: bytes) -> Path:
        (folder / name).write_bytes(data)
        return folder / name

    first = next(iter(checkpoint.load_encoder(src)[0].state_dict()))
    return {
        "not safetensors": write("text.safetensors", b"hello, not a tensor file\n" * 10),
        "header longer than file": write("long.safetensors", struct.pack("<Q", 10_000) + b"{}"),
        "huge header": write("huge.safetensors", struct.pack("<Q", 2**62) + b"{}"),
        "overlapping offsets": write("overlap.safetensors", _raw({
            "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            "__metadata__": {"sslcli_format": checkpoint.ENCODER_FORMAT}}, b"\0" * 12)),
        "wrong dtype": _with_tensors(src, folder / "dtype.safetensors", lambda t: t.update({first: t[first].half()})),
        "wrong shape": _with_tensors(src, folder / "shape.safetensors", lambda t: t.update({first: t[first][:1]})),
        "missing key": _with_tensors(src, folder / "missing.safetensors", lambda t: t.pop(first)),
        "extra key": _with_tensors(src, folder / "extra.safetensors", lambda t: t.update({"stowaway": torch.ones(1)})),
        "wrong format tag": _with_metadata(src, folder / "tag.safetensors", sslcli_format="something.else.v9"),
        "unknown encoder": _with_metadata(src, folder / "unknown.safetensors", encoder="resnet_does_not_exist"),
        "markup and escapes": _with_metadata(src, folder / "markup.safetensors",
                                             encoder="[bold red]evil[/bold red]\x1b[2J\x1b]0;pwned\x07"),
        "damaged kwargs": _with_metadata(src, folder / "kwargs.safetensors", encoder_kwargs="[1, 2"),
        "kwargs timm rejects": _with_metadata(src, folder / "kw2.safetensors", encoder_kwargs='{"depth": "deep"}'),
    }


def test_every_hostile_encoder_file_is_a_clean_usage_error(encoder_file: Path, tmp_path: Path):
    for case, path in hostile_files(encoder_file, tmp_path).items():
        with pytest.raises(UsageError) as info:
            checkpoint.load_encoder(path)
        assert str(info.value).strip(), case


def test_probe_prints_hostile_metadata_literally(encoder_file: Path, tmp_path: Path, cifar_small: Path):
    files = hostile_files(encoder_file, tmp_path)
    for case in ("markup and escapes", "wrong dtype", "overlapping offsets"):
        proc = subprocess.run([sys.executable, "-m", "sslcli", "probe", str(files[case]), "--data", str(cifar_small), "--no-baseline"],
                              capture_output=True, text=True)
        assert proc.returncode == 2, (case, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, case
        assert "\x1b" not in proc.stderr and "\x07" not in proc.stderr  # escape codes are shown, not obeyed
        if case == "markup and escapes":
            assert "[bold red]evil[/bold red]" in lines[0] and "\\x1b[2J" in lines[0]


@FUZZ
@given(data=st.data())
def test_random_byte_mutations_of_an_encoder_give_only_clean_errors(encoder_file: Path, tmp_path: Path, data):
    raw = bytearray(encoder_file.read_bytes())
    header_len = struct.unpack("<Q", raw[:8])[0] + 8
    for _ in range(data.draw(st.integers(1, 8))):
        # Most mutations aim at the header, where a flipped byte changes meaning; some hit the weights.
        limit = header_len if data.draw(st.booleans()) else len(raw)
        raw[data.draw(st.integers(0, limit - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    path = tmp_path / "mutated.safetensors"
    path.write_bytes(bytes(raw))
    with contextlib.suppress(UsageError):  # the only acceptable failure; anything else fails the test
        checkpoint.load_encoder(path)


SPEC_KEYS = ["data.image_size", "data.max_images", "data.num_workers", "data.cache", "encoder.name",
             "encoder.small_stem", "encoder.kwargs", "method.name", "method.temperature", "augment.scale",
             "augment.hue", "augment.blur_p", "optim.name", "optim.base_lr", "optim.betas", "train.epochs",
             "train.batch_size", "train.precision", "train.on_nan", "out", "init_from", "nonsense.key", "data",
             "method.queue_size", "method.view_blur_p"]
VALUES = st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=True), st.booleans(), st.none(),
                   st.text(max_size=20), st.lists(st.floats(-2, 2), max_size=3),
                   st.sampled_from(["simclr", "byol", "mae", "dino", "auto", "[1, 2]", '{"a": 1}', "null", "1e999"]))


def assert_readable_spec_error(message: str) -> None:
    """One line per problem, each saying what is wrong in the spec's own terms, never a Python traceback."""
    lines = message.splitlines()
    assert lines and all(line.strip() for line in lines), message
    assert "Traceback" not in message and "pydantic" not in message.lower(), message
    known = ("spec error:", "--set expects", "cannot set", "cannot read preset", "unknown method", "preset '")
    assert all(line.startswith(known) for line in lines), message


def assert_round_trips(spec: PretrainSpec) -> None:
    """A spec that validates is written to spec.json and read back on resume and by `sslcli report`: the
    JSON must give the very same spec, and the views must be cropped to data.image_size."""
    assert PretrainSpec.model_validate(json.loads(json.dumps(dump(spec)))) == spec
    assert spec.augment.size == spec.data.image_size or spec.data.image_size == "auto"  # auto: DATA unseen


@FUZZ
@given(pairs=st.lists(st.tuples(st.sampled_from(SPEC_KEYS), VALUES), max_size=6))
def test_fuzzed_set_values_give_a_spec_or_a_usage_error(pairs):
    sets = [f"{key}={json.dumps(value) if not isinstance(value, str) else value}" for key, value in pairs]
    try:
        spec = resolve(PretrainSpec, sets=sets)
    except UsageError as exc:
        assert_readable_spec_error(str(exc))
    else:
        assert_round_trips(spec)


TOML_LINES = st.one_of(
    st.sampled_from(["[data]", "[method]", "[optim]", "[train]", "[augment]", "[encoder]", "[preset]", "[[x]]", "[",
                     'name = "byol"', 'name = "nope"', "image_size = 96", "image_size = -1", "epochs = 1e3",
                     "scale = [0.5, 0.1]", "kwargs = { patch_size = 4 }", "base_lr = inf", 'base_lr = "fast"',
                     "momentum = 2", "= 3", "a.b.c = 1", 'description = "\\u001b[31m"']),
    st.text(max_size=30))


@FUZZ
@given(lines=st.lists(TOML_LINES, max_size=10))
def test_fuzzed_presets_give_a_spec_or_a_usage_error(lines, tmp_path: Path):
    preset = tmp_path / "fuzz.toml"
    preset.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
    try:
        spec = resolve(PretrainSpec, preset=str(preset))
    except UsageError as exc:
        assert_readable_spec_error(str(exc))
    else:
        assert_round_trips(spec)
