"""sslcli embed's Parquet and CSV outputs, and sslcli neighbors: exact cosine search over an embeddings file."""

from __future__ import annotations

import csv
import importlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from sslcli import nearest
from sslcli.cli import main
from sslcli.commands.embed import run as run_embed
from sslcli.embedding_files import EmbeddingsFile, open_embeddings
from sslcli.spec import EmbedSpec
from tests.helpers import images_are_valid_png
from tests.test_cli import assert_one_clean_error, sslcli_run


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory, resnet10t_encoder: Path, cifar_tiny: Path) -> Path:
    """The 50 test images of cifar_tiny embedded by the resnet10t encoder (safetensors + CSV index)."""
    out = tmp_path_factory.mktemp("emb") / "test.safetensors"
    run_embed(EmbedSpec(encoder=resnet10t_encoder, data=cifar_tiny / "test", out=out, num_workers=0))
    return out


def test_parquet_and_csv_hold_the_same_vectors_and_index(tmp_path: Path, embedded: Path, resnet10t_encoder: Path,
                                                          cifar_tiny: Path):
    import pyarrow.parquet as pq

    expected = load_file(embedded)
    with open(embedded.with_suffix(".csv"), newline="") as f:
        index = list(csv.DictReader(f))
    for suffix in (".parquet", ".csv"):
        out = tmp_path / f"test{suffix}"
        result = run_embed(EmbedSpec(encoder=resnet10t_encoder, data=cifar_tiny / "test", out=out, num_workers=0))
        assert result["format"] == suffix[1:] and "index" not in result
        if suffix == ".parquet":
            table = pq.read_table(out)
            vectors = torch.tensor(table.column("embedding").to_pylist())
            rows = table.select(["row", "path", "label", "class"]).to_pylist()
            assert json.loads(table.schema.metadata[b"sslcli"])["encoder"] == "resnet10t"
        else:
            with open(out, newline="") as f:
                rows = list(csv.DictReader(f))
            vectors = torch.tensor([[float(row[f"e{j}"]) for j in range(512)] for row in rows])
        assert [str(r["path"]) for r in rows] == [r["path"] for r in index]
        assert [str(r["class"]) for r in rows] == [r["class"] for r in index]
        assert [int(r["label"]) for r in rows] == expected["labels"].tolist()
        assert torch.equal(vectors, expected["embeddings"])  # float32 exactly, in both formats
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test.csv", "test.parquet"]  # no index beside them


def test_embed_refuses_an_unknown_suffix_and_a_csv_over_an_index(tmp_path: Path, resnet10t_encoder: Path,
                                                                 embedded: Path, cifar_tiny: Path):
    proc = sslcli_run("embed", str(resnet10t_encoder), "--data", str(cifar_tiny / "test"), "--out",
                      str(tmp_path / "e.npy"))
    assert_one_clean_error(proc, 2, "--out must end in .safetensors", ".parquet or .csv")
    index = embedded.with_suffix(".csv")
    before = index.read_bytes()
    proc = sslcli_run("embed", str(resnet10t_encoder), "--data", str(cifar_tiny / "test"), "--out", str(index))
    assert_one_clean_error(proc, 2, f"{index} is the index of {embedded}")
    assert index.read_bytes() == before


def hide_pyarrow(monkeypatch: pytest.MonkeyPatch) -> None:
    """importlib.import_module as without the pyarrow extra installed."""
    real = importlib.import_module

    def without_pyarrow(name: str, *args):
        if name.startswith("pyarrow"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_pyarrow)


def test_parquet_without_its_extra_names_the_install(tmp_path: Path, resnet10t_encoder: Path, cifar_tiny: Path,
                                                    monkeypatch, capsys):
    hide_pyarrow(monkeypatch)
    with pytest.raises(SystemExit) as stopped:
        main(["embed", str(resnet10t_encoder), "--data", str(cifar_tiny / "test"), "--out", str(tmp_path / "e.parquet")])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip() == ("error: --out FILE.parquet needs the optional package pyarrow: "
                                               "pip install 'sslcli[parquet]'")
    assert list(tmp_path.iterdir()) == []


def brute_force(matrix: torch.Tensor, query: torch.Tensor, k: int, exclude: int | None) -> list[int]:
    sims = F.normalize(matrix, dim=1) @ F.normalize(query, dim=0)
    if exclude is not None:
        sims[exclude] = -2
    return torch.topk(sims, k).indices.tolist()


def test_search_is_exact_whatever_the_chunk_size(embedded: Path):
    emb = EmbeddingsFile(embedded)
    matrix = load_file(embedded)["embeddings"]
    for row in (0, 17, 49):
        expected = brute_force(matrix, matrix[row], 10, exclude=row)
        for chunk_rows in (7, 50, nearest.CHUNK_ROWS):
            found = nearest.top_k(emb, matrix[row], 10, exclude=row, chunk_rows=chunk_rows)
            assert [r for r, _ in found] == expected
            assert row not in [r for r, _ in found]
            sims = [s for _, s in found]
            assert sims == sorted(sims, reverse=True) and all(-1.0001 <= s <= 1.0001 for s in sims)


def test_neighbors_of_an_indexed_path(embedded: Path, tmp_path: Path):
    emb = EmbeddingsFile(embedded)
    query = emb.rows[12][1]
    proc = sslcli_run("neighbors", str(embedded), "--query", query, "-k", "5", "--json", "--png",
                      str(tmp_path / "grid.png"), "-q")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    result = json.loads(proc.stdout)
    assert result["query_row"] == 12 and result["searched"] == 49 and len(result["neighbors"]) == 5
    matrix = load_file(embedded)["embeddings"]
    assert [n["row"] for n in result["neighbors"]] == brute_force(matrix, matrix[12], 5, exclude=12)
    assert all(n["path"] == emb.rows[n["row"]][1] and n["class"] == emb.rows[n["row"]][3] for n in result["neighbors"])
    assert images_are_valid_png(tmp_path / "grid.png")
    text = sslcli_run("neighbors", str(embedded), "--query", query, "-k", "3")
    assert text.returncode == 0 and len(text.stdout.strip().splitlines()) == 4  # header + 3 rows


def test_an_image_query_is_embedded_with_the_recorded_encoder(embedded: Path, tmp_path: Path):
    original = Path(EmbeddingsFile(embedded).rows[30][1])
    copy = tmp_path / "query.jpg"  # not in the index: it must be embedded
    shutil.copy(original, copy)
    proc = sslcli_run("neighbors", str(embedded), "--query", str(copy), "-k", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    first = json.loads(proc.stdout)["neighbors"][0]
    assert first["row"] == 30 and first["similarity"] > 0.9999  # the same pixels, the same encoder


def test_an_image_query_needs_the_very_encoder(embedded: Path, tmp_path: Path, resnet18_encoder: Path):
    copy = tmp_path / "query.jpg"
    shutil.copy(EmbeddingsFile(embedded).rows[0][1], copy)
    proc = sslcli_run("neighbors", str(embedded), "--query", str(copy), "--encoder", str(resnet18_encoder))
    assert_one_clean_error(proc, 2, "is not the encoder that made", "sha256")
    moved = tmp_path / "moved.safetensors"  # the embeddings elsewhere, their encoder recorded at a missing path
    meta = EmbeddingsFile(embedded).metadata
    from safetensors.torch import save_file

    save_file(load_file(embedded), moved, metadata={**meta, "source_encoder": str(tmp_path / "gone.safetensors")})
    shutil.copy(embedded.with_suffix(".csv"), moved.with_suffix(".csv"))
    proc = sslcli_run("neighbors", str(moved), "--query", str(copy))
    assert_one_clean_error(proc, 2, "--encoder ENCODER")
    proc = sslcli_run("neighbors", str(moved), "--query", str(tmp_path / "absent.jpg"))
    assert_one_clean_error(proc, 2, "neither an image file nor a path in the index")


# ---------------------------------------------------------------- neighbors over .parquet and .csv


def cli(capsys: pytest.CaptureFixture, *args: str) -> subprocess.CompletedProcess:
    """The CLI in this process (a subprocess costs seconds of imports): its exit code, stdout and stderr."""
    try:
        main(list(args))
        code = 0
    except SystemExit as stopped:
        code = stopped.code or 0
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


@pytest.fixture(scope="module")
def embedded_as(tmp_path_factory: pytest.TempPathFactory, embedded: Path, resnet10t_encoder: Path,
                cifar_tiny: Path) -> dict[str, Path]:
    """The same 50 images embedded into each of the three formats embed writes."""
    folder = tmp_path_factory.mktemp("formats")
    files = {"safetensors": embedded}
    for suffix in ("parquet", "csv"):
        files[suffix] = folder / f"test.{suffix}"
        run_embed(EmbedSpec(encoder=resnet10t_encoder, data=cifar_tiny / "test", out=files[suffix], num_workers=0))
    return files


def test_every_format_reads_back_the_same_rows_and_vectors_in_chunks(embedded_as: dict[str, Path]):
    reference = EmbeddingsFile(embedded_as["safetensors"])
    matrix = load_file(embedded_as["safetensors"])["embeddings"]
    for kind in ("parquet", "csv"):
        emb = open_embeddings(embedded_as[kind])
        assert (emb.count, emb.dim) == (reference.count, reference.dim) == (50, 512)
        assert emb.rows == reference.rows  # row, path, label, class
        for chunk_rows in (7, 50):
            starts, parts = zip(*emb.chunks(chunk_rows), strict=True)
            assert list(starts) == list(range(0, 50, chunk_rows))
            assert torch.equal(torch.cat(parts), matrix)  # float32 exactly, in every format
        assert torch.equal(emb.vector(33), matrix[33])
    assert open_embeddings(embedded_as["parquet"]).metadata["source_encoder"] == reference.metadata["source_encoder"]
    assert open_embeddings(embedded_as["csv"]).metadata == {}  # a CSV keeps no provenance


def test_neighbors_finds_the_same_images_in_every_format(embedded_as: dict[str, Path], capsys):
    query = EmbeddingsFile(embedded_as["safetensors"]).rows[21][1]
    results = {}
    for kind, path in embedded_as.items():
        proc = cli(capsys, "neighbors", str(path), "--query", query, "-k", "6", "--json")
        assert proc.returncode == 0, proc.stderr
        results[kind] = json.loads(proc.stdout)
        assert results[kind]["embeddings"] == str(path) and results[kind]["query_row"] == 21
    assert results["parquet"]["neighbors"] == results["csv"]["neighbors"] == results["safetensors"]["neighbors"]
    matrix = load_file(embedded_as["safetensors"])["embeddings"]
    assert [n["row"] for n in results["csv"]["neighbors"]] == brute_force(matrix, matrix[21], 6, exclude=21)


def test_an_image_query_on_parquet_uses_the_recorded_encoder_and_on_csv_needs_one(
        embedded_as: dict[str, Path], resnet10t_encoder: Path, tmp_path: Path, capsys):
    copy = tmp_path / "query.jpg"
    shutil.copy(EmbeddingsFile(embedded_as["safetensors"]).rows[8][1], copy)
    proc = cli(capsys, "neighbors", str(embedded_as["parquet"]), "--query", str(copy), "-k", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    first = json.loads(proc.stdout)["neighbors"][0]
    assert first["row"] == 8 and first["similarity"] > 0.9999
    proc = cli(capsys, "neighbors", str(embedded_as["csv"]), "--query", str(copy))
    assert_one_clean_error(proc, 2, "a .csv keeps no provenance", "--encoder ENCODER")
    proc = cli(capsys, "neighbors", str(embedded_as["csv"]), "--query", str(copy), "-e", str(resnet10t_encoder),
                      "--json")
    assert proc.returncode == 0, proc.stderr
    first = json.loads(proc.stdout)["neighbors"][0]
    assert first["row"] == 8 and first["similarity"] > 0.9999


def test_neighbors_refuses_an_index_a_broken_csv_and_a_foreign_parquet(embedded: Path, embedded_as: dict[str, Path],
                                                                      tmp_path: Path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    index = embedded.with_suffix(".csv")
    proc = cli(capsys, "neighbors", str(index), "--query", "x.jpg")
    assert_one_clean_error(proc, 2, f"{index} is the index of {embedded}: search that one")
    lines = embedded_as["csv"].read_text().splitlines()
    broken = tmp_path / "broken.csv"
    cells = lines[3].split(",")
    broken.write_text("\n".join([*lines[:3], ",".join([*cells[:-1], "nan?"]), *lines[4:]]) + "\n")
    proc = cli(capsys, "neighbors", str(broken), "--query", cells[1])
    assert_one_clean_error(proc, 2, f"{broken}: a vector between rows 0 and", "not a number")
    short = tmp_path / "short.csv"
    short.write_text("\n".join([*lines[:3], ",".join(cells[:-1]), *lines[4:]]) + "\n")
    proc = cli(capsys, "neighbors", str(short), "--query", cells[1])
    assert_one_clean_error(proc, 2, f"{short}, line 4: 515 cells, the header has 516")
    foreign = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"file": ["a.jpg"], "vector": [[0.5, 1.0]]}), foreign)
    proc = cli(capsys, "neighbors", str(foreign), "--query", "a.jpg")
    assert_one_clean_error(proc, 2, "no `path` and `embedding` columns")
    proc = cli(capsys, "neighbors", str(tmp_path / "e.npy"), "--query", "a.jpg")
    assert_one_clean_error(proc, 2, ".safetensors (with its CSV index beside it), .parquet or .csv")


def test_a_parquet_of_plain_lists_is_searched_and_one_of_unequal_lists_refused(tmp_path: Path, capsys):
    """A Parquet made elsewhere (pandas, polars: a `list<double>` column, no sslcli metadata) is searched too."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    vectors = [[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 1.0, 0.0], [0.7, 0.0, 0.7]]
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"path": [f"{i}.jpg" for i in range(4)], "embedding": vectors}), plain)
    proc = cli(capsys, "neighbors", str(plain), "--query", "0.jpg", "-k", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)["neighbors"]
    assert [n["path"] for n in found] == ["1.jpg", "3.jpg", "2.jpg"] and found[0]["class"] is None
    assert found[0]["similarity"] == pytest.approx(0.9 / (0.81 + 0.01) ** 0.5, abs=1e-6)
    ragged = tmp_path / "ragged.parquet"
    pq.write_table(pa.table({"path": ["a.jpg", "b.jpg"], "embedding": [[1.0, 0.0], [1.0, 0.0, 0.0]]}), ragged)
    proc = cli(capsys, "neighbors", str(ragged), "--query", "a.jpg")
    assert_one_clean_error(proc, 2, "the `embedding` rows are not all 2 numbers long")


def test_neighbors_over_parquet_without_its_extra_names_the_install(embedded_as: dict[str, Path], monkeypatch,
                                                                    capsys):
    hide_pyarrow(monkeypatch)
    proc = cli(capsys, "neighbors", str(embedded_as["parquet"]), "--query", "x.jpg")
    assert_one_clean_error(proc, 2, "neighbors over a .parquet needs the optional package pyarrow: "
                                    "pip install 'sslcli[parquet]'")
