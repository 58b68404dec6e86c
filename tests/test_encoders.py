import pytest
import torch
from torch import nn

from sslcli.encoders import apply_small_stem, build_encoder, rebuild_encoder
from sslcli.errors import UsageError


def test_small_stem_is_automatic_for_small_resnet_inputs():
    model, info = build_encoder("resnet18", 32)
    assert info.small_stem and info.feature_dim == 512
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    # The stem keeps 32x32 resolution through layer1, as in the CIFAR ResNet.
    assert model.forward_features(torch.zeros(1, 3, 32, 32)).shape[-1] == 4

    _, big = build_encoder("resnet18", 96)
    assert not big.small_stem
    _, forced_off = build_encoder("resnet18", 32, small_stem=False)
    assert not forced_off.small_stem


def test_deep_stem_keeps_weight_shapes():
    plain, _ = build_encoder("resnet10t", 32, small_stem=False)
    small, info = build_encoder("resnet10t", 32, small_stem=True)
    assert info.small_stem
    assert small.conv1[0].stride == (1, 1) and plain.conv1[0].stride == (2, 2)
    assert {k: v.shape for k, v in small.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}


def test_small_stem_refused_for_non_resnets():
    with pytest.raises(UsageError, match="ResNet"):
        apply_small_stem(nn.Linear(2, 2))


def test_unknown_encoder_suggests_names():
    with pytest.raises(UsageError, match="did you mean.*resnet18"):
        build_encoder("resnet181", 32)


def test_vit_is_built_for_the_input_size_and_rebuilds_identically():
    model, info = build_encoder("vit_tiny_patch16_224", 32, kwargs={"patch_size": 4})
    assert info.kwargs["img_size"] == 32 and not info.small_stem
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, info.feature_dim)
    again = rebuild_encoder(info)
    assert again.state_dict().keys() == model.state_dict().keys()


def test_stochastic_depth_passes_and_path_like_keys_outside_the_list_are_still_refused():
    """drop_path_rate is an architecture argument (its name says path, it opens nothing); an unknown key that
    names a path or file is refused as one that loads."""
    from sslcli.encoder_args import encoder_kwargs_problem

    assert encoder_kwargs_problem({"drop_path_rate": 0.1, "patch_size": 4}) is None
    encoder, _ = build_encoder("vit_tiny_patch16_224", 16, "auto", {"patch_size": 4, "depth": 2, "drop_path_rate": 0.2})
    assert max(m.drop_prob for m in encoder.modules() if type(m).__name__ == "DropPath") == pytest.approx(0.2)
    for key in ("weights_path", "config_file", "checkpoint_path"):
        assert "would make timm load" in encoder_kwargs_problem({key: "x"})
