"""`sslcli pretrain`: wire data, augmentation, encoder, method and the loop; write the run folder."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from sslcli import cache, checkpoint, console, data
from sslcli.augment import Augmenter
from sslcli.encoders import build_encoder
from sslcli.errors import UsageError
from sslcli.methods import METHODS, Budget
from sslcli.schedules import warmup_cosine
from sslcli.spec import PretrainSpec, dump
from sslcli.train import (
    LoopConfig,
    build_optimizer,
    fit,
    resolve_channels_last,
    resolve_device,
    resolve_precision,
)


def default_workers(setting: int | str) -> int:
    if setting != "auto":
        return int(setting)
    # Decoding shares the cores with the model on small machines: leave one for the main process.
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def make_run_dir(spec: PretrainSpec) -> Path:
    if spec.out is not None:
        run_dir = Path(spec.out)
        if (run_dir / "encoder.safetensors").exists():
            raise UsageError(f"{run_dir} already holds a finished run; choose another --out so nothing is overwritten")
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path("runs") / f"{spec.method.name}-{stamp}"
        suffix = 1
        while run_dir.exists():
            suffix += 1
            run_dir = Path("runs") / f"{spec.method.name}-{stamp}-{suffix}"
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    return run_dir


def training_images(spec: PretrainSpec) -> data.ImageSet:
    """The images to train on: DATA, or DATA/train when DATA holds splits; optionally a seeded subset."""
    if spec.data.path is None:
        raise UsageError("no DATA folder given: sslcli pretrain DATA ...")
    train_dir, _ = data.split_folders(spec.data.path)
    images = data.find_images(train_dir)
    limit = spec.data.max_images
    if limit is not None and limit < len(images):
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(spec.train.seed))[:limit]
        images = data.subset(images, sorted(order.tolist()))
    return images


def use_cache(spec: PretrainSpec, images: data.ImageSet, storage_size: int) -> Path | None:
    """The decode cache folder to use, or None to decode on the fly with DataLoader workers."""
    if spec.data.cache == "off":
        return None
    folder = Path(spec.data.cache_dir) if spec.data.cache_dir else cache.default_cache_dir()
    try:
        if spec.data.cache == "on" or cache.fits(images.paths, storage_size, folder, spec.data.cache_max_gb * 2**30):
            return folder
    except OSError as exc:
        console.warn(f"decode cache disabled: cannot use {folder} ({exc}); set data.cache_dir to a writable folder")
        return None
    size_gb = cache.array_bytes(len(images), storage_size) / 2**30
    console.info(f"decode cache off: {size_gb:.1f} GB is over data.cache_max_gb={spec.data.cache_max_gb}")
    return None


def training_batches(spec: PretrainSpec, images: data.ImageSet, storage_size: int, policy: data.BadImagePolicy,
                     device: torch.device) -> tuple[Callable[[int], Iterator[torch.Tensor]], int]:
    """`batches(epoch)` of uint8 images and the number of steps per epoch, from the cache or the files."""
    workers = default_workers(spec.data.num_workers)
    batch_size, seed = spec.train.batch_size, spec.train.seed
    folder = use_cache(spec, images, storage_size)
    if folder is not None:
        decoded = cache.open_or_build(images.paths, storage_size, folder, policy, workers)

        def cached(epoch: int) -> Iterator[torch.Tensor]:
            return (x for x, _ in cache.batches(decoded, batch_size, seed, epoch))

        return cached, cache.steps_per_epoch(decoded, batch_size)
    loader = data.make_loader(images.paths, storage_size, batch_size, shuffle=True, drop_last=True,
                              num_workers=workers, seed=seed, pin_memory=device.type == "cuda")

    def streamed(epoch: int) -> Iterator[torch.Tensor]:
        loader.generator.manual_seed(seed * 1_000_003 + epoch)  # each epoch's order depends on (seed, epoch) only
        return (x for x, _ in data.iter_batches(loader, policy, images.paths))

    return streamed, len(loader)


def run(spec: PretrainSpec) -> dict[str, Any]:
    """Pretrain an encoder as the spec says; returns the summary printed by the CLI."""
    device = resolve_device(spec.train.device)
    torch.manual_seed(spec.train.seed)
    images = training_images(spec)
    storage_size = data.storage_size_for(spec.data.image_size)
    policy = data.BadImagePolicy(spec.data.on_bad_image)
    batches, steps_per_epoch = training_batches(spec, images, storage_size, policy, device)
    if steps_per_epoch == 0:
        raise UsageError(f"batch size {spec.train.batch_size} is larger than the {len(images)} images found; "
                         "lower --batch-size")

    loop = LoopConfig(
        epochs=spec.train.epochs,
        steps_per_epoch=steps_per_epoch,
        precision=resolve_precision(spec.train.precision, device),
        channels_last=resolve_channels_last(spec.train.channels_last, device),
        clip_grad=spec.optim.clip_grad,
        log_every=spec.train.log_every,
        checkpoint_every=spec.train.checkpoint_every,
        description=f"{spec.method.name} {spec.encoder.name}",
    )
    encoder, info = build_encoder(spec.encoder.name, spec.data.image_size, spec.encoder.small_stem,
                                  spec.encoder.kwargs)
    method = METHODS[spec.method.name](spec.method, encoder, info.feature_dim,
                                       Budget(loop.total_steps, steps_per_epoch))
    generator = torch.Generator(device=device).manual_seed(spec.train.seed)
    augment = Augmenter(method.views(spec.augment), info.mean, info.std, generator)

    lr = spec.scaled_lr()
    optimizer = build_optimizer(method, spec.optim.name, lr, spec.optim.weight_decay, spec.optim.momentum,
                                spec.optim.trust_coeff, spec.optim.betas, getattr(method, "fixed_lr_modules", ()))
    warmup_steps = round(spec.optim.warmup_epochs * steps_per_epoch)
    lr_schedule = warmup_cosine(lr, loop.total_steps, warmup_steps, final=lr * spec.optim.min_lr_ratio)

    run_dir = make_run_dir(spec)
    resolved = dump(spec)
    checkpoint.atomic_write_json(run_dir / "spec.json", resolved)
    console.info(f"run folder {run_dir}: {len(images)} images, {steps_per_epoch} steps/epoch x "
                 f"{spec.train.epochs} epochs on {device} ({loop.precision})")
    console.info(f"lr = base_lr {spec.optim.base_lr} x batch {spec.train.batch_size} / 256 = {lr:.4g}")

    step_model = torch.compile(method) if spec.train.compile else method

    view_format = torch.channels_last if loop.channels_last else torch.contiguous_format

    def compute_loss(x: torch.Tensor, step: int):
        return step_model([v.contiguous(memory_format=view_format) for v in augment(x)], step)

    def save(epoch: int, step: int) -> None:
        meta = checkpoint.encoder_metadata(info, method=spec.method.name, epoch=epoch, step=step, spec=resolved)
        checkpoint.save_encoder(run_dir / "encoder.safetensors", method.export_encoder(), meta)
        checkpoint.save_train_state(run_dir / "checkpoints", step=step, epoch=epoch, model=method,
                                    optimizer=optimizer, extra={"spec": resolved},
                                    keep=spec.train.keep_checkpoints)

    metrics = console.MetricsLog(run_dir / "metrics.jsonl")
    try:
        result = fit(model=method, optimizer=optimizer, compute_loss=compute_loss, batches=batches,
                     lr_schedule=lr_schedule, cfg=loop, device=device, metrics=metrics,
                     on_step_end=method.on_step_end, on_checkpoint=save)
    finally:
        metrics.close()
    if policy.summary():
        console.warn(policy.summary())
    return {
        "run_dir": str(run_dir),
        "encoder": str(run_dir / "encoder.safetensors"),
        "method": spec.method.name,
        "encoder_name": spec.encoder.name,
        "images": len(images),
        "skipped_images": policy.count,
        "epochs": result.epochs,
        "steps": result.steps,
        "final_loss": result.last_loss,
        "images_per_s": round(result.images_per_s, 2),
        "wall_s": round(result.wall_s, 2),
        "device": str(device),
    }
