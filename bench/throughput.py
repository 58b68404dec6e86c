"""make bench-throughput: SimCLR pretraining images/s in the steady state, three ways, side by side.

(a) sslcli pretrain (decode cache, batched augmentation on the device, the one loop), with the online
    kNN and the label-free monitors off; their cost is a separate line: the same run with them on,
(b) the lightly reference pipeline: lightly's SimCLRTransform in torchvision DataLoader workers,
    lightly's SimCLRProjectionHead and NTXentLoss,
(c) the model-only limit: the same forward/backward/step on two views already on the device,
all with the same encoder, projector size, optimizer, batch and precision. Each runs in its own
process so its peak memory is its own.

Steady state: every phase first runs --warmup steps (cuDNN autotuning, torch.compile, DataLoader workers
starting, allocator growth), untimed, then the SAME number of timed steps (--steps). (a) is timed from
sslcli's own metrics.jsonl (train.log_every = the warm-up, so a record lands at its end): images/s between
the record at the warm-up and the last record. The run has --epochs epochs, so the monitors-on run pays
for the online kNN at the epoch ends inside the timed window (every epoch but the last; the first one
also builds its bank) and for the embedding monitors at every logged step.

GPU (ResNet-18 small stem, batch 512, bf16): 30 warm-up + 330 timed steps; targets a/b >= 3, a/c >= 0.85.
CPU (resnet10t, batch 256): 10 warm-up + 30 timed steps, a few minutes on 2 cores; target a/b >= 1.5.
The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from bench.common import SHARED_DATA, linked_subset, peak_rss_mb, run_phase

CPU = {"encoder": "resnet10t", "small_stem": False, "batch": 256, "warmup": 10, "steps": 30, "epochs": 2}
GPU = {"encoder": "resnet18", "small_stem": True, "batch": 512, "warmup": 30, "steps": 330, "epochs": 4}
TARGETS = {"cpu": {"a_b": 1.5}, "cuda": {"a_b": 3.0, "a_c": 0.85}}
MONITORS_OFF = ["monitor.knn_every=0", "monitor.embeddings=false", "monitor.report=false"]


def sslcli_api() -> SimpleNamespace:
    """Every sslcli name this benchmark uses, imported here only (module paths may move: re-point them here).

    `run(spec)` is the one pretraining call; it returns the summary (run_dir, steps, images_per_s, ...)."""
    from sslcli import console
    from sslcli.commands import pretrain
    from sslcli.device import PRECISIONS, resolve_channels_last, resolve_device, resolve_precision
    from sslcli.encoders import build_encoder
    from sslcli.methods.base import Budget
    from sslcli.methods.simclr.model import SimCLR
    from sslcli.pretraining import build_optimizer
    from sslcli.spec import PretrainSpec, resolve

    return SimpleNamespace(console=console, run=pretrain.run, resolve=resolve, PretrainSpec=PretrainSpec,
                           build_encoder=build_encoder, Budget=Budget, SimCLR=SimCLR, PRECISIONS=PRECISIONS,
                           build_optimizer=build_optimizer, resolve_channels_last=resolve_channels_last,
                           resolve_device=resolve_device, resolve_precision=resolve_precision)


def _device_type(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name).type


def settings(args: argparse.Namespace) -> dict:
    """Warm-up and timed steps, and epochs of equal length that hold exactly warm-up + timed steps."""
    base = GPU if _device_type(args.device) == "cuda" else CPU
    warmup = max(1, args.warmup if args.warmup is not None else base["warmup"])  # a record marks its end
    epochs = args.epochs or base["epochs"]
    per_epoch = math.ceil((warmup + (args.steps or base["steps"])) / epochs)
    total = per_epoch * epochs  # the timed steps are rounded up so the epochs are whole
    knn_in_window = sum(1 for e in range(1, epochs) if e * per_epoch >= warmup)
    return {**base, "warmup": warmup, "steps": total - warmup, "epochs": epochs, "steps_per_epoch": per_epoch,
            "total_steps": total, "images": per_epoch * base["batch"], "knn_in_window": knn_in_window}


def spec_for(api: SimpleNamespace, args: argparse.Namespace, cfg: dict, out: Path, monitors: bool = False,
             compile: bool = False, prefetch: bool = False):
    """The quickstart recipe with this benchmark's encoder, batch and length; monitors off unless asked."""
    sets = [f"encoder.name={cfg['encoder']}", f"encoder.small_stem={json.dumps(cfg['small_stem'])}",
            f"train.batch_size={cfg['batch']}", f"train.epochs={cfg['epochs']}", f"train.device={args.device}",
            f"data.max_images={cfg['images']}", f"train.log_every={cfg['warmup']}",
            "train.checkpoint_every=0", f"train.compile={json.dumps(compile)}",
            f"train.prefetch={json.dumps(prefetch)}"]
    if not monitors:
        sets += MONITORS_OFF
    return api.resolve(api.PretrainSpec, preset="quickstart",
                       options={"data.path": str(args.data), "out": str(out)}, sets=sets)


def steady_rate(metrics_path: Path, warmup: int, batch: int) -> dict:
    """images/s between the first logged record at or after the warm-up and the last one (metrics.jsonl)."""
    records = []
    for line in metrics_path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if isinstance(record.get("step"), int) and "elapsed_s" in record:
            records.append(record)
    after = [r for r in records if r["step"] >= warmup]
    if len(after) < 2 or after[-1]["step"] <= after[0]["step"]:
        raise SystemExit(f"{metrics_path}: no two logged steps after the {warmup}-step warm-up to time")
    first, last = after[0], after[-1]
    seconds = last["elapsed_s"] - first["elapsed_s"]
    steps = last["step"] - first["step"]
    return {"images_per_s": steps * batch / max(seconds, 1e-9), "timed_steps": steps, "timed_s": round(seconds, 2)}


def measure_sslcli(args: argparse.Namespace, cfg: dict, monitors: bool = False, compile: bool = False,
                   prefetch: bool = False) -> dict:
    api = sslcli_api()
    api.console.configure(quiet=True)
    tag = "-monitors" if monitors else "-compile" if compile else "-prefetch" if prefetch else ""
    out = Path(args.workdir) / f"sslcli{tag}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    summary = api.run(spec_for(api, args, cfg, out, monitors=monitors, compile=compile, prefetch=prefetch))
    if summary["steps"] != cfg["total_steps"]:
        raise SystemExit(f"sslcli ran {summary['steps']} steps, expected {cfg['total_steps']} (too few images in "
                         f"{args.data}/train for {cfg['steps_per_epoch']} steps of {cfg['batch']} per epoch?)")
    result = steady_rate(Path(summary["run_dir"]) / "metrics.jsonl", cfg["warmup"], cfg["batch"])
    return {**result, "whole_run_images_per_s": summary["images_per_s"], "steps": summary["steps"]}


def _model(api: SimpleNamespace, spec, device: torch.device, head: torch.nn.Module | None = None):
    torch.manual_seed(0)
    encoder, info = api.build_encoder(spec.encoder.name, spec.data.image_size, spec.encoder.small_stem)
    method = api.SimCLR(spec.method, encoder, info.feature_dim, api.Budget(total_steps=1, steps_per_epoch=1))
    if head is not None:
        method.projector = head
    optimizer = api.build_optimizer(method, spec.optim, spec.scaled_lr())
    memory_format = torch.channels_last if api.resolve_channels_last("auto", device) else torch.contiguous_format
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the references at their best; its autotuning is in the warm-up
    return method.to(device, memory_format=memory_format), optimizer, info, memory_format


def _timed(cfg: dict, device: torch.device, step_fn) -> dict:
    """Run cfg['warmup'] untimed steps, then cfg['steps'] timed ones; step_fn(step) returns its batch size."""
    for step in range(cfg["warmup"]):
        step_fn(step)
    _sync(device)
    start, images = time.perf_counter(), 0
    for step in range(cfg["warmup"], cfg["warmup"] + cfg["steps"]):
        images += step_fn(step)
    _sync(device)
    seconds = time.perf_counter() - start
    return {"images_per_s": images / seconds, "timed_steps": cfg["steps"], "timed_s": round(seconds, 2)}


def measure_lightly(args: argparse.Namespace, cfg: dict) -> dict:
    import torchvision
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform

    api = sslcli_api()
    spec = spec_for(api, args, cfg, Path(args.workdir) / "unused")
    device = api.resolve_device(args.device)
    dtype = api.PRECISIONS[api.resolve_precision(spec.train.precision, device)]
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
    model, optimizer, _, _ = _model(api, spec, device, head)
    criterion = NTXentLoss(temperature=spec.method.temperature)

    def forever():
        while True:  # epochs of the subset, as many as the steps need
            yield from loader

    batches = forever()

    def step_fn(step: int) -> int:
        (x0, x1), _ = next(batches)
        x0, x1 = x0.to(device, non_blocking=True), x1.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            z0, z1 = model.projector(model.encoder(torch.cat([x0, x1]))).chunk(2)
            loss = criterion(z0, z1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return x0.shape[0]

    return _timed(cfg, device, step_fn)


def measure_model_only(args: argparse.Namespace, cfg: dict) -> dict:
    api = sslcli_api()
    spec = spec_for(api, args, cfg, Path(args.workdir) / "unused")
    device = api.resolve_device(args.device)
    dtype = api.PRECISIONS[api.resolve_precision(spec.train.precision, device)]
    model, optimizer, info, memory_format = _model(api, spec, device)
    views = [torch.randn(cfg["batch"], 3, info.image_size, info.image_size, device=device)
             .contiguous(memory_format=memory_format) for _ in range(2)]

    def step_fn(step: int) -> int:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(views, step).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return cfg["batch"]

    return _timed(cfg, device, step_fn)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


PHASES = {
    "sslcli": measure_sslcli,
    "sslcli-monitors": lambda a, c: measure_sslcli(a, c, monitors=True),
    "sslcli-compile": lambda a, c: measure_sslcli(a, c, compile=True),
    "sslcli-prefetch": lambda a, c: measure_sslcli(a, c, prefetch=True),
    "lightly": measure_lightly,
    "model": measure_model_only,
}


def phase(args: argparse.Namespace) -> None:
    cfg = settings(args)
    result = PHASES[args.phase](args, cfg)
    result["peak_rss_mb"] = peak_rss_mb()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        result["device_name"] = torch.cuda.get_device_name()
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "cifar10")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (GPU 30, CPU 10)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps, the same for (a), (b), (c) "
                        "(GPU 330, CPU 30; rounded up to whole epochs)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs holding warm-up + timed steps (GPU 4, "
                        "CPU 2): the monitors-on run has an online kNN at each epoch end but the last")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="lightly's DataLoader workers")
    parser.add_argument("--workdir", default=str(Path("runs") / "bench-throughput"))
    parser.add_argument("--compile", action="store_true", help="also measure (a) with train.compile=true")
    parser.add_argument("--no-monitors", action="store_true", help="skip the monitors-on run of (a)")
    parser.add_argument("--phase", default=None, choices=sorted(PHASES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        return phase(args)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    common = ["--data", str(args.data), "--device", args.device, "--workers", str(args.workers),
              "--workdir", args.workdir]
    for flag, value in (("--warmup", args.warmup), ("--steps", args.steps), ("--epochs", args.epochs)):
        if value is not None:
            common += [flag, str(value)]
    names = ("sslcli", "lightly", "model") + (() if args.no_monitors else ("sslcli-monitors",))
    names += ("sslcli-compile",) if args.compile else ()
    # The side-stream prefetch of the next batch is a CUDA path: measured there, beside (a) without it.
    names += ("sslcli-prefetch",) if _device_type(args.device) == "cuda" else ()
    results = {name: run_phase("bench.throughput", name, common) for name in names}
    report(args, settings(args), results)


def report(args: argparse.Namespace, cfg: dict, results: dict) -> None:
    a, b, c = (results[k]["images_per_s"] for k in ("sslcli", "lightly", "model"))
    kind = _device_type(args.device)
    targets = TARGETS[kind]
    device = results["model"].get("device_name", "cpu")
    title = (f"SimCLR {cfg['encoder']} batch {cfg['batch']} on {device}: {cfg['warmup']} warm-up + "
             f"{cfg['steps']} timed steps")
    print(title)
    print(f"{'':<62} {'images/s':>9} {'timed s':>8} {'peak RSS MiB':>13} {'peak GPU MiB':>13}")
    rows = [("(a) sslcli pretrain (online kNN and monitors off)", "sslcli"),
            (f"(b) lightly, {args.workers} DataLoader workers", "lightly"),
            ("(c) model only (views already on the device)", "model")]
    if "sslcli-compile" in results:
        rows.append(("(a) with train.compile=true", "sslcli-compile"))
    if "sslcli-prefetch" in results:
        rows.append(("(a) with train.prefetch=true (next batch on a side stream)", "sslcli-prefetch"))
    if "sslcli-monitors" in results:
        rows.append((f"(a) monitors on: {cfg['knn_in_window']} online kNN, embeddings every {cfg['warmup']}",
                     "sslcli-monitors"))
    for label, key in rows:
        r = results[key]
        print(f"{label:<62} {r['images_per_s']:>9.1f} {r['timed_s']:>8.2f} {r['peak_rss_mb']:>13.0f} "
              f"{r.get('peak_gpu_mb', 0):>13.0f}")
    figures = {"sslcli_images_per_s": round(a, 1), "lightly_images_per_s": round(b, 1),
               "model_only_images_per_s": round(c, 1), "ratio_a_b": round(a / b, 2), "ratio_a_c": round(a / c, 2),
               "device": device, "encoder": cfg["encoder"], "batch": cfg["batch"], "lightly_workers": args.workers,
               "warmup_steps": cfg["warmup"], "timed_steps": cfg["steps"], "epochs": cfg["epochs"],
               "targets": targets}
    if "sslcli-monitors" in results:
        on = results["sslcli-monitors"]["images_per_s"]
        cost = 1 - on / a
        print(f"{'monitors cost: (a) off minus (a) on':<62} {a - on:>9.1f} {'':>8} {100 * cost:>12.1f}%")
        figures.update({"sslcli_monitors_images_per_s": round(on, 1), "monitors_cost_images_per_s": round(a - on, 1),
                        "monitors_cost_fraction": round(cost, 3), "knn_evals_timed": cfg["knn_in_window"]})
    if "sslcli-compile" in results:
        compiled = results["sslcli-compile"]["images_per_s"]
        print(f"{'compile speed-up: (a) compiled / (a)':<62} {compiled / a:>9.2f}")
        figures.update({"sslcli_compile_images_per_s": round(compiled, 1), "compile_speedup": round(compiled / a, 2)})
    if "sslcli-prefetch" in results:
        ahead = results["sslcli-prefetch"]["images_per_s"]
        print(f"{'prefetch speed-up: (a) prefetch / (a)':<62} {ahead / a:>9.2f}")
        figures.update({"sslcli_prefetch_images_per_s": round(ahead, 1), "prefetch_speedup": round(ahead / a, 2)})
    print(f"{'a/b (target >= ' + str(targets['a_b']) + ')':<62} {a / b:>9.2f}")
    print(f"{'a/c' + (' (target >= ' + str(targets['a_c']) + ')' if 'a_c' in targets else ''):<62} {a / c:>9.2f}")
    met = a / b >= targets["a_b"] and a / c >= targets.get("a_c", 0)
    figures["targets_met"] = met
    for key in results:
        figures[f"{key.replace('-', '_')}_peak_rss_mb"] = results[key]["peak_rss_mb"]
        if "peak_gpu_mb" in results[key]:
            figures[f"{key.replace('-', '_')}_peak_gpu_mb"] = results[key]["peak_gpu_mb"]
        figures[f"{key.replace('-', '_')}_timed_s"] = results[key]["timed_s"]
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
