"""A safetensors file's header: its string metadata and tensor shapes, read without the weights and without
torch, so `sslcli inspect` starts fast and every command refuses a wrong file with one clear line."""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError, safe_open

from sslcli.errors import UsageError


def _open(path: Path):
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path} does not exist or is not a file")
    try:
        return safe_open(str(path), framework="numpy")
    except (SafetensorError, OSError, ValueError) as exc:
        raise UsageError(f"{path} is not a readable safetensors file ({exc})") from None


def read_metadata(path: Path) -> dict[str, str]:
    with _open(path) as f:
        return dict(f.metadata() or {})


def tensor_shapes(path: Path) -> dict[str, list[int]]:
    with _open(path) as f:
        return {key: list(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118 - not iterable
