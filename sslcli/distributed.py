"""torchrun support: the process group from the environment, gathers that carry gradients, rank-0 helpers.

Every function here is the identity or a no-op on one process, so single-process code calls them freely.
sslcli has no launcher of its own: `torchrun --nproc_per_node N -m sslcli ...` sets RANK, WORLD_SIZE,
LOCAL_RANK and the rendezvous address, and init() reads them.

The gradient rule, for every method: each rank computes a loss whose average over the ranks is the loss
of one process on the whole global batch, DDP averages the gradients, and every collective on the
forward path that a gradient must flow through sums its incoming gradients over the ranks on the way
back. That is what makes 2 ranks x B images give the gradients of one process with 2B images
(tests/test_distributed.py checks it for every method, with a negative control).
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn

from sslcli import console
from sslcli.errors import UsageError

# Negative controls for tests/test_distributed.py, never set outside tests: the classic bugs of distributed
# SSL (gathering without the other ranks' gradients; batch statistics left per rank), so the tests can show
# that their gradient comparison catches them.
_gather_without_gradients = False
_local_statistics = False


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> torch.device:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU); returns this rank's device.

    On CUDA each rank takes cuda:LOCAL_RANK. Without torchrun (WORLD_SIZE unset or 1) nothing happens.
    """
    if not launched_by_torchrun() or is_distributed():
        return _local_device(device)
    local = _local_device(device)
    backend = "nccl" if local.type == "cuda" else "gloo"
    try:
        if local.type == "cuda":
            torch.cuda.set_device(local)
            dist.init_process_group(backend, device_id=local)
        else:
            dist.init_process_group(backend)
    except (RuntimeError, ValueError) as exc:
        raise UsageError(f"cannot join the torchrun process group ({backend}): {exc}; check MASTER_ADDR, "
                         "MASTER_PORT and --rdzv-endpoint") from None
    console.set_rank(dist.get_rank())
    return local


def _local_device(device: torch.device) -> torch.device:
    if device.type == "cuda" and launched_by_torchrun():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) here; "
                             "lower --nproc_per_node")
        return torch.device("cuda", local_rank)
    return device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. builds the decode cache), the others after it, so they find it built."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def seed_for_rank(seed: int) -> int:
    """Each rank draws different augmentations and masks; rank 0 keeps the run's seed (as on one process)."""
    return seed + 1_000_003 * rank()


class _GatherWithGradients(torch.autograd.Function):
    """all_gather whose backward sums the gradient of the gathered tensor over the ranks, then keeps this
    rank's rows: every rank's loss depends on every rank's embeddings."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad.chunk(dist.get_world_size())[dist.get_rank()]


def gather(x: Tensor) -> Tensor:
    """[B, ...] on each rank -> [world*B, ...] in rank order, with gradients flowing back to every rank."""
    if not is_distributed():
        return x
    if _gather_without_gradients or not x.requires_grad:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.detach().contiguous())
        parts[dist.get_rank()] = x  # only this rank's rows keep a gradient: the bug the tests must catch
        return torch.cat(parts)
    return _GatherWithGradients.apply(x)


class _SumWithGradients(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def sum_with_gradients(x: Tensor) -> Tensor:
    """The sum of x over the ranks, differentiable (batch statistics a loss or a BN layer depends on)."""
    if not is_distributed() or _local_statistics:
        return x
    return _SumWithGradients.apply(x)


@torch.no_grad()
def every_rank_ok(ok: bool, device: torch.device) -> bool:
    """Whether `ok` holds on every rank (one all-reduce): a step that fails on one rank (rank 0 opening the
    experiment trackers) stops every rank at the same point, instead of the others waiting for it in training."""
    if not is_distributed():
        return ok
    failed = torch.tensor([0 if ok else 1], device=device)
    dist.all_reduce(failed, op=dist.ReduceOp.MAX)
    return int(failed.item()) == 0


@torch.no_grad()
def all_reduce_(x: Tensor, op: str = "sum") -> Tensor:
    """In-place sum or max over the ranks, without gradients (Sinkhorn sums, DINO's center, loop flags)."""
    if is_distributed() and not _local_statistics:
        dist.all_reduce(x, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return x


def gather_uneven(x: Tensor) -> Tensor:
    """Concatenate tensors whose first dimension differs between ranks (feature-extraction shards)."""
    if not is_distributed():
        return x
    home = x.device
    if dist.get_backend() == "nccl":  # NCCL moves CUDA tensors only
        x = x.to(torch.device("cuda", torch.cuda.current_device()))
    size = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.empty_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[:x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:int(s.item())] for p, s in zip(parts, sizes, strict=True)]).to(home)


def shard(count: int) -> range:
    """This rank's contiguous share of `count` items (the first ranks take one more when it does not divide)."""
    per, extra = divmod(count, world_size())
    start = rank() * per + min(rank(), extra)
    return range(start, start + per + (rank() < extra))


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics cover the global batch, for CPU/gloo (torch's SyncBatchNorm
    runs on GPUs only). Same parameters and buffers as BatchNorm, so state dicts load into plain models."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and is_distributed()) or _local_statistics:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        count = sum_with_gradients(xf.new_tensor([xf.numel() / xf.shape[1]]))
        mean = sum_with_gradients(xf.sum(dims)) / count
        centred = xf - mean.view(shape)
        var = sum_with_gradients(centred.pow(2).sum(dims)) / count  # two passes: exact for large means
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * count / (count - 1).clamp_min(1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """BN layers that see the global batch: torch's SyncBatchNorm on CUDA, GlobalBatchNorm elsewhere."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert(module)


def _convert(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm | nn.SyncBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        new.running_mean, new.running_var = module.running_mean, module.running_var
        new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, _convert(child))
    return module


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around the method (or classifier); the model itself on one process.

    broadcast_buffers=False: queues and centers are updated from gathered values, so they stay equal on
    every rank without a broadcast before each forward.
    """
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    # Buffers are still synced once at construction; newer torch renames the per-forward switch.
    params = inspect.signature(DistributedDataParallel).parameters
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    return DistributedDataParallel(model, device_ids=device_ids, **no_sync)
