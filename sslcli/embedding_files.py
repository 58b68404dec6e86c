"""The files `sslcli embed` writes and `sslcli neighbors` reads: one format per --out suffix.

- `.safetensors`: `embeddings` [N, D] float32 (and `labels` [N]) with the provenance as metadata, plus the CSV
  index beside it (row, path, label, class). The one `neighbors` searches: rows are read a chunk at a time.
- `.parquet` (the `parquet` extra): one row per image: row, path, label, class, embedding (a fixed-size list of
  D float32), the provenance as the schema's metadata (key `sslcli`, JSON).
- `.csv`: row, path, label, class, then e0 ... e{D-1}, one image a line (float32 written exactly, %.9g).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as save_bytes

from sslcli.errors import UsageError
from sslcli.extras import require
from sslcli.files import atomic_file, atomic_write_bytes
from sslcli.headers import read_metadata

EMBEDDINGS_FORMAT = "sslcli.embeddings.v1"
FORMATS = {".safetensors": "safetensors", ".parquet": "parquet", ".csv": "csv"}
EMBEDDINGS_EXPECTED = "an embeddings .safetensors written by `sslcli embed` (with its .csv index beside it)"


def format_of(out: Path) -> str:
    try:
        return FORMATS[Path(out).suffix.lower()]
    except KeyError:
        raise UsageError(f"--out must end in .safetensors (with a CSV index beside it), .parquet or .csv; got {out}") \
            from None


def index_path(out: Path) -> Path:
    """The CSV beside a .safetensors embeddings file: emb.safetensors -> emb.csv."""
    return Path(out).with_suffix(".csv")


def targets(out: Path) -> list[Path]:
    """Every file a write to `out` makes."""
    return [Path(out), index_path(out)] if format_of(out) == "safetensors" else [Path(out)]


# One row of the index: (row, path, label or None, class name or None).
Row = tuple[int, str, "int | None", "str | None"]


def _cells(row: Row) -> list[Any]:
    return [row[0], row[1], "" if row[2] is None else row[2], "" if row[3] is None else row[3]]


def index_csv(rows: list[Row]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["row", "path", "label", "class"])
    writer.writerows(_cells(row) for row in rows)
    return buffer.getvalue()


def write(out: Path, features: torch.Tensor, rows: list[Row], metadata: dict[str, str]) -> None:
    """`features` [N, D] and their index rows to `out` in the format its suffix names, whole or not at all."""
    kind = format_of(out)
    if kind == "safetensors":
        tensors = {"embeddings": features.contiguous()}
        if rows and rows[0][2] is not None:
            tensors["labels"] = torch.tensor([row[2] for row in rows], dtype=torch.int64)
        # Both files or neither: each is made in memory first (a name that is not UTF-8 keeps its own bytes in
        # the CSV), and the embeddings are removed again if the index cannot be written.
        index = index_csv(rows).encode("utf-8", errors="surrogateescape")
        atomic_write_bytes(out, save_bytes(tensors, metadata={**metadata, "index": index_path(out).name}))
        try:
            atomic_write_bytes(index_path(out), index)
        except BaseException:
            Path(out).unlink(missing_ok=True)
            raise
    elif kind == "parquet":
        atomic_write_bytes(out, parquet_bytes(features, rows, metadata))
    else:
        _write_csv(out, features, rows)


def parquet_bytes(features: torch.Tensor, rows: list[Row], metadata: dict[str, str]) -> bytes:
    pa = require("pyarrow", "parquet", "--out FILE.parquet")
    pq = require("pyarrow.parquet", "parquet", "--out FILE.parquet")
    n, dim = features.shape
    # Parquet strings are UTF-8: a file name that is not keeps its undecodable bytes visible as \\xNN.
    paths = [row[1].encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") for row in rows]
    table = pa.table({
        "row": pa.array([row[0] for row in rows], pa.int64()),
        "path": pa.array(paths, pa.string()),
        "label": pa.array([row[2] for row in rows], pa.int64()),
        "class": pa.array([row[3] for row in rows], pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(features.float().numpy().reshape(-1)), dim),
    }).replace_schema_metadata({"sslcli": json.dumps(metadata)})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def _write_csv(out: Path, features: torch.Tensor, rows: list[Row]) -> None:
    """Streamed a row at a time (a matrix as text is ten times its size in memory), into a temporary file."""
    with atomic_file(out) as tmp, open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["row", "path", "label", "class", *(f"e{j}" for j in range(features.shape[1]))])
        for row, vector in zip(rows, features.float().numpy(), strict=True):
            writer.writerow([*_cells(row), *(f"{v:.9g}" for v in vector)])


# ---------------------------------------------------------------- reading (neighbors)


def open_embeddings(path: Path) -> EmbeddingsFile:
    """Any of the three files `sslcli embed` writes, by its suffix, ready to be searched."""
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise UsageError(f"{path}: embeddings are a .safetensors (with its CSV index beside it), .parquet or .csv "
                         "written by `sslcli embed`")
    if not path.is_file():
        raise UsageError(f"{path} is not a file; expected embeddings written by `sslcli embed`")
    return {"safetensors": EmbeddingsFile, "parquet": ParquetEmbeddings, "csv": CsvEmbeddings}[kind](path)


class EmbeddingsFile:
    """An embeddings .safetensors and its CSV index, checked; rows are read from disk a chunk at a time.

    The other formats are subclasses with the same reading surface: path, metadata (the provenance embed
    recorded, {} where the file keeps none), count, dim, rows (the index), chunks(), vector() and find()."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.metadata = read_metadata(self.path, EMBEDDINGS_EXPECTED)
        if self.metadata.get("sslcli_format") != EMBEDDINGS_FORMAT:
            raise UsageError(f"{self.path} is not an embeddings file (sslcli_format "
                             f"{self.metadata.get('sslcli_format', 'missing')!r}); expected {EMBEDDINGS_EXPECTED}")
        with safe_open(str(self.path), framework="pt") as f:
            if "embeddings" not in f.keys():  # noqa: SIM118 - safe_open is not iterable
                raise UsageError(f"{self.path} holds no `embeddings` tensor; expected {EMBEDDINGS_EXPECTED}")
            shape = f.get_slice("embeddings").get_shape()
        if len(shape) != 2:
            raise UsageError(f"{self.path}: `embeddings` is {shape}, not an [N, D] matrix")
        self.count, self.dim = int(shape[0]), int(shape[1])
        self.rows = self._read_index()

    def _read_index(self) -> list[Row]:
        # The CSV of the same name (a renamed pair stays a pair), else the name the embeddings recorded.
        index = index_path(self.path)
        if not index.is_file() and self.metadata.get("index"):
            index = self.path.with_name(Path(self.metadata["index"]).name)
        try:
            text = index.read_bytes().decode("utf-8", errors="surrogateescape")
        except OSError:
            raise UsageError(f"the index of {self.path} is missing: {index} (embed writes it beside the embeddings; "
                             "keep the two together)") from None
        records = list(csv.DictReader(io.StringIO(text)))
        if len(records) != self.count or (records and not {"row", "path"} <= set(records[0])):
            raise UsageError(f"{index} does not index {self.path}: {len(records)} rows for {self.count} embeddings")
        return [(int(r["row"]), r["path"], int(r["label"]) if r.get("label") else None, r.get("class") or None)
                for r in records]

    def chunks(self, rows: int) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, float32 [<= rows, D]) in order: only one chunk is in memory at a time."""
        with safe_open(str(self.path), framework="pt") as f:
            matrix = f.get_slice("embeddings")
            for start in range(0, self.count, rows):
                yield start, matrix[start:start + rows].float()

    def vector(self, row: int) -> torch.Tensor:
        with safe_open(str(self.path), framework="pt") as f:
            return f.get_slice("embeddings")[row:row + 1].float()[0]

    def find(self, query: str) -> int | None:
        """The row of an indexed path: as written, or the same file by its resolved path."""
        for row in self.rows:
            if row[1] == query:
                return row[0]
        absolute = os.path.abspath(query)  # no file system calls: a few hundred thousand rows stay instant
        return next((row[0] for row in self.rows if os.path.abspath(row[1]) == absolute), None)


CHUNK_ROWS_READ = 4096  # rows parsed at a time when one vector is wanted


class _RowsInOrder(EmbeddingsFile):
    """A format whose rows are read in file order: one row's vector is found by reading up to its chunk."""

    def vector(self, row: int) -> torch.Tensor:
        for start, chunk in self.chunks(CHUNK_ROWS_READ):
            if start <= row < start + len(chunk):
                return chunk[row - start]
        raise IndexError(row)


class ParquetEmbeddings(_RowsInOrder):
    """`embed --out FILE.parquet`: the index columns read at once, the `embedding` column a batch at a time."""

    def __init__(self, path: Path):
        pa = require("pyarrow", "parquet", "neighbors over a .parquet")
        pq = require("pyarrow.parquet", "parquet", "neighbors over a .parquet")
        self.path = Path(path)
        try:
            self.file = pq.ParquetFile(str(self.path))
        except (OSError, pa.ArrowException) as exc:
            raise UsageError(f"{self.path} cannot be read as Parquet ({exc})") from None
        schema = self.file.schema_arrow
        raw = (schema.metadata or {}).get(b"sslcli")
        self.metadata = {k: str(v) for k, v in json.loads(raw).items()} if raw else {}
        names = set(schema.names)
        if not {"path", "embedding"} <= names:
            raise UsageError(f"{self.path} has no `path` and `embedding` columns; expected embeddings written by "
                             "`sslcli embed --out FILE.parquet`")
        kind = schema.field("embedding").type
        if not (pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind)):
            raise UsageError(f"{self.path}: `embedding` is {kind}, not a list of numbers per row")
        self.count = self.file.metadata.num_rows
        columns = [c for c in ("path", "label", "class") if c in names]
        index = self.file.read(columns=columns).to_pydict()
        labels, classes = index.get("label", [None] * self.count), index.get("class", [None] * self.count)
        # Rows are numbered by their place in the file, as the search numbers them.
        self.rows = [(i, p, labels[i], classes[i]) for i, p in enumerate(index["path"])]
        self.fixed = pa.types.is_fixed_size_list(kind)
        self.dim = kind.list_size if self.fixed else self._first_length()

    def _first_length(self) -> int:
        for batch in self.file.iter_batches(batch_size=1, columns=["embedding"]):
            return int(batch.column(0).value_lengths()[0].as_py() or 0)
        return 0

    def chunks(self, rows: int) -> Iterator[tuple[int, torch.Tensor]]:
        start = 0
        for batch in self.file.iter_batches(batch_size=rows, columns=["embedding"]):
            column = batch.column(0)
            if column.null_count or (not self.fixed and set(column.value_lengths().to_pylist()) != {self.dim}):
                raise UsageError(f"{self.path}: the `embedding` rows are not all {self.dim} numbers long")
            values = column.flatten().to_numpy(zero_copy_only=False).astype("float32", copy=False)
            yield start, torch.tensor(values.reshape(len(column), self.dim))  # a copy: arrow buffers are read-only
            start += len(column)


class CsvEmbeddings(_RowsInOrder):
    """`embed --out FILE.csv`: row, path, label, class, e0 ... e{D-1}; parsed a chunk of lines at a time.

    A CSV keeps no provenance: an image query needs --encoder. Text is slow to parse (10,000 x 512 took 7 s, 0.1 s
    as .safetensors): for searching many images, .safetensors or .parquet."""

    def __init__(self, path: Path):
        self.path, self.metadata = Path(path), {}
        header = self._header()
        if "path" not in header or "e0" not in header:
            beside = self.path.with_suffix(".safetensors")
            if header[:2] == ["row", "path"] and beside.is_file():
                raise UsageError(f"{self.path} is the index of {beside}: search that one")
            raise UsageError(f"{self.path} has no `path` and `e0` ... columns; expected embeddings written by "
                             "`sslcli embed --out FILE.csv`")
        self.first = header.index("e0")
        self.dim = len(header) - self.first
        self.at = {name: header.index(name) for name in ("path", "label", "class") if name in header}
        self.rows = []
        for i, cells in enumerate(self._lines()):
            label = cells[self.at["label"]] if "label" in self.at else ""
            name = cells[self.at["class"]] if "class" in self.at else ""
            self.rows.append((i, cells[self.at["path"]], int(label) if label else None, name or None))
        self.count = len(self.rows)

    def _open(self):
        return open(self.path, newline="", encoding="utf-8", errors="surrogateescape")

    def _header(self) -> list[str]:
        with self._open() as f:
            return next(csv.reader(f), [])

    def _lines(self) -> Iterator[list[str]]:
        with self._open() as f:
            reader = csv.reader(f)
            width = len(next(reader))
            for number, cells in enumerate(reader, start=2):
                if len(cells) != width:
                    raise UsageError(f"{self.path}, line {number}: {len(cells)} cells, the header has {width}")
                yield cells

    def chunks(self, rows: int) -> Iterator[tuple[int, torch.Tensor]]:
        start, block = 0, []
        for cells in self._lines():
            block.append(cells[self.first:])
            if len(block) == rows:
                yield start, self._matrix(block, start)
                start, block = start + len(block), []
        if block:
            yield start, self._matrix(block, start)

    def _matrix(self, block: list[list[str]], start: int) -> torch.Tensor:
        try:  # 9 significant digits read as a double round to the very float32 that was written
            matrix = np.array(block, dtype=np.float64).astype(np.float32)
        except ValueError:
            raise UsageError(f"{self.path}: a vector between rows {start} and {start + len(block) - 1} holds a cell "
                             "that is not a number") from None
        return torch.from_numpy(matrix)
