"""The float32 fallback for the CPU bf16 convolutions whose weight gradient oneDNN gets wrong (onednn.py)."""

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sslcli.onednn import Bf16ConvFallback, bf16_conv_fallback, bf16_weight_grad_broken
from sslcli.train import LoopConfig, Step, StepOut, fit


def _dirty_memory() -> None:
    """Free a buffer of NaN: memory a kernel leaves unwritten then holds NaN, as in a long run."""
    torch.full((1 << 22,), float("nan"), dtype=torch.bfloat16)


@pytest.mark.parametrize(("spatial", "stride", "padding", "broken"), [
    ((1, 1), 2, 1, True),  # ResNet's last-stage downsampling at 16 px
    ((2, 2), 3, (1, 1), True),
    ((3,), 4, 2, True),  # conv1d
    ((2, 2), 2, 1, False),  # the map is as large as the stride
    ((1, 1), 2, 0, False),  # no padding: the average-pool shortcut's 1x1 convolution
    ((1, 1), 1, 1, False),
    ((1, 8), (1, 2), (1, 1), False),
    ((1, 1), 1, "same", False),
])
def test_the_shapes_that_fall_back(spatial, stride, padding, broken):
    assert bf16_weight_grad_broken(spatial, stride, padding) is broken


@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
def test_a_strided_convolution_on_a_1x1_map_gets_the_float32_weight_gradient(memory_format):
    """Only the centre tap of a 3x3, stride 2, padding 1 convolution on a 1x1 map sees data: the 8 others get
    exactly 0, the centre the float32 gradient, however dirty the memory the backward reuses."""
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 128, 3, stride=2, padding=1, bias=False).to(memory_format=memory_format)
    for _ in range(3):
        _dirty_memory()
        x = torch.randn(32, 64, 1, 1).contiguous(memory_format=memory_format)
        conv.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16), Bf16ConvFallback():
            y = conv(x)
        assert y.dtype == torch.bfloat16  # what autocast would have given the next layer
        y.float().square().sum().backward()
        grad = conv.weight.grad
        outer = grad.clone()
        outer[:, :, 1, 1] = 0
        assert torch.count_nonzero(outer) == 0
        reference, = torch.autograd.grad(F.conv2d(x, conv.weight, stride=2, padding=1).bfloat16().float()
                                         .square().sum(), conv.weight)
        torch.testing.assert_close(grad, reference, rtol=1e-5, atol=1e-6)


def test_other_convolutions_stay_in_bf16():
    """A convolution oneDNN gets right (a 4x4 map) runs exactly as under autocast alone."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, stride=2, padding=1)
    x = torch.randn(2, 8, 4, 4)
    results = []
    for fallback in (False, True):
        conv.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16), (Bf16ConvFallback() if fallback else contextlib.nullcontext()):
            y = conv(x)
        y.float().sum().backward()
        results.append((y, conv.weight.grad.clone()))
    assert results[1][0].dtype == torch.bfloat16
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_the_fallback_is_on_for_cpu_bf16_only():
    assert isinstance(bf16_conv_fallback(torch.device("cpu"), torch.bfloat16), Bf16ConvFallback) \
        or not torch.backends.mkldnn.is_available()
    assert not isinstance(bf16_conv_fallback(torch.device("cpu"), None), Bf16ConvFallback)
    assert not isinstance(bf16_conv_fallback(torch.device("cuda"), torch.bfloat16), Bf16ConvFallback)


def test_bf16_training_of_a_network_with_a_1x1_last_stage_gets_exact_zeros_on_the_padded_taps():
    """The step fit() takes in bf16 on CPU: a strided convolution on the 1x1 map of a last stage (a resnet10t
    at 16 px) gets exact zeros on its padded taps every step (without the fallback: garbage, up to inf)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.ReLU(),  # 2x2 -> 1x1
                          nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False),  # 1x1 -> 1x1: the broken kernel
                          nn.BatchNorm2d(64), nn.ReLU(), nn.Flatten(), nn.Linear(64, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    outer = []

    def loss(x: torch.Tensor, step: int) -> StepOut:
        _dirty_memory()
        logits = model(x.float() / 255 - 0.5)
        return StepOut(loss=F.cross_entropy(logits.float(), torch.arange(len(x)) % 4))

    def batches(epoch: int, skip: int = 0):
        for _ in range(4 - skip):
            yield torch.randint(0, 256, (64, 3, 2, 2), dtype=torch.uint8)

    def check(step: int) -> None:
        grad = model[2].weight.grad.clone()
        grad[:, :, 1, 1] = 0
        outer.append(int(torch.count_nonzero(grad)))

    fit(Step(model, loss, optimizer, torch.full((8,), 0.1), cancel_gradients=check), batches,
        LoopConfig(epochs=2, steps_per_epoch=4, precision="bf16", channels_last=True, log_every=1),
        torch.device("cpu"))
    assert outer == [0] * 8
