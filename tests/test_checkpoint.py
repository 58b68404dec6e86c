import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from sslcli import checkpoint
from sslcli.encoders import build_encoder
from sslcli.errors import UsageError
from sslcli.pretraining import build_optimizer
from sslcli.spec import OptimConfig

LARS = OptimConfig(name="lars", weight_decay=1e-4, momentum=0.9, trust_coeff=0.02)

def _saved_encoder(tmp_path: Path, name: str = "resnet18", size: int = 32):
    model, info = build_encoder(name, size)
    meta = checkpoint.encoder_metadata(info, method="simclr", epoch=3, step=30, spec={"train": {"epochs": 3}})
    path = tmp_path / "encoder.safetensors"
    checkpoint.save_encoder(path, model, meta)
    return model, info, path


def test_encoder_round_trip_gives_the_same_features(tmp_path: Path):
    model, info, path = _saved_encoder(tmp_path)
    loaded, loaded_info, meta = checkpoint.load_encoder(path)
    assert loaded_info == info
    assert meta["format"] == "pt" and meta["method"] == "simclr" and meta["step"] == "30"
    assert json.loads(meta["spec"]) == {"train": {"epochs": 3}}
    x = torch.randn(2, 3, 32, 32)
    model.eval(), loaded.eval()
    torch.testing.assert_close(loaded(x), model(x))
    assert not list(tmp_path.glob("*.tmp")), "the temporary file of the atomic write was left behind"


def _docs_snippet(heading: str) -> str:
    """The first python block under `heading` in docs/artifacts.md, as users read it."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "artifacts.md").read_text()
    section = text[text.index(heading):]
    return section[section.index("```python\n") + 10:section.index("\n```", section.index("```python"))]


@pytest.mark.parametrize(("name", "size", "stem"), [("resnet18", 32, "plain 7x7 conv"), ("resnet10t", 32, "deep stem"),
                                                    ("resnet18", 96, "no small stem")])
def test_encoder_loads_into_timm_from_metadata_alone(tmp_path: Path, name: str, size: int, stem: str):
    """The docs' lines for users without sslcli, run as written: the model they build gives sslcli's features."""
    snippet = _docs_snippet("### Load it with timm alone")
    model, info, path = _saved_encoder(tmp_path, name, size)
    assert info.small_stem == (size <= 64), stem
    scope: dict = {}
    exec(snippet.replace('"runs/simclr/encoder.safetensors"', repr(str(path))), scope)  # noqa: S102
    x = torch.randn(2, 3, size, size)
    model.eval(), scope["model"].eval()
    torch.testing.assert_close(scope["model"](x), model(x))


def test_not_an_encoder_is_refused_clearly(tmp_path: Path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(UsageError, match=r"not a safetensors file \(it is a text file\); expected an encoder"):
        checkpoint.load_encoder(garbage)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, plain)
    with pytest.raises(UsageError, match="not an sslcli encoder"):
        checkpoint.load_encoder(plain)
    with pytest.raises(UsageError, match="does not exist"):
        checkpoint.load_encoder(tmp_path / "missing.safetensors")


def test_weights_that_do_not_match_the_metadata_are_refused(tmp_path: Path):
    _, info, path = _saved_encoder(tmp_path)
    meta = checkpoint.read_metadata(path)
    other = tmp_path / "other.safetensors"
    small, _ = build_encoder("resnet10t", 32)
    checkpoint.save_encoder(other, small, meta)  # resnet10t weights under resnet18 metadata
    with pytest.raises(UsageError, match="do not match a resnet18") as refused:
        checkpoint.load_encoder(other)
    # The message names a tensor that does not fit, not only load_state_dict's "Error(s) in loading" line.
    assert "Error(s) in loading" not in str(refused.value)
    assert "size mismatch for" in str(refused.value) or "key" in str(refused.value)


def _train_one_step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    model(torch.randn(4, 3, 32, 32)).pow(2).mean().backward()
    opt.step()
    opt.zero_grad()


def test_train_state_round_trip(tmp_path: Path):
    model, _ = build_encoder("resnet10t", 32, small_stem=False)
    opt = build_optimizer(model, LARS, 0.1)
    _train_one_step(model, opt)
    folder = tmp_path / "checkpoints"
    path = checkpoint.save_train_state(folder, step=1, epoch=1, model=model, optimizer=opt, extra={"note": "x"})
    rng_after_save = torch.rand(3)

    fresh, _ = build_encoder("resnet10t", 32, small_stem=False)
    fresh_opt = build_optimizer(fresh, LARS, 0.1)
    torch.rand(7)  # move the global RNG away from the saved state
    record, rng = checkpoint.load_train_state(path, fresh, fresh_opt)
    assert rng == {}
    assert record["step"] == 1 and record["note"] == "x"
    torch.testing.assert_close(torch.rand(3), rng_after_save)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    # The optimizer continues identically: one more step on the same batch gives the same weights.
    torch.manual_seed(0)
    _train_one_step(model, opt)
    torch.manual_seed(0)
    _train_one_step(fresh, fresh_opt)
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_a_state_of_another_model_is_refused_naming_the_tensor(tmp_path: Path):
    # e.g. a colorization run saved with 261 ab bins resumed with 313: the message says which tensor differs.
    saved = nn.Sequential(nn.Linear(4, 261))
    opt = torch.optim.SGD(saved.parameters(), lr=0.1)
    path = checkpoint.save_train_state(tmp_path / "checkpoints", step=1, epoch=1, model=saved, optimizer=opt,
                                       extra={})
    other = nn.Sequential(nn.Linear(4, 313))
    with pytest.raises(UsageError, match=r"does not fit this run's model and optimizer \(size mismatch for "
                                         r"0\.weight: .*261.*313"):
        checkpoint.load_train_state(path, other, torch.optim.SGD(other.parameters(), lr=0.1))


def test_only_the_newest_complete_states_are_kept(tmp_path: Path):
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    folder = tmp_path / "ck"
    for step in (1, 2, 3):
        checkpoint.save_train_state(folder, step=step, epoch=step, model=model, optimizer=opt, extra={}, keep=2)
    assert [p.name for p in checkpoint.complete_states(folder)] == ["state-000000002.safetensors",
                                                                      "state-000000003.safetensors"]
    # A state whose JSON half is missing (a crash between the two writes) is not complete.
    (folder / "state-000000004.safetensors").write_bytes(b"partial")
    assert checkpoint.complete_states(folder)[-1].name == "state-000000003.safetensors"
    pointer = json.loads((folder / "latest.json").read_text())
    assert pointer["file"] == "state-000000003.safetensors" and pointer["step"] == 3


def test_a_torn_newest_state_falls_back_to_the_previous_good_one(tmp_path: Path, capsys):
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    folder = tmp_path / "ck"
    for step in (1, 2):
        checkpoint.save_train_state(folder, step=step, epoch=0, model=model, optimizer=opt, extra={})
    assert checkpoint.newest_intact_state(folder).name == "state-000000002.safetensors"
    newest = folder / "state-000000002.safetensors"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # what a kill during a non-atomic write would leave
    assert not checkpoint.state_is_intact(newest)
    assert checkpoint.newest_intact_state(folder).name == "state-000000001.safetensors"
    assert "previous good checkpoint" in capsys.readouterr().err
    # A flipped byte with the size unchanged is caught by the hash too.
    older = folder / "state-000000001.safetensors"
    flipped = bytearray(older.read_bytes())
    flipped[-1] ^= 0xFF
    older.write_bytes(bytes(flipped))
    assert checkpoint.newest_intact_state(folder) is None
