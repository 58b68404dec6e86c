from pathlib import Path

import pytest

from sslcli.errors import UsageError
from sslcli.methods import CONFIGS, PRESET_FAMILIES
from sslcli.spec import FinetuneSpec, PretrainSpec, ProbeSpec, list_presets, parse_set, resolve


def test_defaults_are_valid_simclr():
    spec = resolve(PretrainSpec)
    assert spec.method.name == "simclr"
    assert spec.train.batch_size == 256
    assert spec.data.image_size == "auto"  # no DATA to choose it from: pretrain chooses it (or says why not)
    sized = resolve(PretrainSpec, sets=["data.image_size=48"])
    assert sized.augment.size == sized.data.image_size == 48


def test_precedence_defaults_preset_typed_set(tmp_path: Path):
    preset = tmp_path / "p.toml"
    preset.write_text('[preset]\ndescription = "x"\n[train]\nepochs = 7\nbatch_size = 64\nseed = 3\n'
                      '[optim]\nbase_lr = 0.5\n')
    spec = resolve(PretrainSpec, preset=str(preset), options={"train.batch_size": 128, "train.seed": 4},
                   sets=["train.seed=5", "data.image_size=48"])
    assert spec.train.epochs == 7  # preset beats default
    assert spec.train.batch_size == 128  # typed option beats preset
    assert spec.train.seed == 5  # --set beats typed option
    assert spec.optim.base_lr == 0.5
    assert spec.augment.size == 48  # the crop follows the image size
    assert spec.scaled_lr() == pytest.approx(0.5 * 128 / 256)
    assert spec.optim.weight_decay == PretrainSpec().optim.weight_decay  # untouched keys keep defaults


def test_none_typed_options_do_not_override():
    spec = resolve(PretrainSpec, options={"train.epochs": None}, sets=["train.epochs=3"])
    assert spec.train.epochs == 3


def test_unknown_key_names_the_key_and_valid_ones():
    with pytest.raises(UsageError) as err:
        resolve(PretrainSpec, sets=["train.epoch=3"])
    message = str(err.value)
    assert "unknown key 'train.epoch'" in message
    assert "epochs" in message and err.value.exit_code == 2


def test_one_line_per_problem():
    with pytest.raises(UsageError) as err:
        resolve(PretrainSpec, sets=["train.epochs=-1", "optim.base_lr=fast", "method.bogus=1"])
    lines = str(err.value).splitlines()
    assert len(lines) == 3
    assert any(line.startswith("spec error: train.epochs") for line in lines)
    assert any("optim.base_lr" in line and "'fast'" in line for line in lines)
    assert any("unknown key 'method.bogus'" in line for line in lines)


def test_parse_set_values():
    assert parse_set("a.b=3") == ("a.b", 3)
    assert parse_set("a=0.5") == ("a", 0.5)
    assert parse_set("a=true") == ("a", True)
    assert parse_set("a=[0.2, 1.0]") == ("a", [0.2, 1.0])
    assert parse_set("encoder.name=resnet18") == ("encoder.name", "resnet18")
    for bad in ("novalue", "=3", "a..b=1"):
        with pytest.raises(UsageError):
            parse_set(bad)


def test_set_into_a_value_is_an_error():
    with pytest.raises(UsageError, match="is a value"):
        resolve(PretrainSpec, sets=["train.epochs=3", "train.epochs.x=1"])


def test_augment_size_cannot_disagree_with_image_size():
    with pytest.raises(UsageError, match="data.image_size"):
        resolve(PretrainSpec, sets=["data.image_size=32", "augment.size=64"])


def test_unknown_method_and_unknown_preset():
    with pytest.raises(UsageError, match="unknown method 'nosuch'"):
        resolve(PretrainSpec, options={"method.name": "nosuch"})
    with pytest.raises(UsageError, match="unknown preset"):
        resolve(PretrainSpec, preset="no-such-preset")


def test_method_switch_against_a_preset_of_another_method_is_refused():
    # byol-cpu's method section only fits BYOL: --method simclr must not drop it silently.
    with pytest.raises(UsageError, match="preset 'byol-cpu' is for method 'byol', not 'simclr'"):
        resolve(PretrainSpec, preset="byol-cpu", options={"method.name": "simclr"})
    # The same method as the preset's is fine, and so is a preset without a method section.
    assert resolve(PretrainSpec, preset="byol-cpu", options={"method.name": "byol"}).method.name == "byol"
    assert resolve(PretrainSpec, preset="quickstart", options={"method.name": "simclr"}).method.name == "simclr"


def test_every_shipped_preset_is_a_valid_spec():
    names = [name for name, _ in list_presets()]
    assert {"quickstart", "simclr-cifar10", "simclr-imagenette"} <= set(names)
    # A preset's name starts with its method or recipe, which may hold a dash itself (s4l-exemplar, cpc-v1).
    families = sorted([*CONFIGS, *PRESET_FAMILIES], key=len, reverse=True)
    for name, description in list_presets():
        assert description, f"preset {name} has no description"
        spec = resolve(PretrainSpec, preset=name)
        prefix = "simclr" if name == "quickstart" else next(f for f in families if name.startswith(f"{f}-"))
        assert spec.method.name == PRESET_FAMILIES.get(prefix, prefix), name
    cifar = resolve(PretrainSpec, preset="simclr-cifar10")
    assert (cifar.encoder.name, cifar.train.batch_size, cifar.train.epochs) == ("resnet18", 512, 800)
    assert resolve(PretrainSpec, preset="simclr-imagenette").data.image_size == 96


def test_probe_spec_requires_encoder_and_data():
    with pytest.raises(UsageError, match="encoder"):
        resolve(ProbeSpec, options={"data.path": "x"})
    spec = resolve(ProbeSpec, options={"encoder": "e.safetensors", "data.path": "d"})
    assert spec.probe.knn_k == [20, 200] and spec.probe.knn_temperature == 0.07


@pytest.mark.parametrize(("model", "old", "new"), [(ProbeSpec, "knn_k=[5]", "probe.knn_k"),
                                                   (ProbeSpec, "cache=off", "data.cache"),
                                                   (ProbeSpec, "seed=3", "probe.seed"),
                                                   (FinetuneSpec, "data.train=x", "data.path")])
def test_the_old_spelling_of_a_moved_key_is_refused_with_the_new_one(model, old: str, new: str):
    """One shape for every command: data.* for the images, a section for the run's settings."""
    options = {"encoder": "e.safetensors", "data.path": "d"}
    with pytest.raises(UsageError, match=f"is now '{new}'"):
        resolve(model, options=options, sets=[old])
    assert resolve(model, options=options, sets=[f"{new}={old.split('=')[1]}"])  # the new spelling is taken


def test_a_preset_extends_a_base_and_holds_only_what_differs(tmp_path: Path):
    from sslcli.spec import load_preset

    user = tmp_path / "mine.toml"  # a user's preset on a shipped one, by name
    user.write_text('[preset]\nextends = "simclr-cpu"\ndescription = "mine"\n[train]\nepochs = 2\n'
                    '[method]\ntemperature = 0.5\n')
    base, mine = load_preset("simclr-cpu"), load_preset(str(user))
    assert mine["train"]["epochs"] == 2 and mine["method"]["temperature"] == 0.5  # its own values win
    assert mine["method"]["proj_hidden_dim"] == base["method"]["proj_hidden_dim"]  # the rest is the base's
    assert mine["encoder"] == base["encoder"] == {"name": "resnet10t", "small_stem": False}  # from base/cpu
    spec = resolve(PretrainSpec, preset=str(user))
    assert (spec.train.epochs, spec.method.temperature, spec.train.log_every) == (2, 0.5, 20)
    # A path ending in .toml is read relative to the extending file; a base's metadata is not inherited.
    (tmp_path / "child.toml").write_text('[preset]\nextends = "mine.toml"\n[train]\nseed = 9\n')
    child = load_preset(str(tmp_path / "child.toml"))
    assert child["train"] == {**mine["train"], "seed": 9} and "preset" not in child


@pytest.mark.parametrize(("extends", "message"), [('"nope"', "extends 'nope', which does not exist"),
                                                  ('"a.toml"', "which extends it in turn"),
                                                  ("3", "extends must name a preset")])
def test_a_bad_base_is_one_usage_error(tmp_path: Path, extends: str, message: str):
    (tmp_path / "a.toml").write_text(f'[preset]\nextends = {extends}\n')
    with pytest.raises(UsageError, match=message):
        resolve(PretrainSpec, preset=str(tmp_path / "a.toml"))


def test_shipped_presets_inherit_their_shared_blocks():
    """No shipped preset repeats the blocks its base holds: each extends a base (or its method's preset), and
    its own [data] and [encoder] hold only what differs from it."""
    from sslcli.spec import presets_dir

    for path in sorted(presets_dir().glob("*.toml")):
        text = path.read_text()
        assert 'extends = "' in text, f"{path.name} extends no base"
    assert "max_images = 20000" not in (presets_dir() / "simclr-cpu.toml").read_text()  # in base/cpu only
    assert all("base" not in name for name, _ in list_presets()), "bases are not offered as presets"
