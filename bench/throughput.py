"""make bench-throughput: SimCLR pretraining images/s, three ways, side by side.

(a) sslcli pretrain (decode cache, batched augmentation on the device, the one loop),
(b) the lightly reference pipeline: lightly's SimCLRTransform in torchvision DataLoader workers,
    lightly's SimCLRProjectionHead and NTXentLoss,
(c) the model-only limit: the same forward/backward/step on two views already on the device,
all with the same encoder, projector size, optimizer, batch and precision. Each runs in its own
process so its peak memory is its own. The last line is one JSON object with the figures.
CPU target: a/b >= 1.5. GPU targets (ResNet-18 small stem, batch 512, bf16): a/b >= 3, a/c >= 0.85.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from bench.common import SHARED_DATA, linked_subset, peak_rss_mb, run_phase
from sslcli import console, pretrain
from sslcli.encoders import build_encoder
from sslcli.methods import Budget
from sslcli.methods.simclr import SimCLR
from sslcli.spec import PretrainSpec, resolve
from sslcli.train import PRECISIONS, build_optimizer, resolve_channels_last, resolve_device, resolve_precision

CPU = {"encoder": "resnet10t", "small_stem": False, "batch": 256, "steps": 30}
GPU = {"encoder": "resnet18", "small_stem": True, "batch": 512, "steps": 60}


def settings(args: argparse.Namespace) -> dict:
    base = GPU if resolve_device(args.device).type == "cuda" else CPU
    steps = args.steps or base["steps"]
    return {**base, "steps": steps, "images": steps * base["batch"]}


def spec_for(args: argparse.Namespace, cfg: dict, out: Path) -> PretrainSpec:
    """The quickstart recipe with this benchmark's encoder, batch and length."""
    sets = [f"encoder.name={cfg['encoder']}", f"encoder.small_stem={json.dumps(cfg['small_stem'])}",
            f"train.batch_size={cfg['batch']}", "train.epochs=1", f"train.device={args.device}",
            f"data.max_images={cfg['images']}", "train.log_every=10", "train.checkpoint_every=0"]
    return resolve(PretrainSpec, preset="quickstart", options={"data.path": str(args.data), "out": str(out)},
                   sets=sets)


def measure_sslcli(args: argparse.Namespace, cfg: dict, compile: bool = False) -> dict:
    out = Path(args.workdir) / f"sslcli-{time.strftime('%H%M%S')}{'-compile' if compile else ''}"
    spec = spec_for(args, cfg, out)
    spec.train.compile = compile
    summary = pretrain.run(spec)
    return {"images_per_s": summary["images_per_s"], "steps": summary["steps"]}


def _model(spec: PretrainSpec, device: torch.device, head: torch.nn.Module | None = None):
    torch.manual_seed(0)
    encoder, info = build_encoder(spec.encoder.name, spec.data.image_size, spec.encoder.small_stem)
    method = SimCLR(spec.method, encoder, info.feature_dim, Budget(total_steps=1, steps_per_epoch=1))
    if head is not None:
        method.projector = head
    optimizer = build_optimizer(method, spec.optim.name, spec.scaled_lr(), spec.optim.weight_decay,
                                spec.optim.momentum, spec.optim.trust_coeff)
    memory_format = torch.channels_last if resolve_channels_last("auto", device) else torch.contiguous_format
    return method.to(device, memory_format=memory_format), optimizer, info


def measure_lightly(args: argparse.Namespace, cfg: dict) -> dict:
    import torchvision
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform

    spec = spec_for(args, cfg, Path(args.workdir) / "unused")
    device = resolve_device(args.device)
    dtype = PRECISIONS[resolve_precision(spec.train.precision, device)]
    aug = spec.augment
    transform = SimCLRTransform(input_size=aug.size, cj_prob=aug.jitter_p, cj_strength=1.0, cj_bright=aug.brightness,
                                cj_contrast=aug.contrast, cj_sat=aug.saturation, cj_hue=aug.hue, min_scale=aug.scale[0],
                                random_gray_scale=aug.gray_p, gaussian_blur=aug.blur_p, hf_prob=aug.hflip_p)
    per_class = cfg["images"] // 10 + 1
    folder = linked_subset(Path(args.data) / "train", Path(args.workdir) / f"subset-{per_class}", per_class)
    dataset = torchvision.datasets.ImageFolder(str(folder), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg["batch"], shuffle=True, drop_last=True,
                                         num_workers=args.workers, persistent_workers=args.workers > 0,
                                         pin_memory=device.type == "cuda")
    head = SimCLRProjectionHead(512, spec.method.proj_hidden_dim, spec.method.proj_out_dim)
    model, optimizer, _ = _model(spec, device, head)
    criterion = NTXentLoss(temperature=spec.method.temperature)
    batches = iter(loader)
    (x0, x1), _ = next(batches)  # workers started: the clock measures the steady state
    start, count = time.perf_counter(), 0
    for step in range(cfg["steps"]):
        if step:
            (x0, x1), _ = next(batches)
        x0, x1 = x0.to(device, non_blocking=True), x1.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            z0, z1 = model.projector(model.encoder(torch.cat([x0, x1]))).chunk(2)
            loss = criterion(z0, z1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        count += x0.shape[0]
    _sync(device)
    return {"images_per_s": count / (time.perf_counter() - start), "steps": cfg["steps"]}


def measure_model_only(args: argparse.Namespace, cfg: dict) -> dict:
    spec = spec_for(args, cfg, Path(args.workdir) / "unused")
    device = resolve_device(args.device)
    dtype = PRECISIONS[resolve_precision(spec.train.precision, device)]
    model, optimizer, info = _model(spec, device)
    memory_format = torch.channels_last if resolve_channels_last("auto", device) else torch.contiguous_format
    views = [torch.randn(cfg["batch"], 3, info.image_size, info.image_size, device=device)
             .contiguous(memory_format=memory_format) for _ in range(2)]
    for step in range(cfg["steps"] + 2):
        if step == 2:  # two warm-up steps
            _sync(device)
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(views, step).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(device)
    return {"images_per_s": cfg["steps"] * cfg["batch"] / (time.perf_counter() - start), "steps": cfg["steps"]}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def phase(args: argparse.Namespace) -> None:
    console.configure(quiet=True)
    cfg = settings(args)
    measure = {"sslcli": measure_sslcli, "lightly": measure_lightly, "model": measure_model_only,
               "sslcli-compile": lambda a, c: measure_sslcli(a, c, compile=True)}[args.phase]
    result = measure(args, cfg)
    result["peak_rss_mb"] = peak_rss_mb()
    device = resolve_device(args.device)
    if device.type == "cuda":
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        result["device_name"] = torch.cuda.get_device_name(device)
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "cifar10")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="lightly's DataLoader workers")
    parser.add_argument("--workdir", default=str(Path("runs") / "bench-throughput"))
    parser.add_argument("--compile", action="store_true", help="also measure (a) with train.compile=true")
    parser.add_argument("--phase", default=None)
    args = parser.parse_args()
    if args.phase:
        return phase(args)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    common = ["--data", str(args.data), "--device", args.device, "--workers", str(args.workers),
              "--workdir", args.workdir] + (["--steps", str(args.steps)] if args.steps else [])
    names = ("sslcli", "lightly", "model") + (("sslcli-compile",) if args.compile else ())
    results = {name: run_phase("bench.throughput", name, common) for name in names}
    a, b, c = (results[k]["images_per_s"] for k in ("sslcli", "lightly", "model"))
    cfg = settings(args)
    device = results["model"].get("device_name", "cpu")
    title = f"SimCLR {cfg['encoder']} batch {cfg['batch']}, {cfg['steps']} steps on {device}"
    print(f"{title:<56} {'images/s':>9} {'peak RSS MiB':>13} {'peak GPU MiB':>13}")
    rows = (("(a) sslcli pretrain", "sslcli"), (f"(b) lightly, {args.workers} DataLoader workers", "lightly"),
            ("(c) model only (views already on the device)", "model"))
    if args.compile:
        rows += (("(a) sslcli pretrain with train.compile=true", "sslcli-compile"),)
    for label, key in rows:
        r = results[key]
        print(f"{label:<56} {r['images_per_s']:>9.1f} {r['peak_rss_mb']:>13.0f} {r.get('peak_gpu_mb', 0):>13.0f}")
    print(f"{'a/b (target >= 1.5 on CPU, >= 3 on GPU)':<56} {a / b:>9.2f}")
    print(f"{'a/c (target >= 0.85 on GPU)':<56} {a / c:>9.2f}")
    figures = {"sslcli_images_per_s": round(a, 1), "lightly_images_per_s": round(b, 1),
               "model_only_images_per_s": round(c, 1), "ratio_a_b": round(a / b, 2), "ratio_a_c": round(a / c, 2),
               "device": device, "encoder": cfg["encoder"], "batch": cfg["batch"], "lightly_workers": args.workers}
    if args.compile:
        figures["sslcli_compile_images_per_s"] = round(results["sslcli-compile"]["images_per_s"], 1)
    for key in ("sslcli", "lightly", "model"):
        figures[f"{key}_peak_rss_mb"] = results[key]["peak_rss_mb"]
        if "peak_gpu_mb" in results[key]:
            figures[f"{key}_peak_gpu_mb"] = results[key]["peak_gpu_mb"]
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
