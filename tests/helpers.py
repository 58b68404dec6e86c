"""Test helpers that are not fixtures."""

from __future__ import annotations

from pathlib import Path


def images_are_valid_png(path: Path) -> bool:
    """A non-empty PNG that decodes."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.verify()
        return img.format == "PNG" and path.stat().st_size > 0
    except (OSError, SyntaxError):
        return False


def wandb_history(run_file: Path) -> tuple[str, list[dict]]:
    """(run id, history rows) of an offline W&B run file (run-ID.wandb), read with W&B's own record type.

    W&B's Python reader of these files went into its Go core, so the framing is read here: a 7-byte header
    (':W&B', magic, version), then 32 KiB blocks of chunks, each with a 7-byte header (crc32, length, type: 1 full,
    2 first, 3 middle, 4 last), the block's tail padded with zeros when a chunk header does not fit."""
    import json
    import struct

    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, payload, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the block's tail: padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            break
        payload += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            records.append(record)
            payload = b""
    run_id = next(r.run.run_id for r in records if r.WhichOneof("record_type") == "run")
    rows = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]
    return run_id, rows
