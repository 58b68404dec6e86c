"""A safetensors file's header: its string metadata and tensor shapes, read without the weights and without
torch, so `sslcli inspect` starts fast and every command refuses a wrong file with one clear line."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from safetensors import SafetensorError, safe_open

from sslcli import console
from sslcli.encoder_args import encoder_kwargs_problem, image_size_problem
from sslcli.errors import UsageError

ENCODER_FORMAT = "sslcli.encoder.v1"
STATE_FORMAT = "sslcli.train-state.v1"
PROJECTOR_FORMAT = "sslcli.projector.v1"
CLASSIFIER_FORMAT = "sslcli.classifier.v1"
PROJECTOR_FILE = "projector.safetensors"  # beside the encoder, named by its metadata key `projector`
# Artifacts that are not encoders, named when one is given where an encoder is expected.
OTHER_KINDS = {CLASSIFIER_FORMAT: "classifier (sslcli finetune)", STATE_FORMAT: "training state",
               "sslcli.embeddings.v1": "embeddings file (sslcli embed)",
               PROJECTOR_FORMAT: "projection head (the projector.safetensors beside an encoder)"}
ENCODER_EXPECTED = "an encoder.safetensors written by `sslcli pretrain` (or a run folder holding one)"
CLASSIFIER_EXPECTED = "a classifier.safetensors written by `sslcli finetune`"
ARTIFACT_EXPECTED = "an sslcli artifact: an encoder, classifier, training state or embeddings .safetensors"


def encoder_file(path: Path | str) -> Path:
    """The encoder a command was given: a file as it is, or a run folder's encoder.safetensors (said on stderr)."""
    path = Path(path)
    if path.is_dir():
        inside = path / "encoder.safetensors"
        if not inside.is_file():
            raise UsageError(f"{path} is a folder without encoder.safetensors; give {ENCODER_EXPECTED}")
        console.info(f"{path} is a run folder: using {inside}")
        return inside
    return path


def check_encoder_format(meta: dict[str, str], path: Path) -> None:
    """Refuse metadata that is not an sslcli encoder's, saying what the file is instead, and metadata whose
    architecture arguments or input size no encoder may take (encoder_args.py): before timm or torch see them."""
    if meta.get("sslcli_format") != ENCODER_FORMAT:
        other = OTHER_KINDS.get(meta.get("sslcli_format", ""))
        what = f"it is an sslcli {other}" if other else f"its metadata has no '{ENCODER_FORMAT}' tag"
        raise UsageError(f"{path} is not an sslcli encoder ({what}); expected {ENCODER_EXPECTED}")
    try:
        kwargs, size = json.loads(meta.get("encoder_kwargs", "{}")), json.loads(meta.get("image_size", "0"))
    except ValueError:
        raise UsageError(f"{path} has damaged sslcli metadata (encoder_kwargs or image_size is not JSON)") from None
    problem = encoder_kwargs_problem(kwargs) or image_size_problem(size)
    if problem:
        raise UsageError(f"{path} is refused: its metadata's {problem}")


def checked_encoder(path: Path | str) -> Path:
    """An encoder a command was given (a run folder: its encoder), refused here with one line if it is not an
    sslcli encoder: before a command imports torch, so a wrong file costs a fraction of a second."""
    path = encoder_file(path)
    check_encoder_format(read_metadata(path, ENCODER_EXPECTED), path)
    return path


def checked_classifier(path: Path) -> dict[str, str]:
    """A classifier sslcli finetune wrote (a --distill-from teacher), its metadata checked without torch: one
    clear line, saying what the file is instead, for anything else."""
    meta = read_metadata(Path(path), CLASSIFIER_EXPECTED)
    if meta.get("sslcli_format") != CLASSIFIER_FORMAT:
        other = {ENCODER_FORMAT: "encoder", **OTHER_KINDS}.get(meta.get("sslcli_format", ""))
        what = f"it is an sslcli {other}" if other else f"its metadata has no '{CLASSIFIER_FORMAT}' tag"
        raise UsageError(f"{path} is not an sslcli classifier ({what}); expected {CLASSIFIER_EXPECTED}")
    return meta


def checked_projector(encoder: Path) -> tuple[Path, dict[str, str]]:
    """The projection head saved beside an encoder (SimCLR v2's fine-tuning from a projection layer), with its
    metadata, checked without torch: the encoder names it, it is there, it is a projector, and it was written
    with these very encoder weights (the sha256 of the encoder file it records). One clear line otherwise."""
    meta = read_metadata(encoder, ENCODER_EXPECTED)
    check_encoder_format(meta, encoder)
    name = meta.get("projector")
    if name is None:
        raise UsageError(f"{encoder} carries no projection head (method {meta.get('method') or 'unknown'} saves "
                         f"none): --keep-projection-layers needs an encoder pretrained with --method simclr, which "
                         f"writes {PROJECTOR_FILE} beside encoder.safetensors; fine-tune without it (0, the default)")
    if not name or Path(name).name != name or name in (".", ".."):
        raise UsageError(f"{encoder} has damaged sslcli metadata (projector {name!r} is not a file name)")
    path = encoder.parent / name
    if not path.is_file():
        raise UsageError(f"{encoder} keeps its projection head in {path}, which is missing: copy {name} from the "
                         "run folder beside the encoder")
    head = read_metadata(path, f"the {PROJECTOR_FILE} written beside an encoder by sslcli pretrain")
    if head.get("sslcli_format") != PROJECTOR_FORMAT:
        raise UsageError(f"{path} is not an sslcli projection head (its metadata has no '{PROJECTOR_FORMAT}' tag)")
    digest = hashlib.sha256(encoder.read_bytes()).hexdigest()
    if head.get("encoder_sha256") != digest:
        raise UsageError(f"{path} was written with other encoder weights (its step {head.get('step', '?')}, the "
                         f"encoder's {meta.get('step', '?')}): the two files come from different checkpoints; take "
                         "both from the same run folder (a run stopped between the two writes: --resume auto)")
    return path, head


TRUNCATED = "a damaged safetensors file"


def what_it_is(path: Path) -> str | None:
    """What a file that is not safetensors looks like (from its first bytes), or None when it may be a damaged one.

    A safetensors file starts with an 8-byte little-endian header length, then the JSON header ('{')."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
        size = path.stat().st_size
    except OSError:
        return None
    if not head:
        return "an empty file"
    if len(head) > 8 and head[8:9] == b"{":
        length = int.from_bytes(head[:8], "little")
        if length <= size - 8:
            return None  # safetensors in form: a damaged one, and the library's reason is the useful one
        return (f"{TRUNCATED}: its header claims {length:,} bytes but the whole file holds {size:,} "
                "(cut short by a copy or a full disk, or altered)")
    signatures = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
                  (b"BM", "a BMP image"), (b"PK\x03\x04", "a zip archive (a torch.save .pt/.pth file?)"),
                  (b"\x80", "a pickle (a torch.save .pt/.pth file?)"))
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    for magic, name in signatures:
        if head.startswith(magic):
            return name
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "binary data of another format"
    return "JSON text" if text.lstrip()[:1] in ("{", "[") else "a text file"


def _open(path: Path, expected: str = ARTIFACT_EXPECTED):
    path = Path(path)
    if not path.is_file():
        if path.is_dir():
            raise UsageError(f"{path} is a folder, not a file; give {expected}")
        raise UsageError(f"{path} does not exist or is not a file")
    try:
        return safe_open(str(path), framework="numpy")
    except (SafetensorError, OSError, ValueError) as exc:
        kind = what_it_is(path)
        if kind is not None and kind.startswith(TRUNCATED):
            raise UsageError(f"{path} is {kind}; expected {expected}") from None
        if kind is not None:
            raise UsageError(f"{path} is not a safetensors file (it is {kind}); expected {expected}") from None
        raise UsageError(f"{path} is not a readable safetensors file ({exc}); expected {expected}") from None


def read_metadata(path: Path, expected: str = ARTIFACT_EXPECTED) -> dict[str, str]:
    with _open(path, expected) as f:
        return dict(f.metadata() or {})


def tensor_shapes(path: Path) -> dict[str, list[int]]:
    with _open(path) as f:
        return {key: list(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118 - not iterable
