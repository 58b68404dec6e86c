"""Labeled splits for evaluation: which folders are train and eval, and the eval labels in the train
split's class indices. Shared by probe, finetune, the online kNN and the benches."""

from __future__ import annotations

from pathlib import Path

from sslcli import data
from sslcli.errors import UsageError


def eval_splits(train: Path, val: Path | None) -> tuple[Path, Path]:
    """--data/--val, or a --data folder holding train/ and val/ or test/."""
    if val is not None:
        return train, val
    train_dir, eval_dir = data.split_folders(train)
    if eval_dir is None:
        data.find_images(train, name="--data")  # a folder with no images at all says so, not "no eval split"
        raise UsageError(f"no eval split: {train} holds no train/ with val/ or test/; pass --val DIR")
    return train_dir, eval_dir


def labeled_images(folder: Path, role: str, option: str = "--data") -> data.ImageSet:
    """The labeled images of a split; errors name the option that gave the folder (--data or --val)."""
    images = data.find_images(folder, name=option)
    if images.labels is None:
        raise UsageError(f"the {role} folder {folder} is not labeled: probing needs one sub-folder per class")
    return images


def match_classes(train: data.ImageSet, val: data.ImageSet) -> list[int]:
    """Labels of the eval images in the train split's class indices (class folders are matched by name)."""
    index = {name: i for i, name in enumerate(train.classes or [])}
    unknown = sorted(set(val.classes or []) - set(index))
    if unknown:
        raise UsageError(f"eval classes not in the train split: {', '.join(unknown[:5])}; "
                         "both folders need the same class sub-folders")
    return [index[val.classes[label]] for label in val.labels]
