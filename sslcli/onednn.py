"""A oneDNN kernel that is wrong for some shapes, and the float32 fallback train.fit uses around it.

oneDNN's bf16 convolution weight gradient on CPU (measured: `jit_bf16:avx512_core_bf16` backward_weights,
oneDNN 3.12 in torch 2.14, AVX512-BF16 EPYC) leaves unwritten the taps of the weight gradient that only
ever see zero padding when the input is smaller than the stride along a padded dimension. A 3x3, stride 2,
padding 1 convolution on a 1x1 map (a ResNet's last-stage downsampling at 16 px) must give its 8 outer
taps exactly 0; they hold whatever the reused memory held instead: zeros on fresh pages, else anything up
to inf or NaN. So runs of one seed differ, and some stop with non-finite gradients. The forward pass and
the input gradient are right, in both memory formats. A sweep of 2-d convolutions (kernels 1 to 7,
strides 1 to 4, every padding up to half the kernel, dilations 1 and 2, groups 1 and depthwise, inputs 1 to
8 wide) and of 1-d ones (kernels 3 and 5, strides 1 to 3, inputs 1 to 4) found wrong weight gradients only
where some dimension has stride > 1, padding > 0 and an input smaller than the stride; float32 is right
for all of them.

So under CPU bf16 autocast, a conv1d/conv2d of that kind whose weight needs a gradient runs in float32
(on maps that small it costs nothing) and hands on its output in bf16, as autocast would; every other op
is left alone. 3-d convolutions are not covered: oneDNN's bf16 3-d weight gradient is wrong for more
shapes, stride 1 included, and sslcli's encoders have none.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

_CONVS = {torch.conv1d: 1, torch.conv2d: 2}  # F.conv1d and F.conv2d are these


def _per_dim(value: int | Sequence[int], dims: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * dims


def _conv_args(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
               stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1):
    return input, weight, bias, stride, padding, dilation, groups


def bf16_weight_grad_broken(spatial: Sequence[int], stride: Any, padding: Any) -> bool:
    """Whether oneDNN's bf16 weight gradient of a convolution over inputs of this spatial size may be
    wrong: some dimension has stride > 1, padding > 0 and an input smaller than the stride. A string
    padding ('same' needs stride 1, 'valid' is 0) never is."""
    if isinstance(padding, str):
        return False
    dims = len(spatial)
    return any(s > 1 and p > 0 and size < s
               for size, s, p in zip(spatial, _per_dim(stride, dims), _per_dim(padding, dims), strict=True))


def _runs_in_bf16(input: torch.Tensor, weight: torch.Tensor) -> bool:
    autocast = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    return autocast or input.dtype == torch.bfloat16 or weight.dtype == torch.bfloat16


class Bf16ConvFallback(TorchFunctionMode):
    """While active: the CPU bf16 convolutions whose weight gradient oneDNN gets wrong run in float32."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        dims = _CONVS.get(func)
        if dims is not None:
            input, weight, bias, stride, padding, dilation, groups = _conv_args(*args, **kwargs)
            if (input.device.type == "cpu" and weight.requires_grad and torch.is_grad_enabled()
                    and _runs_in_bf16(input, weight)
                    and bf16_weight_grad_broken(input.shape[-dims:], stride, padding)):
                with torch.autocast("cpu", enabled=False):
                    out = func(input.float(), weight.float(), None if bias is None else bias.float(),
                               stride, padding, dilation, groups)
                return out.to(torch.bfloat16)
        return func(*args, **kwargs)


def bf16_conv_fallback(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Bf16ConvFallback for a CPU bf16 step where oneDNN runs the convolutions, else nothing."""
    if device.type == "cpu" and dtype == torch.bfloat16 and torch.backends.mkldnn.is_available():
        return Bf16ConvFallback()
    return contextlib.nullcontext()
