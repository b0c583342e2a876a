"""Read the history rows of an offline W&B run (``run-<id>.wandb``) without the W&B service.

The file is a 7-byte header, then 32 KiB blocks of LevelDB-log-style chunks: a 7-byte
header (crc32c u32 LE, length u16 LE, type u8; FULL=1 FIRST=2 MIDDLE=3 LAST=4) and the
payload. Whole records are ``wandb_internal_pb2.Record`` messages.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

HEADER_LEN = 7
BLOCK = 32 * 1024
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path) -> list[bytes]:
    """Raw record payloads of a .wandb file, in order."""
    data = Path(path).read_bytes()
    pos, out, pending = HEADER_LEN, [], b""
    while pos + CHUNK_HEADER <= len(data):
        room = BLOCK - (pos % BLOCK)
        if room < CHUNK_HEADER:  # block tail too short for a header is padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + CHUNK_HEADER])
        if kind == 0 and length == 0:  # zero padding up to the block end
            pos += room
            continue
        payload = data[pos + CHUNK_HEADER:pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        if kind == FULL:
            out.append(payload)
        elif kind == FIRST:
            pending = payload
        elif kind == MIDDLE:
            pending += payload
        elif kind == LAST:
            out.append(pending + payload)
            pending = b""
        else:
            raise ValueError(f"{path}: unknown chunk type {kind} at byte {pos}")
    return out


def history(path) -> list[dict]:
    """The logged rows: one dict per ``history`` record, keys as logged (``part1/...``)."""
    rows = []
    for raw in records(path):
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(raw)
        if rec.WhichOneof("record_type") != "history":
            continue
        row = {}
        for item in rec.history.item:
            key = item.key or "/".join(item.nested_key)
            row[key] = json.loads(item.value_json)
        rows.append(row)
    return rows


def run_info(path) -> dict:
    """Project and config (top-level keys, values decoded) of the ``run`` record, with later
    ``config`` records merged in."""
    info = {"project": None, "config": {}}
    for raw in records(path):
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            info["project"] = rec.run.project
            updates = rec.run.config.update
        elif kind == "config":
            updates = rec.config.update
        else:
            continue
        for item in updates:
            info["config"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return info
