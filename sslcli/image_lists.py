"""DATA given as a list file instead of a folder: `paths.txt` (one image path per line) or `split.csv`
(columns path[,label]). Torch-free, so data.image_size=auto can read a list before torch is imported.

Rules (docs/training.md, "Data from lists"): a relative path is relative to the list file's folder; blank
lines and lines starting with # are skipped; a CSV's first row is a header when its first field is `path`
(then any columns may follow, `label` is the one read); a path listed twice is kept once, with one warning
(twice with two different labels is an error: which is right?). A listed file that does not exist is not an
error here: it reaches the decoder, which reports it under --on-bad-image like any unreadable image.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

from sslcli import console
from sslcli.errors import UsageError

LIST_SUFFIXES = (".txt", ".csv")
LABEL_COLUMNS = ("label", "class")


@dataclass(frozen=True)
class ImageList:
    """The images a list file names, in its order, each with its label string (None: no label column)."""

    source: Path
    paths: list[Path]
    labels: list[str] | None


def is_list_file(path: Path | str) -> bool:
    """Whether DATA (or --data, --val) names a list file rather than a folder."""
    path = Path(path)
    return path.suffix.lower() in LIST_SUFFIXES and not path.is_dir()


def read_image_list(path: Path | str, name: str = "DATA", warn: bool = True) -> ImageList:
    """The paths (absolute, normalised) and labels of a .txt or .csv list; UsageError with one line when it
    cannot be read or makes no sense. `warn=False` keeps the duplicate warning quiet (a second reading)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"list file {path} does not exist: check the path given as {name}")
    try:
        text = path.read_bytes().decode("utf-8-sig")  # -sig: a BOM that spreadsheet programs write is dropped
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not UTF-8 text (byte {exc.start}); save the list as UTF-8") from None
    except OSError as exc:
        raise UsageError(f"cannot read list file {path}: {exc.strerror or exc}") from None
    rows = _csv_rows(text, path) if path.suffix.lower() == ".csv" else _text_rows(text)
    return _resolve(path, rows, name, warn)


def _text_rows(text: str) -> list[tuple[int, str, str | None]]:
    """(line number, path, None) per line; surrounding whitespace is not part of a path."""
    rows = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            rows.append((number, line, None))
    return rows


def _csv_rows(text: str, path: Path) -> list[tuple[int, str, str | None]]:
    """(line number, path, label or None) per row; a header row names the path and label columns."""
    reader = csv.reader(io.StringIO(text))
    rows: list[tuple[int, str, str | None]] = []
    path_col, label_col, header_seen = 0, None, False
    try:
        for fields in reader:
            cells = [cell.strip() for cell in fields]
            if not any(cells) or cells[0].startswith("#"):
                continue
            if not header_seen and not rows and cells[0].lower() == "path":
                header = [cell.lower() for cell in cells]
                path_col = 0
                label_col = next((header.index(c) for c in LABEL_COLUMNS if c in header), None)
                header_seen = True
                continue
            if not header_seen and len(cells) > 2:
                raise UsageError(f"{path} line {reader.line_num}: {len(cells)} columns, expected path[,label] "
                                 "(or a header row naming the columns: path,label,...)")
            label_at = label_col if header_seen else (1 if len(cells) == 2 else None)
            label = cells[label_at] if label_at is not None and label_at < len(cells) else None
            rows.append((reader.line_num, cells[path_col] if path_col < len(cells) else "", label or None))
    except csv.Error as exc:
        raise UsageError(f"{path} line {reader.line_num}: not valid CSV ({exc})") from None
    return rows


def _resolve(source: Path, rows: list[tuple[int, str, str | None]], name: str, warn: bool) -> ImageList:
    base = source.parent
    if not rows:
        raise UsageError(f"{source} lists no images (blank lines and # comments are skipped): give {name} a list "
                         "with one image path per line, or a folder of images")
    labeled = [label is not None for _, _, label in rows]
    if any(labeled) and not all(labeled):
        first = next(number for number, _, label in rows if label is None)
        raise UsageError(f"{source} line {first} has no label, but other lines have one: label every row, "
                         "or none (an unlabeled list)")
    seen: dict[str, tuple[int, str | None]] = {}
    paths: list[Path] = []
    labels: list[str] = []
    duplicates: list[tuple[int, int, str]] = []
    for number, entry, label in rows:
        if not entry:
            raise UsageError(f"{source} line {number}: the path is empty")
        # normpath, not resolve: a symlinked file keeps its own name, and ./a.jpg and a.jpg are one image.
        full = os.path.normpath(os.path.join(base, os.path.expanduser(entry)))
        if full in seen:
            first_line, first_label = seen[full]
            if first_label != label:
                raise UsageError(f"{source} line {number} lists {console.name(entry)} again with label {label!r}; line "
                                 f"{first_line} gave it {first_label!r}: one image has one label")
            duplicates.append((number, first_line, entry))
            continue
        seen[full] = (number, label)
        paths.append(Path(full))
        labels.append(label or "")
    if duplicates and warn:
        number, first_line, entry = duplicates[0]
        console.warn(f"{source}: {console.plural(len(duplicates), 'duplicate line')} skipped, each image is used "
                     f"once (first: line {number} repeats line {first_line}, {console.name(entry)})")
    return ImageList(source=source, paths=paths, labels=labels if all(labeled) else None)
