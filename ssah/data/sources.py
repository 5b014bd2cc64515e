"""Reading files out of a directory or a zip archive, and checksumming data sources.

The readers and :class:`FileImageLoader` are plain picklable objects, so a dataset built on
them can be sent to DataLoader workers (fork or spawn). A zip archive is opened lazily, once
per process: a ``ZipFile`` inherited across ``fork`` would share its file offset with the
parent, so a reader that sees a new process id reopens the archive.
"""
from __future__ import annotations

import hashlib
import os
import zipfile
from typing import Iterable, Sequence

from ..errors import DataError
from .decode import DEFAULT_MAX_PIXELS, decode_image

_MB = 1 << 20


def missing_path_error(what: str, path, layout: str) -> DataError:
    """A DataError naming a missing path and sketching the layout the loader expects."""
    return DataError(f"{what} not found: {path}\nexpected layout:\n{layout.rstrip()}")


def require_path(what: str, path, layout: str) -> str:
    if path is None:
        raise DataError(f"{what}: no path given\nexpected layout:\n{layout.rstrip()}")
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if not os.path.exists(path):
        raise missing_path_error(what, path, layout)
    return path


# ----------------------------------------------------------------------------- checksums

def file_checksum(path: str) -> str:
    """Size + mtime + sha256 of the file (of its first and last MB when it is over 2 MB)."""
    try:
        st = os.stat(path)
        h = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}:".encode())
        with open(path, "rb") as f:
            if st.st_size <= 2 * _MB:
                h.update(f.read())
            else:
                h.update(f.read(_MB))
                f.seek(-_MB, os.SEEK_END)
                h.update(f.read(_MB))
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    return h.hexdigest()


def stat_files(root: str, relpaths: Iterable[str]) -> tuple[list[tuple[str, int, int]], list[str]]:
    """``(relpath, size, mtime_ns)`` of each file under ``root``, and the relpaths missing."""
    stats, missing = [], []
    for rel in relpaths:
        try:
            st = os.stat(os.path.join(root, rel))
        except OSError:
            missing.append(rel)
            continue
        stats.append((rel, st.st_size, st.st_mtime_ns))
    return stats, missing


def tree_checksum(stats: Iterable[tuple[str, int, int]]) -> str:
    """A hash of the sorted ``(relpath, size, mtime_ns)`` list of a tree of files."""
    h = hashlib.sha256()
    for rel, size, mtime in sorted(stats):
        h.update(f"{rel}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))   # any file name
    return h.hexdigest()


def combine_checksums(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode("utf-8", "surrogateescape")).hexdigest()


def bytes_checksum(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(memoryview(a).cast("B") if not isinstance(a, bytes) else a)
    return h.hexdigest()


# ----------------------------------------------------------------------------- readers

class DirReader:
    """Reads files under a directory by relative path."""

    def __init__(self, root: str):
        self.root = root

    def describe(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def read(self, rel: str) -> bytes:
        path = os.path.join(self.root, rel)
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise DataError(f"image file not found: {path}") from None
        except OSError as e:
            raise DataError(f"cannot read image {path}: {e.strerror or e}") from None


class ZipReader:
    """Reads members of a zip archive in place, reopening the archive in each new process."""

    def __init__(self, path: str):
        self.path = path
        self._zf: zipfile.ZipFile | None = None
        self._pid: int | None = None

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])

    def _archive(self) -> zipfile.ZipFile:
        pid = os.getpid()
        zf = self._zf
        if zf is not None and self._pid == pid:
            return zf
        # First use in this process (or first after a fork): open a private handle. The one
        # inherited from the parent is dropped, not closed. Two threads racing here at worst
        # open the archive twice; reads through one ZipFile are thread-safe.
        try:
            zf = zipfile.ZipFile(self.path)
        except FileNotFoundError:
            raise DataError(f"zip archive not found: {self.path}") from None
        except (OSError, zipfile.BadZipFile) as e:
            raise DataError(f"cannot open zip archive {self.path}: {e}") from None
        self._zf, self._pid = zf, pid
        return zf

    def namelist(self) -> list[str]:
        return self._archive().namelist()

    def describe(self, member: str) -> str:
        return f"{self.path}:{member}"

    def read(self, member: str) -> bytes:
        try:
            return self._archive().read(member)
        except KeyError:
            raise DataError(f"member missing from zip archive: {self.describe(member)}") from None
        except (OSError, zipfile.BadZipFile, EOFError, ValueError) as e:
            raise DataError(f"cannot read {self.describe(member)}: {e}") from None

    def close(self):
        if self._zf is not None and self._pid == os.getpid():
            self._zf.close()
        self._zf = None


class FileImageLoader:
    """``loader(i)`` -> the decoded image of file ``relpaths[i]`` read through ``reader``."""

    def __init__(self, reader, relpaths: Sequence[str], mode: str = "RGB",
                 max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.reader = reader
        self.relpaths = list(relpaths)
        self.mode = mode
        self.max_pixels = max_pixels

    def __call__(self, i: int):
        rel = self.relpaths[i]
        return decode_image(self.reader.read(rel), self.reader.describe(rel), self.mode,
                            self.max_pixels)


class ArrayLoader:
    """``loader(i)`` -> ``images[i]``, a uint8 array."""

    def __init__(self, images):
        self.images = images

    def __call__(self, i: int):
        return self.images[i]
