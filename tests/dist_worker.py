"""One training step of every method (and of the VARIANTS below), on one process or on each rank under torchrun
(used by test_distributed).

`python -m tests.dist_worker OUT [--control gather|statistics]`: on one process it steps on the whole global
batch; under `torchrun --nproc_per_node 2` each rank steps on its half. Either way it writes OUT, a
safetensors file of every parameter's gradient after backward (DDP-averaged), the loss, the BN running
statistics, and the queue, center or memory bank a step updates, so the test can compare the two runs tensor
by tensor. A method that trains nothing in its first epoch (DeepCluster v2 fills its memory) first steps
through it the same way, so its memory, written by every rank, and the k-means of it are compared too.
InstDisc's and CMC's memory banks are also compared between the ranks: `<case>/bank_rank_spread` is the
largest difference of any rank's bank from rank 0's (0 on one process), so banks that drift apart fail.
"""

from __future__ import annotations

import argparse

import torch
from safetensors.torch import save_file

from sslcli import distributed
from sslcli.encoders import build_encoder
from sslcli.methods import CONFIGS, method_class
from sslcli.methods.base import Budget
from sslcli.methods.memory_bank import MemoryBank
from tests.test_methods import tiny_spec

GLOBAL_BATCH = 8  # images per step, over all ranks
NUM_IMAGES = 32  # the training set of a method with a memory bank
STEP = 0
# Settings that change what crosses the ranks, checked as cases of their own: case -> (method, its settings).
# CMC's default contrasts memory banks; its in-batch mode gathers its embeddings with gradients. S4L adds the
# rotation task's own encoder pass (synchronised batch norm over the rotated copies) to SimCLR's and BYOL's.
VARIANTS = {"invariantspread": ("simclr", {"loss": "invariant_spread", "proj_layers": 1}),
            "cmc-batch": ("cmc", {"negatives": "batch"}),
            "simclr-s4l": ("simclr", {"rotation_weight": 1.0}),
            "byol-s4l": ("byol", {"rotation_weight": 1.0}),
            # TCN's n-pairs loss contrasts each anchor with the positives of the global batch (gathered).
            "tcn-npairs": ("tcn", {"loss": "n_pairs"}),
            # Monodepth2's MS: the stereo view as a third source, its pose flipped with the sample.
            "monodepth-ms": ("monodepth", {"sources": "mono+stereo"}),
            # MoCo v3 on a ViT: its frozen patch projection and position embedding are left out of DDP's reduction.
            "mocov3-vit": ("mocov3", {"vit": True})}
CASES = {**{name: (name, {}) for name in CONFIGS}, **VARIANTS}
STEPS_PER_EPOCH = 2  # a memory bank holds the GLOBAL_BATCH x STEPS_PER_EPOCH images of an epoch


def global_views(model, spec, seed: int) -> list[torch.Tensor]:
    """Already-augmented views of the global batch, the same in every process (float, normalised-like)."""
    g = torch.Generator().manual_seed(seed)
    frames = CONFIGS[spec.method.name].frames_per_sample  # a temporal method's views are frame tuples
    return [torch.randn(GLOBAL_BATCH, *((frames,) if frames else ()), 3, v.size, v.size, generator=g)
            for v in model.views(spec.augment)]


def fixed_mask_noise(model, rank: int, world: int) -> None:
    """MAE draws its masks from the RNG: give every process the rows of one global noise tensor."""
    def noise(n: int, length: int, device: torch.device) -> torch.Tensor:
        full = torch.rand(GLOBAL_BATCH, length, generator=torch.Generator().manual_seed(7))
        return full.chunk(world)[rank].to(device)
    model.mask_noise = noise


def global_draws(model, rank: int, world: int) -> None:
    """Jigsaw and relpos draw their positions from the RNG: give every process its rows of one global draw."""
    original = model.draw

    def draw(n: int, *args):
        torch.manual_seed(7)  # the same draw in every process; this process keeps its rows
        return tuple(None if t is None else t.chunk(world)[rank] for t in original(n * world, *args))
    model.draw = draw


def global_masks(model, rank: int, world: int) -> None:
    """DINOv2 draws its masks from the RNG: every process gets its rows of one global draw, with the global draw's
    bound on the masked patches (a bound for any share of it)."""
    original = model.draw_masks

    def draw(n: int, *args):
        torch.manual_seed(7)
        masks, bound = original(n * world, *args)
        return masks.chunk(world)[rank], bound
    model.draw_masks = draw


def memory_banks(model) -> dict[str, torch.Tensor]:
    """InstDisc's and CMC's banks after the step (their NCE constant Z as log Z: Z is N x a mean of
    exp(s / tau), thousands, and the test's error floor scales with a case's largest value), and the largest
    difference between any rank's banks and rank 0's (0 on one process)."""
    banks = {n: m for n, m in model.named_modules() if isinstance(m, MemoryBank)}
    if not banks:
        return {}
    result, spread = {}, torch.zeros(())
    for name, bank in banks.items():
        result[f"bank/{name}.memory"] = bank.memory.clone()
        result[f"bank/{name}.log_z"] = bank.z.log().reshape(1)
        reference = bank.memory.clone()
        if distributed.is_distributed():
            torch.distributed.broadcast(reference, src=0)
        spread = torch.maximum(spread, (bank.memory - reference).abs().max())
    if distributed.is_distributed():
        torch.distributed.all_reduce(spread, op=torch.distributed.ReduceOp.MAX)
    return {**result, "bank_rank_spread": spread.reshape(1)}


def one_step(case: str) -> dict[str, torch.Tensor]:
    rank, world = distributed.rank(), distributed.world_size()
    name, settings = CASES[case]
    torch.manual_seed(0)
    # SwAV's queue needs several steps to fill and stays per rank (as in the paper's code): off here.
    spec = tiny_spec(name, **({"queue_length": 0} if name == "swav" else {}), **settings)
    encoder, info = build_encoder(spec.encoder.name, 16, spec.encoder.small_stem, spec.encoder.kwargs)
    model = method_class(name)(spec.method, encoder, info.feature_dim,
                               Budget(8, STEPS_PER_EPOCH, GLOBAL_BATCH * STEPS_PER_EPOCH)).train()
    if name == "mae":
        fixed_mask_noise(model, rank, world)
    if hasattr(model, "draw"):
        global_draws(model, rank, world)
    if hasattr(model, "draw_masks"):
        global_masks(model, rank, world)
    if distributed.is_distributed():
        model = distributed.sync_batchnorm(model, torch.device("cpu"))
    parallel = distributed.wrap(model, torch.device("cpu"))  # kept alive: DDP's hooks reduce during backward
    first = STEP + CONFIGS[name].memory_pass_epochs * STEPS_PER_EPOCH  # the first step that trains
    for step in range(STEP, first + 1):
        views = [v.chunk(world)[rank] for v in global_views(model, spec, seed=1 + step - STEP)]
        if CONFIGS[name].uses_indices:  # this rank's share of the global batch's training-set positions
            positions = torch.arange(GLOBAL_BATCH) + GLOBAL_BATCH * (step % STEPS_PER_EPOCH)
            out = parallel(views, step, positions.chunk(world)[rank])
        else:
            out = parallel(views, step)
        out.loss.backward()
        getattr(model, "cancel_gradients", lambda step: None)(step)
        model.on_step_end(step)
    # The logged loss is all-reduced by the loop; here the mean over ranks is what one process computes.
    loss = out.loss.detach().clone()
    if distributed.is_distributed():  # not all_reduce_: the statistics control switches that one off
        torch.distributed.all_reduce(loss)
    loss /= world
    result = {f"{case}/grad/{n}": p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    result[f"{case}/loss"] = loss.reshape(1)
    # BN running statistics: with synchronised BN they are the global batch's, as on one process.
    result.update({f"{case}/bn/{n}": b.clone() for n, b in model.named_buffers() if n.endswith(("running_mean",
                                                                                              "running_var"))})
    for buffer in ("queue", "center", "memory", "assignments"):
        if hasattr(model, buffer):
            result[f"{case}/{buffer}"] = getattr(model, buffer).float().clone()
    # DeepCluster v2's prototypes: no gradient, set by the k-means of the memory
    result.update({f"{case}/kmeans/{n}": p.detach().clone() for n, p in model.named_parameters()
                   if n.startswith("prototypes") and not p.requires_grad})
    result.update({f"{case}/{k}": v for k, v in memory_banks(model).items()})
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--control", choices=["gather", "statistics"], default=None)
    args = parser.parse_args()
    distributed.init(torch.device("cpu"))
    distributed._gather_without_gradients = args.control == "gather"
    distributed._local_statistics = args.control == "statistics"
    torch.set_num_threads(1)
    tensors: dict[str, torch.Tensor] = {}
    for case in CASES:
        tensors.update(one_step(case))
    if distributed.is_main():
        save_file({k: v.contiguous() for k, v in tensors.items()}, args.out)
    distributed.shutdown()


if __name__ == "__main__":
    main()
