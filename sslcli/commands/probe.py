"""`sslcli probe`: frozen features extracted once, then weighted kNN and a linear probe on them.

The result is printed first, then written as JSON (`finish`): where --out says, by default beside the encoder
under a name that says which data it scored (probe-<eval split>.json), never over another probe's result.
A folder that cannot be written costs the file, not the printed scores.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import torch

from sslcli import cache, clip_features, console, data, distributed, weights
from sslcli.device import resolve_device
from sslcli.encoders import EncoderInfo, rebuild_encoder
from sslcli.errors import UsageError
from sslcli.evaluate import knn_evaluate, linear_probe
from sslcli.features import extract_features
from sslcli.files import atomic_write_json
from sslcli.spec import ProbeSpec, dump
from sslcli.splits import eval_splits, labeled_splits


def run(spec: ProbeSpec) -> dict[str, Any]:
    start = time.perf_counter()
    settings = spec.probe
    device = distributed.init(resolve_device(settings.device))  # under torchrun the ranks share the extraction
    model, info, meta = weights.load_encoder_ref(spec.encoder)
    # The starting backbone in the trained encoder's architecture (refused here, before any work): what
    # sslcli's pretraining added to it is the difference between its scores and the encoder's.
    start_model, start_source = (starting_backbone(settings.start, info, spec.encoder) if settings.start
                                 else (None, None))
    video_input = clip_features.is_video_folder(spec.data.path)  # CLASS/clip.mp4: one feature per clip
    splits = clip_features.labeled_clip_splits if video_input else labeled_splits
    train_set, val_set, val_labels_all = splits(spec.data.path, spec.data.val, spec.data.label_fraction, settings.seed)
    num_classes = len(train_set.classes or [])
    policy = data.BadImagePolicy(spec.data.on_bad_image)
    workers = data.default_workers(spec.data.num_workers)
    console.info(f"extracting features: {len(train_set)} train and {len(val_set)} eval images, "
                 f"{info.name} at {info.image_size} px on {device}")
    common = dict(batch_size=settings.batch_size, num_workers=workers, device=device, policy=policy,
                  caching=cache.CachePolicy(spec.data.cache))
    if video_input:  # a clip's feature is the mean of its frames', at the rate the encoder was trained with
        fps = clip_features.training_fps(meta)
        console.info(f"video: the {len(train_set)} train and {len(val_set)} eval items are clips, each the mean of "
                     f"its frames' features ({f'{fps:g} fps' if fps else 'every frame'})")

        def extract(model, info, clips, **kwargs):
            return clip_features.extract_clip_features(model, info, clips, fps=fps, **kwargs)

        items = train_set.clips, val_set.clips
    else:
        extract, items = extract_features, (train_set.paths, val_set.paths)
    train_f, train_kept = extract(model, info, items[0], **common)
    val_f, val_kept = extract(model, info, items[1], **common)
    baseline_f = None
    if settings.baseline:
        # The same architecture (kwargs, small stem) at a seeded random init: what the training added is the
        # difference. Its images come from the decode cache the first extraction filled.
        console.info(f"random-init baseline: the same {info.name} at seed {settings.seed}, features again")
        torch.manual_seed(settings.seed)
        random_init = rebuild_encoder(info)
        baseline_f = (extract(random_init, info, items[0], **common)[0], extract(random_init, info, items[1], **common)[0])
    start_f = None
    if start_model is not None:
        console.info(f"starting-weights baseline: {start_source.ref} in the same {info.name}, features again")
        start_f = (extract(start_model, info, items[0], **common)[0], extract(start_model, info, items[1], **common)[0])
    train_y = torch.tensor(train_set.labels)[train_kept]
    val_y = val_labels_all[val_kept]
    if not distributed.is_main():
        return {}  # rank 0 fits the kNN and linear probe on the gathered features and reports them

    console.info("kNN and linear probe on the cached features")
    knn, linear = _scores(spec, train_f, train_y, val_f, val_y, num_classes)
    baseline = None
    if baseline_f is not None:
        base_knn, base_linear = _scores(spec, baseline_f[0], train_y, baseline_f[1], val_y, num_classes)
        baseline = {"knn": base_knn, "linear": base_linear, "seed": settings.seed}
    start_scores = None
    if start_f is not None:
        start_knn, start_linear = _scores(spec, start_f[0], train_y, start_f[1], val_y, num_classes)
        start_scores = {"knn": start_knn, "linear": start_linear, **start_source.record()}
    if policy.summary():
        console.warn(policy.summary())
    result = {
        "encoder": str(spec.encoder),
        "method": meta.get("method"),
        "encoder_name": info.name,
        "knn": knn,
        "knn_k": list(settings.knn_k),
        "knn_temperature": settings.knn_temperature,
        "linear": linear,
        "chance": 1 / max(1, num_classes),
        "baseline": baseline,
        "start": start_scores,  # --baseline pretrained|WEIGHTS: the starting backbone's scores and where it came from
        "label_fraction": spec.data.label_fraction,
        "n_train": int(train_y.numel()),
        "n_eval": int(val_y.numel()),
        "num_classes": num_classes,
        "feature_dim": int(train_f.shape[1]),
        "seconds": round(time.perf_counter() - start, 2),
        "spec": dump(spec),
    }
    result["out"] = str(result_path(spec, result["spec"]))
    return result


def starting_backbone(ref: str, info: EncoderInfo, encoder: Path) -> tuple[torch.nn.Module, weights.WeightsSource]:
    """The weights a run started from ('pretrained': those its encoder's metadata records, checked by their
    sha256) or the weights given, in the encoder's own architecture."""
    recorded = None
    if ref == "pretrained":
        if not info.init:
            raise UsageError(f"--baseline pretrained: {encoder} records no starting weights (its run started from a "
                             "random init, or from --init-from); name them: --baseline FILE, local-dir:DIR, "
                             "hf-hub:ORG/NAME or pretrained:NAME")
        recorded, ref = info.init, weights.recorded_ref(info.init)
    source = weights.locate(ref, info.name)
    if recorded is not None:
        weights.check_unchanged(source, recorded)
    model = rebuild_encoder(info)
    weights.load_into(model, source, info.name)
    return model, source


def result_path(spec: ProbeSpec, settings: dict[str, Any]) -> Path:
    """--out, or probe-<eval split>[-<label fraction>].json beside the encoder: a second probe on other data
    gets its own file. The eval split is named by its last two folders (cifar10-test). A default-named file
    that holds another probe's result (other data or settings) is kept: the next free name is taken."""
    if spec.out is not None:
        return Path(spec.out)
    _, val_dir = eval_splits(spec.data.path, spec.data.val)
    parts = [p for p in Path(val_dir).resolve().parts[-2:] if p not in ("/", "")]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(parts)) or "data"
    if spec.data.label_fraction is not None:
        name += f"-labels{spec.data.label_fraction:g}"
    encoder = Path(spec.encoder)
    path, n = (encoder if encoder.is_dir() else encoder.parent) / f"probe-{name}.json", 2
    while path.exists() and (_read_json(path) or {}).get("spec") != settings:
        path, n = path.with_name(f"probe-{name}-{n}.json"), n + 1
    return path


def finish(result: dict[str, Any]) -> None:
    """After the result is printed: write it where result["out"] says (result_path chose it). A file that
    cannot be written is a warning; the scores were printed."""
    if not result:
        return
    path = Path(result["out"])
    if path.exists() and not path.is_file():  # a device (--out /dev/null) or a folder: never replaced
        console.warn(f"the result was not written: {path} is not a file")
        return
    previous = _read_json(path)
    if previous is not None and previous.get("spec") != result["spec"]:
        console.warn(f"{path} held another probe's result; replaced as --out asks")
    try:
        atomic_write_json(path, result)
    except OSError as exc:
        console.warn(f"the result could not be written to {path} ({exc.strerror or exc}); the scores above are "
                     "all there is: rerun with --out FILE in a folder you can write")
        return
    console.info(f"result written to {path}")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _scores(spec: ProbeSpec, train_f: torch.Tensor, train_y: torch.Tensor, val_f: torch.Tensor,
            val_y: torch.Tensor, num_classes: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Weighted kNN at every k and the linear probe on one set of features."""
    settings = spec.probe
    knn = knn_evaluate(train_f, train_y, val_f, val_y, num_classes, ks=settings.knn_k,
                       temperature=settings.knn_temperature)
    linear = linear_probe(train_f, train_y, val_f, val_y, num_classes, weight_decays=settings.linear_weight_decays,
                          seed=settings.seed)
    return knn, {"top1": linear["top1"], "top5": linear["top5"], "weight_decay": linear["weight_decay"]}


def format_text(result: dict[str, Any]) -> str:
    """The scores beside their references: the random-init encoder of the same architecture, and chance."""
    base, start = result.get("baseline"), result.get("start")
    references = [(title, ref) for title, ref in (("random init top-1", base), ("starting weights top-1", start))
                  if ref]
    lines = [f"{'probe':<12} {'top-1':>7} {'top-5':>7}" + "".join(f"   {title:>17}" for title, _ in references)]
    rows = [("kNN k=" + key[1:], key, v) for key, v in result["knn"].items()] + [("linear", None, result["linear"])]
    for name, key, scores in rows:
        line = f"{name:<12} {100 * scores['top1']:>6.2f}% {100 * scores['top5']:>6.2f}%"
        for title, ref in references:
            value = ref["linear"] if key is None else ref["knn"].get(key)
            line += f"   {100 * value['top1']:>{max(16, len(title) - 1)}.2f}%" if value else ""
        lines.append(line)
    if start:
        lines.append(f"starting weights: {start['ref']} (sha256 {start['sha256'][:12]}...)")
    lines.append(f"chance {100 * result['chance']:.2f} % (1 / {result['num_classes']} classes)"
                 + ("" if base else "; --baseline adds a random-init encoder's scores"))
    lines.append(f"{result['n_train']} train / {result['n_eval']} eval images, {result['num_classes']} classes, "
                 f"features {result['feature_dim']}-d, {result['seconds']:.1f} s")
    return "\n".join(lines)
