"""Labeled splits for evaluation: which folders are train and eval, and the eval labels in the train
split's class indices. Shared by probe, finetune, the online kNN and the benches."""

from __future__ import annotations

from pathlib import Path

import torch

from sslcli import data
from sslcli.errors import UsageError
from sslcli.image_lists import is_list_file


def eval_splits(train: Path, val: Path | None) -> tuple[Path, Path]:
    """--data/--val, or a --data folder holding train/ and val/ or test/."""
    if val is not None:
        return train, val
    train_dir, eval_dir = data.split_folders(train)
    if eval_dir is None:
        data.find_images(train, name="--data")  # a folder with no images at all says so, not "no eval split"
        if is_list_file(train):
            raise UsageError(f"no eval split: {train} is a list of images; pass the eval images as --val LIST or DIR")
        raise UsageError(f"no eval split: {train} holds no train/ with val/ or test/; pass --val DIR")
    return train_dir, eval_dir


def labeled_images(folder: Path, role: str, option: str = "--data") -> data.ImageSet:
    """The labeled images of a split; errors name the option that gave the folder (--data or --val)."""
    images = data.find_images(folder, name=option)
    if images.labels is None:
        if is_list_file(folder):
            raise UsageError(f"the {role} list {folder} has no labels: probe and finetune need a CSV with a label "
                             "column (path,label)")
        raise UsageError(f"the {role} folder {folder} is not labeled: probe and finetune need one sub-folder per class")
    return images


def match_classes(train: data.ImageSet, val: data.ImageSet) -> list[int]:
    """Labels of the eval images in the train split's class indices (class folders are matched by name)."""
    index = {name: i for i, name in enumerate(train.classes or [])}
    unknown = sorted(set(val.classes or []) - set(index))
    if unknown:
        raise UsageError(f"eval classes not in the train split: {', '.join(unknown[:5])}; "
                         "both folders need the same class sub-folders")
    return [index[val.classes[label]] for label in val.labels]


def labeled_splits(train: Path, val: Path | None, label_fraction: float | None,
                   seed: int) -> tuple[data.ImageSet, data.ImageSet, torch.Tensor]:
    """What probe and finetune train and score on: (the train split, optionally a seeded class-balanced
    `label_fraction` of it; the eval split; the eval labels in the train split's class indices)."""
    train_dir, val_dir = eval_splits(train, val)
    train_set = labeled_images(train_dir, "train")
    val_set = labeled_images(val_dir, "eval", "--val" if val is not None else "--data")
    if label_fraction is not None:
        train_set = data.subset(train_set, data.label_fraction_subset(train_set.labels, label_fraction, seed))
    return train_set, val_set, torch.tensor(match_classes(train_set, val_set))
