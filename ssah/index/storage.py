"""The saved index file: one self-checking file, written atomically.

Layout (all integers little-endian)::

    magic        8 bytes   b"SSAHIDX\\0"
    header_len   8 bytes   length of the JSON header
    header       header_len bytes of UTF-8 JSON
    header_hash  32 bytes  SHA-256 of the header bytes
    payload      the arrays, each at a 64-byte aligned offset from the payload start

The header holds ``format_version``, ``bits``, ``engine``, ``engine_options``, ``count``, the
array table (name, dtype, shape, offset, nbytes), ``payload_bytes`` and ``payload_sha256``.
String columns are stored as UTF-8 bytes plus int64 end offsets (no pickle).  A file is
written to a temporary name in the same folder, flushed to disk and renamed over the target
with ``os.replace`` (:func:`ssah.atomic.atomic_write`), so readers see the old index or the new one, never a mix.
"""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..errors import IndexFileError

MAGIC = b"SSAHIDX\x00"
FORMAT_VERSION = 1
FILE_NAME = "index.ssah"
SUFFIX = ".ssah"
ALIGN = 64


def index_file(path) -> Path:
    """The index file for ``path``: itself when it ends in ``.ssah``, else ``path/index.ssah``."""
    p = Path(path)
    return p if p.suffix == SUFFIX else p / FILE_NAME


def encode_strings(values) -> tuple[np.ndarray, np.ndarray]:
    """Strings -> (UTF-8 bytes as uint8, int64 end offsets)."""
    blobs = [str(v).encode("utf-8") for v in values]
    ends = np.cumsum([len(b) for b in blobs], dtype=np.int64) if blobs else np.zeros(0, np.int64)
    data = np.frombuffer(b"".join(blobs), dtype=np.uint8)
    return data, ends


def decode_strings(data: np.ndarray, ends: np.ndarray) -> list[str]:
    raw = data.tobytes()
    out = []
    start = 0
    for end in ends.tolist():
        out.append(raw[start:end].decode("utf-8"))
        start = end
    return out


def write_index_file(path, header: dict, arrays: dict[str, np.ndarray]) -> Path:
    """Write header + arrays to ``index_file(path)`` atomically; returns the file path."""
    target = index_file(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    table = []
    offset = 0
    ordered = []
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        offset = (offset + ALIGN - 1) // ALIGN * ALIGN
        table.append({"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape),
                      "offset": offset, "nbytes": int(arr.nbytes)})
        ordered.append((offset, arr))
        offset += arr.nbytes
    payload_bytes = offset
    digest = hashlib.sha256()
    for chunk in _payload_chunks(ordered):
        digest.update(chunk)
    header = dict(header)
    header.update({"format": "ssah-hamming-index", "format_version": FORMAT_VERSION,
                   "arrays": table, "payload_bytes": payload_bytes,
                   "payload_sha256": digest.hexdigest()})
    head = json.dumps(header, sort_keys=True).encode("utf-8")
    with atomic_write(target) as f:
        f.write(MAGIC)
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        f.write(hashlib.sha256(head).digest())
        for chunk in _payload_chunks(ordered):
            f.write(chunk)
    return target


def _payload_chunks(ordered):
    """The payload bytes in order: zero padding up to each array's offset, then the array."""
    pos = 0
    for off, arr in ordered:
        if off > pos:
            yield b"\0" * (off - pos)
        yield memoryview(arr).cast("B")
        pos = off + arr.nbytes


def read_index_file(path) -> tuple[dict, dict[str, np.ndarray], Path]:
    """Read and verify an index file; every problem is an IndexFileError naming the file."""
    target = index_file(path)
    if not target.exists():
        if Path(path).is_dir():
            raise IndexFileError(f"{path}: no {FILE_NAME} in this folder (not a saved index)")
        raise IndexFileError(f"{target}: index file not found")
    if target.is_dir():
        raise IndexFileError(f"{target}: is a folder, expected an index file")
    size = target.stat().st_size
    with open(target, "rb") as f:
        magic = f.read(len(MAGIC))
        if len(magic) < len(MAGIC):
            if MAGIC.startswith(magic) and magic:
                raise IndexFileError(f"{target}: truncated index file ({size} bytes)")
            raise IndexFileError(f"{target}: not an ssah index file (empty or foreign file)")
        if magic != MAGIC:
            raise IndexFileError(f"{target}: not an ssah index file (unknown file signature)")
        raw_len = f.read(8)
        if len(raw_len) < 8:
            raise IndexFileError(f"{target}: truncated index file ({size} bytes)")
        (head_len,) = struct.unpack("<Q", raw_len)
        if head_len > size:
            raise IndexFileError(f"{target}: truncated or corrupt index file (header length "
                                 f"{head_len} > file size {size})")
        head = f.read(head_len)
        head_hash = f.read(32)
        if len(head) < head_len or len(head_hash) < 32:
            raise IndexFileError(f"{target}: truncated index file ({size} bytes)")
        if hashlib.sha256(head).digest() != head_hash:
            raise IndexFileError(f"{target}: corrupt index file (header checksum mismatch)")
        try:
            header = json.loads(head.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise IndexFileError(f"{target}: corrupt index header ({e})") from None
        version = header.get("format_version")
        if header.get("format") != "ssah-hamming-index" or not isinstance(version, int):
            raise IndexFileError(f"{target}: not an ssah index file (unknown header)")
        if version > FORMAT_VERSION:
            raise IndexFileError(f"{target}: index format version {version} is newer than this "
                                 f"ssah supports ({FORMAT_VERSION}); upgrade ssah")
        start = len(MAGIC) + 8 + head_len + 32
        payload_bytes = int(header["payload_bytes"])
        if size < start + payload_bytes:
            raise IndexFileError(f"{target}: truncated index file ({size} bytes, expected "
                                 f"{start + payload_bytes})")
        if size > start + payload_bytes:
            raise IndexFileError(f"{target}: corrupt index file ({size - start - payload_bytes} "
                                 f"unexpected trailing bytes)")
        payload = bytearray(payload_bytes)
        view = memoryview(payload)
        got = 0
        while got < payload_bytes:
            r = f.readinto(view[got:])
            if not r:
                raise IndexFileError(f"{target}: truncated index file")
            got += r
    if hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
        raise IndexFileError(f"{target}: corrupt index file (payload checksum mismatch)")
    arrays = {}
    try:
        for entry in header["arrays"]:
            dt = np.dtype(entry["dtype"])
            shape = tuple(int(s) for s in entry["shape"])
            count = int(np.prod(shape)) if shape else 1
            off = int(entry["offset"])
            if off + count * dt.itemsize > payload_bytes or dt.hasobject:
                raise ValueError(f"array {entry['name']!r} out of bounds")
            arrays[entry["name"]] = np.frombuffer(payload, dtype=dt, count=count,
                                                  offset=off).reshape(shape)
    except (KeyError, TypeError, ValueError) as e:
        raise IndexFileError(f"{target}: corrupt index header ({e})") from None
    return header, arrays, target
