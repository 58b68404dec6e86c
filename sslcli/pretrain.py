"""`sslcli pretrain`: wire data, augmentation, encoder, method and the loop; write the run folder."""

from __future__ import annotations

import itertools
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from sslcli import cache, checkpoint, console, data, distributed, monitors, online_knn, report
from sslcli import resume as resumption
from sslcli.augment import Augmenter
from sslcli.encoders import build_encoder
from sslcli.errors import Interrupted, RunError, UsageError
from sslcli.methods import METHODS, Budget
from sslcli.methods.base import sync_bn_default
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


def make_run_dir(spec: PretrainSpec, resuming: bool = False) -> Path:
    if spec.out is not None:
        run_dir = Path(spec.out)
        if (run_dir / "encoder.safetensors").exists() and not resuming:
            raise UsageError(f"{run_dir} already holds a run; continue it with --resume auto, or choose another "
                             "--out so nothing is overwritten")
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path("runs") / f"{spec.method.name}-{stamp}"
        suffix = 1
        while run_dir.exists():
            suffix += 1
            run_dir = Path("runs") / f"{spec.method.name}-{stamp}-{suffix}"
    try:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        checkpoint.atomic_write_bytes(run_dir / "checkpoints" / ".write-test", b"ok")
        (run_dir / "checkpoints" / ".write-test").unlink()
    except OSError as exc:
        raise UsageError(f"cannot write the run folder {run_dir} ({exc.strerror or exc}); choose a writable --out") \
            from None
    return run_dir


def check_free_space(run_dir: Path, model: torch.nn.Module, keep: int) -> None:
    """Refuse to start when the disk cannot hold the checkpoints: a run that dies at its first save wastes hours.

    A state is the model plus up to two optimizer buffers per parameter (momentum; Adam's two moments);
    keep + 1 of them exist while a new one is written, plus the exported encoder.
    """
    model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    needed = model_bytes * 3 * (keep + 1) + model_bytes
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        raise UsageError(f"{run_dir} has {free / 2**20:.0f} MiB free but the checkpoints need about "
                         f"{needed / 2**20:.0f} MiB; free some space or choose another --out")


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


def rank_batch_size(global_batch: int) -> int:
    """train.batch_size is the global batch: under torchrun each rank takes an equal share of it."""
    world = distributed.world_size()
    if global_batch % world:
        raise UsageError(f"batch size {global_batch} does not split evenly over {world} processes; "
                         f"use a multiple of {world} (train.batch_size is the global batch)")
    return global_batch // world


def training_batches(spec: PretrainSpec, images: data.ImageSet, storage_size: int, policy: data.BadImagePolicy,
                     device: torch.device) -> tuple[Callable[[int], Iterator[torch.Tensor]], int]:
    """`batches(epoch, skip)` of uint8 images and the number of steps per epoch, from the cache or the files.

    Under torchrun each rank gets its share of every global batch: from the cache, a slice of the global
    batch a single process would draw (so the images of a step do not depend on the number of ranks);
    decoding on the fly, a DistributedSampler reseeded with set_epoch.
    """
    workers = default_workers(spec.data.num_workers)
    batch_size, seed = spec.train.batch_size, spec.train.seed
    local_batch = rank_batch_size(batch_size)
    folder = use_cache(spec, images, storage_size)
    if folder is not None:
        with distributed.main_first():  # one process decodes; the others open what it wrote
            decoded = cache.open_or_build(images.paths, storage_size, folder, policy, workers)
        part = (distributed.rank(), distributed.world_size())

        def cached(epoch: int, skip: int = 0) -> Iterator[torch.Tensor]:
            return (x for x, _ in cache.batches(decoded, batch_size, seed, epoch, skip=skip, shard=part))

        return cached, cache.steps_per_epoch(decoded, batch_size)
    sampler = None
    if distributed.is_distributed():
        sampler = torch.utils.data.DistributedSampler(data.ImageDataset(images.paths, storage_size), shuffle=True,
                                                      seed=seed, drop_last=True)
    loader = data.make_loader(images.paths, storage_size, local_batch, shuffle=True, drop_last=True,
                              num_workers=workers, seed=seed, pin_memory=device.type == "cuda", sampler=sampler)

    def streamed(epoch: int, skip: int = 0) -> Iterator[torch.Tensor]:
        if sampler is not None:
            sampler.set_epoch(epoch)
        else:
            loader.generator.manual_seed(seed * 1_000_003 + epoch)  # each epoch's order depends on (seed, epoch)
        # Resuming mid-epoch decodes and drops the batches already trained on, to reach the same order.
        return itertools.islice((x for x, _ in data.iter_batches(loader, policy, images.paths)), skip, None)

    return streamed, len(loader)


def _write_report(run_dir: Path, grid: report.NeighbourGrid | None) -> None:
    """The report is a view of the run, not the run: a failure to draw it is a warning, never a lost run."""
    try:
        report.write(run_dir, grid)
    except (OSError, ValueError, RuntimeError, ImportError) as exc:
        console.warn(f"report/ not refreshed ({exc}); `sslcli report {run_dir}` retries")


def run(spec: PretrainSpec, resume: str | None = None, force: bool = False) -> dict[str, Any]:
    """Pretrain an encoder as the spec says; returns the summary printed by the CLI.

    resume: None (a new run), "auto" (continue --out from its newest intact checkpoint, or start it),
    a run folder or a state file. force: resume even when the spec fingerprint differs.
    """
    resume_dir, state = resumption.resume_point(spec, resume)
    device = distributed.init(resolve_device(spec.train.device))  # joins torchrun's group when launched by it
    main = distributed.is_main()
    torch.manual_seed(spec.train.seed)  # the same initial weights on every rank
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
        checkpoint_every_steps=spec.train.checkpoint_every_steps,
        description=f"{spec.method.name} {spec.encoder.name}",
        on_nan=spec.train.on_nan,
        max_nan_skips=spec.train.max_nan_skips,
    )
    encoder, info = build_encoder(spec.encoder.name, spec.data.image_size, spec.encoder.small_stem,
                                  spec.encoder.kwargs)
    if spec.init_from is not None:
        resumption.init_from(encoder, info, spec.init_from)
    method = METHODS[spec.method.name](spec.method, encoder, info.feature_dim,
                                       Budget(loop.total_steps, steps_per_epoch))
    sync_bn = spec.train.sync_bn if spec.train.sync_bn is not None else sync_bn_default(type(method))
    if distributed.is_distributed() and sync_bn:
        method = distributed.sync_batchnorm(method, device)
    if distributed.rank():  # other ranks draw their own augmentations and masks
        torch.manual_seed(distributed.seed_for_rank(spec.train.seed))
    generator = torch.Generator(device=device).manual_seed(distributed.seed_for_rank(spec.train.seed))
    augment = Augmenter(method.views(spec.augment), info.mean, info.std, generator)

    lr = spec.scaled_lr()
    optimizer = build_optimizer(method, spec.optim.name, lr, spec.optim.weight_decay, spec.optim.momentum,
                                spec.optim.trust_coeff, spec.optim.betas, getattr(method, "fixed_lr_modules", ()))
    warmup_steps = round(spec.optim.warmup_epochs * steps_per_epoch)
    lr_schedule = warmup_cosine(lr, loop.total_steps, warmup_steps, final=lr * spec.optim.min_lr_ratio)

    scaler = torch.amp.GradScaler(device.type, enabled=loop.precision == "fp16")
    identity = resumption.fingerprint(spec, images, loop.total_steps)
    start_step = 0
    if state is not None:
        record, rng = checkpoint.load_train_state(state, method, optimizer)
        resumption.check_fingerprint(record, identity, state, force)
        if not {"augment", "augment_order"} <= rng.keys() or not isinstance(record.get("step"), int):
            raise UsageError(f"{state} lacks the step or augmentation RNG state an exact resume needs (an older or "
                             "altered checkpoint); start a new run, with --init-from RUN/encoder.safetensors")
        generator.set_state(rng["augment"])
        augment.order_generator.set_state(rng["augment_order"])
        if "cuda" in rng and device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], device)
        if record.get("scaler"):
            scaler.load_state_dict(record["scaler"])
        start_step = int(record["step"])
        if distributed.rank():  # the state holds rank 0's generators: the others draw fresh ones
            resumption.reseed_rank(spec.train.seed, start_step, generator, augment)
        if start_step >= loop.total_steps:
            console.info(f"{resume_dir} is already complete ({start_step} steps); nothing to do")
            return {"run_dir": str(resume_dir), "encoder": str(resume_dir / "encoder.safetensors"),
                    "method": spec.method.name, "steps": start_step, "already_complete": True}
        console.info(f"resuming from {state} at step {start_step}/{loop.total_steps}")

    resolved = dump(spec)
    run_dir = resume_dir or (Path(spec.out) if spec.out else None)
    if main:  # only rank 0 writes the run folder; the others train and stay quiet
        run_dir = make_run_dir(spec.model_copy(update={"out": resume_dir}) if resume_dir else spec,
                               resuming=resume_dir is not None)
        check_free_space(run_dir, method, spec.train.keep_checkpoints)
        checkpoint.atomic_write_json(run_dir / "spec.json", resolved)
    world = distributed.world_size()
    on = f"{world} processes ({device.type}, sync BN {'on' if sync_bn else 'off'})" if world > 1 else str(device)
    console.info(f"run folder {run_dir}: {len(images)} images, {steps_per_epoch} steps/epoch x "
                 f"{spec.train.epochs} epochs on {on} ({loop.precision})")
    console.info(f"lr = base_lr {spec.optim.base_lr} x batch {spec.train.batch_size} / 256 = {lr:.4g}")

    method.to(device=device, memory_format=torch.channels_last if loop.channels_last else torch.contiguous_format)
    parallel = distributed.wrap(method, device)  # DDP under torchrun, the method itself otherwise
    step_model = torch.compile(parallel) if spec.train.compile else parallel

    view_format = torch.channels_last if loop.channels_last else torch.contiguous_format

    def compute_loss(x: torch.Tensor, step: int):
        out = step_model([v.contiguous(memory_format=view_format) for v in augment(x)], step)
        logged = (step + 1) % loop.log_every == 0 or step + 1 == loop.total_steps
        if spec.monitor.embeddings and logged:  # the label-free monitors, only on steps that are logged
            with torch.autocast(device.type, enabled=False):
                for kind, views in out.embeddings.items():
                    out.logs.update(monitors.measure(views, kind))
        return out

    health = monitors.CollapseWatch(metrics=None)
    knn = online_knn.OnlineKnn(spec, info, device, method)

    def save(epoch: int, step: int) -> None:
        if not main:
            return
        try:
            write_checkpoint(epoch, step)
        except OSError as exc:  # disk full, folder removed: the previous checkpoint is still complete
            raise RunError(f"could not write the checkpoint of step {step} to {run_dir} ({exc.strerror or exc}); "
                           "the previous checkpoint is intact: free space, then run again with --resume auto") \
                from None

    def write_checkpoint(epoch: int, step: int) -> None:
        meta = checkpoint.encoder_metadata(info, method=spec.method.name, epoch=epoch, step=step, spec=resolved)
        checkpoint.save_encoder(run_dir / "encoder.safetensors", method.export_encoder(), meta)
        rng = {"augment": generator.get_state(), "augment_order": augment.order_generator.get_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        extra = {"spec": resolved, "fingerprint": identity["hash"], "fingerprint_parts": identity["parts"]}
        checkpoint.save_train_state(run_dir / "checkpoints", step=step, epoch=epoch, model=method,
                                    optimizer=optimizer, extra=extra, keep=spec.train.keep_checkpoints, rng=rng,
                                    scaler=scaler.state_dict() or None)
        if spec.monitor.report:
            _write_report(run_dir, knn.new_grid())

    metrics = console.MetricsLog(run_dir / "metrics.jsonl") if main else None
    health.metrics = knn.metrics = metrics
    try:
        result = fit(model=method, optimizer=optimizer, compute_loss=compute_loss, batches=batches,
                     lr_schedule=lr_schedule, cfg=loop, device=device, metrics=metrics,
                     on_step_end=method.on_step_end, on_checkpoint=save, start_step=start_step, scaler=scaler,
                     after_backward=getattr(method, "cancel_gradients", lambda step: None),
                     on_log=health.check, on_epoch_end=knn.at_epoch_end)
    except Interrupted as exc:
        raise Interrupted(f"{exc}; to continue, run the same command with --out {run_dir} --resume auto",
                          exc.signum) from None
    finally:
        if metrics is not None:
            metrics.close()
    distributed.barrier()  # the run folder is complete before any rank returns
    if not main:
        return {}  # rank 0 reports
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
        "resumed_from_step": start_step,
        "skipped_steps": result.skipped_steps,
        "final_loss": result.last_loss,
        "images_per_s": round(result.images_per_s, 2),
        "wall_s": round(result.wall_s, 2),
        "device": str(device),
        "processes": distributed.world_size(),
        "knn_top1": knn.last_top1,
        "linear_top1": knn.linear_top1(),
        "collapse_warnings": health.warnings,
        "report": str(run_dir / "report") if spec.monitor.report else None,
    }
