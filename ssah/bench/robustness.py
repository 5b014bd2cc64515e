"""``ssah bench robustness``: feed the loaders, ``ssah encode``, ``ssah index build`` and
``ssah search`` with broken and unusual inputs and record what each one does.

Every case runs the command line in this process (``ssah.cli.main``) on files made in a
temporary folder, and gets one outcome:

- ``ok``: exit 0 and the output written;
- ``skipped``: exit 0 under ``--skip-bad``, the bad image counted (the codes file lists it in
  its ``skipped`` array, and the command says how many);
- ``error``: exit 2 with exactly one ``ssah: error:`` line, no traceback, and neither the
  output nor any temp file left behind;
- ``FAIL: ...``: anything else (an exception escaping ``main``, a traceback, another exit
  code, output left behind after an error, a printed name that cannot be encoded, or over
  256 MB more peak memory, e.g. from decoding a decompression bomb).

``--out results/robustness/README.md`` writes the table; the exit code is 1 when any case
does not give its expected outcome. ``tests/test_fuzz.py`` runs the same cases.
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import re
import resource
import shutil
import struct
import sys
import tempfile
import time
import traceback
import warnings
import zipfile
import zlib
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

#: the non-UTF-8 file name of the ``non-utf8-name`` image (Latin-1 e-acute)
NON_UTF8_NAME = os.fsdecode(b"caf\xe9.jpg")
MEMORY_LIMIT_MB = 256


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------
def _rgb(seed: int, size=(16, 16)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h, w = size
    base = rng.integers(40, 216, size=3)
    yy, xx = np.mgrid[0:h, 0:w]
    return np.clip(base + (yy * 3 + xx)[:, :, None] * rng.integers(-1, 2, size=3), 0, 255
                   ).astype(np.uint8)


def _save(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def good_jpeg(seed: int) -> bytes:
    return _save(Image.fromarray(_rgb(seed)), "JPEG")


def huge_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid 1-bit PNG of width x height black pixels, compressed to about 50 KB without
    ever holding the image: the decoder must refuse it from the header."""
    row = b"\x00" * (1 + (width + 7) // 8)   # filter byte + packed bits
    co = zlib.compressobj(9)
    idat = b"".join(co.compress(row) for _ in range(height)) + co.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _alpha_png() -> bytes:
    a = np.dstack([_rgb(7), np.linspace(0, 255, 256).astype(np.uint8).reshape(16, 16)])
    return _save(Image.fromarray(a, mode="RGBA"), "PNG")


@dataclass
class ImageKind:
    name: str
    filename: str
    data: Callable[[], bytes]
    bad: bool   # True: undecodable or refused (error, or counted skip with --skip-bad)
    input: str


IMAGE_KINDS = [
    ImageKind("random-bytes", "bad.jpg", lambda: np.random.default_rng(1).bytes(777), True,
              "777 random bytes named .jpg"),
    ImageKind("zero-byte", "empty.jpg", lambda: b"", True, "an empty .jpg"),
    ImageKind("huge", "huge.png", None, True,
              "20000x20000 1-bit PNG (about 50 KB, 400 megapixels)"),
    ImageKind("1x1", "tiny.jpg", lambda: _save(Image.fromarray(_rgb(3, (1, 1))), "JPEG"), False,
              "1x1 JPEG"),
    ImageKind("grayscale", "gray.jpg",
              lambda: _save(Image.fromarray(_rgb(4)).convert("L"), "JPEG"), False, "L JPEG"),
    ImageKind("cmyk", "cmyk.jpg",
              lambda: _save(Image.fromarray(_rgb(5)).convert("CMYK"), "JPEG"), False, "CMYK JPEG"),
    ImageKind("palette", "palette.png",
              lambda: _save(Image.fromarray(_rgb(6)).convert("P", palette=Image.Palette.ADAPTIVE),
                            "PNG"), False, "palette (P) PNG"),
    ImageKind("alpha", "alpha.png", _alpha_png, False, "RGBA PNG, alpha 0..255"),
    ImageKind("non-utf8-name", NON_UTF8_NAME, lambda: good_jpeg(8), False,
              "valid JPEG named b'caf\\xe9.jpg' (not UTF-8)"),
]


class Env:
    """Inputs shared by the cases, made once: a small checkpoint, the huge PNG, an index."""

    def __init__(self, root: Path):
        self.root = root
        self._huge = None
        self._ckpt = None
        self._index = None

    def huge(self) -> bytes:
        if self._huge is None:
            self._huge = huge_png()
        return self._huge

    def image_bytes(self, kind: ImageKind) -> bytes:
        return self.huge() if kind.name == "huge" else kind.data()

    def checkpoint(self) -> Path:
        """A randomly initialised small-cnn H-Net (16 bits, 16x16 RGB input)."""
        if self._ckpt is None:
            import torch
            from ..config import load_config
            from ..train import build_hnet
            from ..train.checkpoint import save_checkpoint
            cfg = load_config(None, ["model.backbone=small-cnn", "model.bits=16",
                                     "data.image_size=16", "data.channels=3"])
            torch.manual_seed(0)
            hnet = build_hnet(cfg.model, 3)
            state = {"hnet": hnet.state_dict(), "config": cfg.to_dict(), "in_channels": 3,
                     "input_size": 16, "epoch": 0, "bits": 16, "backbone": "small-cnn",
                     "variant": cfg.train.variant}
            self._ckpt = save_checkpoint(state, self.root / "model" / "checkpoints", 0)
        return self._ckpt

    def index(self) -> Path:
        """An index of 6 codes whose names include a non-UTF-8 file name."""
        if self._index is None:
            from ..cli import main
            codes = self.root / "index-codes.npz"
            write_codes(codes, n=6, names=["a.jpg", "b.jpg", NON_UTF8_NAME, "d.jpg", "e.jpg",
                                            "f.jpg"])
            out = self.root / "index"
            with redirect_stdout(io.StringIO()):
                assert main(["index", "build", "--codes", str(codes), "--out", str(out)]) == 0
            self._index = out
        return self._index


def write_codes(path: Path, n: int = 6, nbits: int = 16, **override) -> Path:
    """A codes .npz as ``ssah encode`` writes it; ``override`` replaces (None: drops) arrays."""
    from ..index.packing import pack_codes
    rng = np.random.default_rng(0)
    arrays = {"codes": pack_codes(rng.integers(0, 2, (n, nbits))), "bits": np.int64(nbits),
              "ids": np.arange(n, dtype=np.int64), "labels": np.arange(n) % 3,
              "names": np.asarray([f"{i}.jpg" for i in range(n)])}
    for k, v in override.items():
        if v is None:
            arrays.pop(k, None)
        else:
            arrays[k] = np.asarray(v)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


# ---------------------------------------------------------------------------------------------
# dataset layouts: 4 good images in 2 classes, plus one file of the kind under test
# ---------------------------------------------------------------------------------------------
def _write(path: Path | str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _tree(root: Path, top: list[str], bad_dir: str, name: str, data: bytes) -> None:
    for j, d in enumerate(top):
        for k in range(2):
            _write(root / d / f"{k}.jpg", good_jpeg(10 * j + k))
    _write(os.path.join(root, bad_dir, name), data)


def layout_folder(work, name, data):
    root = work / "folder"
    _tree(root, ["a", "b"], "a", name, data)
    return ["--dataset", "folder", "--path", str(root)]


def layout_cifar_tree(work, name, data):
    root = work / "cifar"
    _tree(root, ["train/a", "train/b", "test/a", "test/b"], "train/a", name, data)
    return ["--dataset", "cifar10", "--path", str(root)]


def layout_cifar_zip(work, name, data):
    tree = work / "cifar-tree"
    raw = os.fsencode(name)
    placeholder = "x" * (len(raw) - 4) + raw[-4:].decode("ascii")   # same length, ASCII
    _tree(tree, ["train/a", "train/b", "test/a", "test/b"], "train/a", placeholder, data)
    zpath = work / "cifar10-jpg.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_STORED) as zf:
        for dirpath, _, files in sorted(os.walk(tree)):
            for f in sorted(files):
                full = os.path.join(dirpath, f)
                zf.write(full, "cifar10-jpg/" + os.path.relpath(full, tree).replace(os.sep, "/"))
    if raw != placeholder.encode():   # give the member its non-UTF-8 name, byte for byte
        blob = zpath.read_bytes()
        zpath.write_bytes(blob.replace(b"train/a/" + placeholder.encode(), b"train/a/" + raw))
    return ["--dataset", "cifar10", "--path", str(zpath)]


def layout_list(work, name, data):
    root = work / "nus"
    lines = []
    for k in range(4):
        rel = f"images/{k}.jpg"
        _write(root / rel, good_jpeg(20 + k))
        lines.append(f"{rel} {k % 2} {1 - k % 2}".encode())
    _write(os.path.join(root, "images", name), data)
    lines.append(b"images/" + os.fsencode(name) + b" 1 1")
    _write(root / "list.txt", b"\n".join(lines) + b"\n")
    return ["--dataset", "list", "--path", str(root / "list.txt"), "--root", str(root)]


def layout_list_wrong_labels(work, name, data):
    args = layout_list(work, name, data)
    p = Path(args[3])
    lines = p.read_bytes().splitlines()
    lines[2] += b" 0"   # line 3 has 3 label columns, the others 2
    p.write_bytes(b"\n".join(lines) + b"\n")
    return args


def layout_cub(work, name, data):
    root = work / "CUB_200_2011"
    rows = []
    for c, cls in enumerate(["001.a", "002.b"], 1):
        for k in range(2):
            rel = f"{cls}/{k}.jpg".encode()
            _write(root / "images" / os.fsdecode(rel), good_jpeg(30 + 2 * c + k))
            rows.append((rel, c, k))
    bad = b"001.a/" + os.fsencode(name)
    _write(os.path.join(root, "images", os.fsdecode(bad)), data)
    rows.append((bad, 1, 1))
    _write(root / "images.txt", b"".join(b"%d %s\n" % (i, r) for i, (r, _, _) in enumerate(rows, 1)))
    _write(root / "image_class_labels.txt",
           b"".join(b"%d %d\n" % (i, c) for i, (_, c, _) in enumerate(rows, 1)))
    _write(root / "train_test_split.txt",
           b"".join(b"%d %d\n" % (i, t) for i, (_, _, t) in enumerate(rows, 1)))
    return ["--dataset", "cub", "--path", str(root)]


def layout_dogs(work, name, data):
    import scipy.io
    root = work / "dogs"
    train, test = [], []
    for c, folder in enumerate(["n01-a", "n02-b"], 1):
        for k in range(2):
            rel = f"{folder}/{k}.jpg"
            _write(root / "Images" / rel, good_jpeg(40 + 2 * c + k))
            (train if k == 0 else test).append((rel, c))
    _write(root / "Images" / "n01-a" / name, data)
    train.append((f"n01-a/{name}", 1))
    for fname, items in (("train_list.mat", train), ("test_list.mat", test)):
        cell = np.empty((len(items), 1), dtype=object)
        for k, (f, _) in enumerate(items):
            cell[k, 0] = np.array([f])
        scipy.io.savemat(root / fname, {"file_list": cell, "annotation_list": cell,
                                        "labels": np.array([[c] for _, c in items], float)})
    return ["--dataset", "dogs", "--path", str(root)]


LOADERS = {"folder": layout_folder, "cifar-tree": layout_cifar_tree, "cifar-zip": layout_cifar_zip,
           "list": layout_list, "cub": layout_cub, "dogs": layout_dogs}
#: Stanford Dogs lists its files in MATLAB .mat files, whose strings are Unicode text: a
#: non-UTF-8 file name cannot be listed there, so that case does not apply.
NOT_APPLICABLE = {("dogs", "non-utf8-name")}


# ---------------------------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    target: str
    input: str
    expect: str                                        # ok | skipped | error
    make: Callable[[Path, Env], tuple[list[str], Path | None]]   # argv, output path


def _encode_case(layout, kind: ImageKind, skip: bool):
    def make(work: Path, env: Env):
        args = layout(work, kind.filename, env.image_bytes(kind))
        out = work / "out" / "codes.npz"
        argv = ["encode", "--checkpoint", str(env.checkpoint()), *args, "--out", str(out),
                "--cache-dir", str(work / "cache"), "--quiet", "--device", "cpu"]
        return argv + (["--skip-bad"] if skip else []), out
    return make


def _cases_loaders() -> list[Case]:
    cases = []
    for loader, layout in LOADERS.items():
        for kind in IMAGE_KINDS:
            if (loader, kind.name) in NOT_APPLICABLE:
                continue
            modes = [False, True] if kind.bad else [False]
            for skip in modes:
                expect = ("skipped" if skip else "error") if kind.bad else "ok"
                flag = " --skip-bad" if skip else ""
                cases.append(Case(f"{loader}/{kind.name}{'/skip-bad' if skip else ''}", loader,
                                  kind.input + flag, expect, _encode_case(layout, kind, skip)))
    good = IMAGE_KINDS[3]
    cases.append(Case("list/wrong-label-count", "list", "line 3 has 3 label columns, others 2",
                      "error", _encode_case(layout_list_wrong_labels, good, False)))
    return cases


def _encode_argv(work, env, *extra, checkpoint=None):
    args = layout_folder(work, "tiny.jpg", good_jpeg(99))
    out = work / "out" / "codes.npz"
    return ["encode", "--checkpoint", str(checkpoint or env.checkpoint()), *args, "--out", str(out),
            "--cache-dir", str(work / "cache"), "--quiet", "--device", "cpu", *extra], out


def _bad_checkpoint(kind):
    def make(work, env):
        p = work / "model.pt"
        good = env.checkpoint().read_bytes()
        p.write_bytes({"random": np.random.default_rng(2).bytes(4096), "empty": b"",
                       "truncated": good[:len(good) // 2]}[kind])
        return _encode_argv(work, env, checkpoint=p)
    return make


def _all_bad(work, env):
    root = work / "folder"
    for c in ("a", "b"):
        _write(root / c / "x.jpg", b"not an image")
    out = work / "out" / "codes.npz"
    return ["encode", "--checkpoint", str(env.checkpoint()), "--dataset", "folder", "--path",
            str(root), "--out", str(out), "--cache-dir", str(work / "cache"), "--quiet",
            "--skip-bad"], out


def _out_is_dir(work, env):
    argv, out = _encode_argv(work, env)
    out.mkdir(parents=True)
    argv[argv.index("--out") + 1] = str(out)
    return argv, None   # the folder itself must survive; checked as "no file written"


def _cases_encode() -> list[Case]:
    return [
        Case("encode/checkpoint-random-bytes", "encode", "--checkpoint: 4 KB random bytes", "error",
             _bad_checkpoint("random")),
        Case("encode/checkpoint-empty", "encode", "--checkpoint: empty file", "error",
             _bad_checkpoint("empty")),
        Case("encode/checkpoint-truncated", "encode", "--checkpoint: first half of a checkpoint",
             "error", _bad_checkpoint("truncated")),
        Case("encode/all-images-bad", "encode", "every image unreadable, --skip-bad", "error",
             _all_bad),
        Case("encode/shards-0", "encode", "--shards 0", "error",
             lambda w, e: _encode_argv(w, e, "--shards", "0")),
        Case("encode/shard-index-out-of-range", "encode", "--shards 2 --shard-index 2", "error",
             lambda w, e: _encode_argv(w, e, "--shards", "2", "--shard-index", "2")),
        Case("encode/more-shards-than-images", "encode", "--shards 50 --shard-index 0 (5 images)",
             "error", lambda w, e: _encode_argv(w, e, "--shards", "50", "--shard-index", "0")),
        Case("encode/out-is-a-directory", "encode", "--out names an existing folder", "error",
             _out_is_dir),
        Case("encode/dataset-missing", "encode", "--path that does not exist", "error",
             lambda w, e: (["encode", "--checkpoint", str(e.checkpoint()), "--dataset", "folder",
                            "--path", str(w / "nope"), "--out", str(w / "out.npz")], w / "out.npz")),
    ]


def _codes_case(**override):
    def make(work, env):
        codes = write_codes(work / "codes.npz", **override)
        out = work / "idx"
        return ["index", "build", "--codes", str(codes), "--out", str(out)], out
    return make


def _raw_codes_case(data_fn):
    def make(work, env):
        codes = work / "codes.npz"
        codes.write_bytes(data_fn(work))
        out = work / "idx"
        return ["index", "build", "--codes", str(codes), "--out", str(out)], out
    return make


def _truncated_npz(work):
    p = write_codes(work / "whole.npz")
    data = p.read_bytes()
    return data[: len(data) // 2]


def _two_shards(bits_b=16, ids_b=(3, 4, 5)):
    def make(work, env):
        a = write_codes(work / "a.npz", n=3, ids=[0, 1, 2])
        b = write_codes(work / "b.npz", n=3, nbits=bits_b, ids=list(ids_b))
        out = work / "idx"
        return ["index", "build", "--codes", str(a), str(b), "--out", str(out)], out
    return make


def _cases_index() -> list[Case]:
    nan = np.full((6, 2), np.nan)
    return [
        Case("index/good", "index build", "6 packed 16-bit codes", "ok", _codes_case()),
        Case("index/non-utf8-names", "index build", "names include b'caf\\xe9.jpg'", "ok",
             _codes_case(names=["a", "b", NON_UTF8_NAME, "d", "e", "f"])),
        Case("index/nan-codes", "index build", "codes: float (6, 2) all NaN", "error",
             _codes_case(codes=nan)),
        Case("index/nan-codes-unpacked", "index build", "codes: float (6, 16) with a NaN", "error",
             _codes_case(codes=np.where(np.eye(6, 16) > 0, np.nan, 1.0))),
        Case("index/nan-bits", "index build", "bits: NaN", "error", _codes_case(bits=np.nan)),
        Case("index/nan-ids", "index build", "ids: float with NaN", "error",
             _codes_case(ids=[0, 1, np.nan, 3, 4, 5])),
        Case("index/random-bytes", "index build", "codes .npz of 1 KB random bytes", "error",
             _raw_codes_case(lambda w: np.random.default_rng(3).bytes(1024))),
        Case("index/empty-file", "index build", "codes .npz of 0 bytes", "error",
             _raw_codes_case(lambda w: b"")),
        Case("index/truncated", "index build", "first half of a codes .npz", "error",
             _raw_codes_case(_truncated_npz)),
        Case("index/no-codes-array", "index build", "npz without 'codes'", "error",
             _codes_case(codes=None)),
        Case("index/wrong-width", "index build", "16 bits but 3 bytes per code", "error",
             _codes_case(codes=np.zeros((6, 3), np.uint8))),
        Case("index/duplicate-ids", "index build", "ids 0 0 1 2 3 4", "error",
             _codes_case(ids=[0, 0, 1, 2, 3, 4])),
        Case("index/labels-length", "index build", "4 labels for 6 codes", "error",
             _codes_case(labels=[0, 1, 2, 0])),
        Case("index/shards-share-ids", "index build", "two shards, both hold id 2", "error",
             _two_shards(ids_b=(2, 3, 4))),
        Case("index/shards-bits-differ", "index build", "16-bit and 24-bit shards", "error",
             _two_shards(bits_b=24)),
        Case("index/shards-good", "index build", "two shards, ids 0..2 and 3..5", "ok",
             _two_shards()),
    ]


def _search(*extra, index=None):
    def make(work, env):
        idx = index(work, env) if index else env.index()
        return ["search", "--index", str(idx), *extra], None
    return make


def _corrupt_index(kind):
    def make(work, env):
        src = env.index()
        dst = work / "index"
        shutil.copytree(src, dst)
        f = next(dst.glob("*.ssah"))
        data = f.read_bytes()
        f.write_bytes({"truncated": data[: len(data) // 2],
                       "random": np.random.default_rng(4).bytes(len(data)), "empty": b""}[kind])
        return dst
    return make


def _image_query(kind):
    def make(work, env):
        p = work / kind.filename
        p.write_bytes(env.image_bytes(kind))
        return ["search", "--index", str(env.index()), "--image", str(p), "--checkpoint",
                str(env.checkpoint()), "--device", "cpu"], None
    return make


def _cases_search() -> list[Case]:
    kinds = {k.name: k for k in IMAGE_KINDS}
    return [
        Case("search/by-id", "search", "--id 0, names include b'caf\\xe9.jpg', table output",
             "ok", _search("--id", "0", "-k", "6")),
        Case("search/by-id-json", "search", "--id 2 --json", "ok", _search("--id", "2", "--json")),
        Case("search/missing-index", "search", "--index that does not exist", "error",
             _search("--id", "0", index=lambda w, e: w / "nope")),
        Case("search/index-truncated", "search", "index.ssah cut in half", "error",
             _search("--id", "0", index=_corrupt_index("truncated"))),
        Case("search/index-random-bytes", "search", "index.ssah of random bytes", "error",
             _search("--id", "0", index=_corrupt_index("random"))),
        Case("search/index-empty", "search", "index.ssah of 0 bytes", "error",
             _search("--id", "0", index=_corrupt_index("empty"))),
        Case("search/code-not-binary", "search", "--code 01x1...", "error",
             _search("--code", "01x1" * 4)),
        Case("search/code-wrong-length", "search", "--code of 5 bits for 16-bit codes", "error",
             _search("--code", "01010")),
        Case("search/code-nan", "search", "--code nan", "error", _search("--code", "nan")),
        Case("search/unknown-id", "search", "--id 999", "error", _search("--id", "999")),
        Case("search/k-zero", "search", "-k 0", "error", _search("--id", "0", "-k", "0")),
        Case("search/k-negative", "search", "-k -3", "error", _search("--id", "0", "-k", "-3")),
        Case("search/radius-negative", "search", "--radius -1", "error",
             _search("--id", "0", "--radius", "-1")),
        Case("search/image-random-bytes", "search", "--image: random bytes named .jpg", "error",
             _image_query(kinds["random-bytes"])),
        Case("search/image-huge", "search", "--image: 20000x20000 PNG", "error",
             _image_query(kinds["huge"])),
        Case("search/image-cmyk", "search", "--image: CMYK JPEG", "ok", _image_query(kinds["cmyk"])),
    ]


def all_cases() -> list[Case]:
    return _cases_loaders() + _cases_encode() + _cases_index() + _cases_search()


# ---------------------------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------------------------
@dataclass
class Result:
    case: Case
    outcome: str
    detail: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.outcome == self.case.expect


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # KB on Linux


def _leftovers(work: Path) -> list[str]:
    out = []
    for dirpath, dirnames, files in os.walk(work):
        for f in files + dirnames:
            if f.startswith(".tmp") or f.endswith(".tmp") or ".tmp." in f or ".tmp-" in f:
                out.append(os.path.relpath(os.path.join(dirpath, f), work))
    return out


def _skipped_count(out: Path | None) -> int:
    if out is None or not out.is_file() or out.suffix != ".npz":
        return 0
    with np.load(out, allow_pickle=False) as z:
        return len(z["skipped"]) if "skipped" in z.files else 0


def _summary(text: str) -> str:
    """One line about a command's output: its message, or what a search printed."""
    lines = text.splitlines()
    if text.startswith("{"):
        import json
        return f"JSON with {len(json.loads(text).get('results', []))} results"
    if lines and lines[0].startswith("rank"):
        return f"table of {len(lines) - 1} results (names: {', '.join(l.split()[-1] for l in lines[1:])})"
    return lines[-1] if lines else ""


def run_case(case: Case, base: Path, env: Env) -> Result:
    """Run one case in its own folder under ``base``; the outcome as the module doc defines it."""
    from ..cli import main
    work = base / re.sub(r"[^A-Za-z0-9._-]+", "_", case.name)
    work.mkdir(parents=True)
    try:
        argv, out = case.make(work, env)
    except Exception as e:   # noqa: BLE001 - a broken case is reported, not raised
        return Result(case, "FAIL: setup", f"{type(e).__name__}: {e}", 0.0)
    before = set(_leftovers(work))
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")   # a UTF-8 terminal
    stderr = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace")
    peak = _peak_mb()
    t0 = time.perf_counter()
    rc, crash = None, None
    try:
        with redirect_stdout(stdout), redirect_stderr(stderr), warnings.catch_warnings():
            warnings.simplefilter("always")
            try:
                rc = main(argv)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
    except SystemExit as e:   # argparse rejects a flag: exit 2 with its usage line
        rc = e.code
    except BaseException as e:   # noqa: BLE001 - anything escaping main is a failure
        if isinstance(e, KeyboardInterrupt):
            raise
        crash = "".join(traceback.format_exception_only(type(e), e)).strip()
    seconds = time.perf_counter() - t0
    err = stderr.buffer.getvalue().decode("utf-8", "replace")
    grew = _peak_mb() - peak
    error_lines = [line for line in err.splitlines() if re.match(r"^ssah[\w ]*: error:", line)]
    detail = error_lines[0] if error_lines else ""
    if crash:
        outcome, detail = "FAIL: exception", crash
    elif "Traceback" in err:
        outcome, detail = "FAIL: traceback", err.strip().splitlines()[-1]
    elif grew > MEMORY_LIMIT_MB:
        outcome, detail = "FAIL: memory", f"peak memory grew by {grew:.0f} MB"
    elif rc == 0:
        if out is not None and not out.exists():
            outcome, detail = "FAIL: no output", f"exit 0 but {out.name} missing"
        else:
            n = _skipped_count(out)
            outcome = "skipped" if n else "ok"
            text = stdout.buffer.getvalue().decode("utf-8", "replace").strip()
            detail = f"{n} image(s) skipped and counted" if n else _summary(text)
    elif rc == 2:
        left = sorted(set(_leftovers(work)) - before)
        if len(error_lines) != 1:
            outcome, detail = "FAIL: message", f"{len(error_lines)} error lines: {err[:200]!r}"
        elif out is not None and out.exists():
            outcome, detail = "FAIL: output left", f"{out.name} exists after the error"
        elif left:
            outcome, detail = "FAIL: temp file left", ", ".join(left)
        else:
            outcome = "error"
    else:
        outcome, detail = "FAIL: exit code", f"exit {rc}: {err.strip()[-200:]}"
    detail = detail.replace(str(work), "…").replace(str(env.root), "…")
    return Result(case, outcome, detail, seconds)


def run(cases: list[Case], keep: Path | None = None, progress=None) -> list[Result]:
    """Run ``cases`` in a temporary folder (kept at ``keep`` when given)."""
    base = Path(tempfile.mkdtemp(prefix="ssah-robustness-")) if keep is None else Path(keep)
    base.mkdir(parents=True, exist_ok=True)
    env = Env(base / "_shared")
    env.root.mkdir(exist_ok=True)
    results = []
    try:
        for case in cases:
            results.append(run_case(case, base, env))
            if progress:
                progress(results[-1])
    finally:
        if keep is None:
            shutil.rmtree(base, ignore_errors=True)
    return results


#: what the first run of the suite found (all fixed; the cases stay as regression tests)
FIXED = [
    "a non-UTF-8 file name crashed the folder and CIFAR-tree loaders (UnicodeEncodeError while "
    "hashing ids for the cache key and checksum); hashes now take the name's bytes",
    "the list and CUB loaders refused a non-UTF-8 name in their text files (`not a UTF-8 text "
    "file`); they now read undecodable bytes as the file system names them",
    "a codes file whose names are not valid UTF-8 crashed `ssah index build`; such names are "
    "stored with `\\xNN` escapes",
    "`ssah encode --out` naming a folder ended in an IsADirectoryError traceback",
    "`ssah search -k 0` silently returned 10 results; `-k` below 1 and a negative `--radius` are "
    "now errors",
    "undecodable images were reported as `cannot identify image file <_io.BytesIO object at "
    "0x...>`; now `not a recognised image format`, and an empty file `the file is empty`",
    "a truncated codes file left its file handle open (ResourceWarning)",
]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def report(results: list[Result], command: str) -> str:
    counts: dict[str, int] = {}
    for r in results:
        counts[r.outcome] = counts.get(r.outcome, 0) + 1
    failed = [r for r in results if not r.passed]
    targets: dict[str, dict[str, int]] = {}
    for r in results:
        t = targets.setdefault(r.case.target, {})
        t[r.outcome] = t.get(r.outcome, 0) + 1
    lines = [
        "# Robustness: bad inputs",
        "",
        "Produced by",
        "",
        "```sh",
        command,
        "```",
        "",
        f"on {platform.machine()} Linux, Python {platform.python_version()} "
        f"({time.strftime('%Y-%m-%d')}). Each case runs the command line (`ssah.cli.main`) on "
        "files made for it; `tests/test_fuzz.py` runs the same cases "
        "(`ssah/bench/robustness.py`).",
        "",
        "Outcomes: **ok** (exit 0, output written); **skipped** (exit 0 with `--skip-bad`, the "
        "bad image counted: the command prints how many and the codes file lists them in its "
        "`skipped` array); **error** (exit 2, exactly one `ssah: error:` line naming the file, "
        "line or flag, no traceback, no output and no temp file left behind); anything else "
        f"is a failure, and so is a case that raises peak memory by more than {MEMORY_LIMIT_MB} MB "
        "(the 20000x20000 PNG is refused from its header, never decoded).",
        "",
        f"**{len(results)} cases: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        + f"; {len(results) - len(failed)} as expected, {len(failed)} not.**",
        "",
        "| target | ok | skipped | error | other |",
        "|---|---|---|---|---|",
    ]
    for t, c in targets.items():
        other = sum(v for k, v in c.items() if k not in ("ok", "skipped", "error"))
        lines.append(f"| {t} | {c.get('ok', 0)} | {c.get('skipped', 0)} | {c.get('error', 0)} "
                     f"| {other} |")
    lines += ["", "Found by the first run of these cases, and fixed:", ""]
    lines += [f"- {f}" for f in FIXED]
    lines += ["", "Images tried in every loader (4 good images in 2 classes, plus this one); "
              "the bad ones once without and once with `--skip-bad`:", ""]
    lines += [f"- `{k.name}`: {k.input}" for k in IMAGE_KINDS]
    lines += ["", "Stanford Dogs lists its files in MATLAB `.mat` files, whose strings are "
              "Unicode: a non-UTF-8 name cannot be listed there, so that case does not apply.",
              "", "| case | input | expected | outcome | message / output |", "|---|---|---|---|---|"]
    for r in results:
        mark = "" if r.passed else " **(unexpected)**"
        lines.append(f"| `{r.case.name}` | {_cell(r.case.input)} | {r.case.expect} | "
                     f"{r.outcome}{mark} | {_cell(r.detail)[:160]} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="ssah bench robustness", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="write the markdown table here (default: print it)")
    p.add_argument("--only", action="append", default=[],
                   help="run only cases whose name contains this (repeatable)")
    p.add_argument("--keep", help="make the inputs in this folder and keep them")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    args = p.parse_args(argv)
    cases = all_cases()
    if args.only:
        cases = [c for c in cases if any(s in c.name for s in args.only)]
    if args.list:
        for c in cases:
            print(f"{c.name:45s} {c.expect:8s} {c.input}")
        return 0
    import logging
    logger = logging.getLogger("ssah")
    level = logger.level
    logger.setLevel(logging.ERROR)   # skip warnings are counted, not shown

    def progress(r: Result):
        flag = "" if r.passed else "   <-- expected " + r.case.expect
        print(f"{r.outcome:10s} {r.seconds:5.2f}s  {r.case.name}{flag}", file=sys.stderr)
    try:
        results = run(cases, keep=args.keep, progress=progress)
    finally:
        logger.setLevel(level)
    command = "python -m ssah bench robustness" + "".join(f" --only {s}" for s in args.only) \
        + (f" --out {args.out}" if args.out else "")
    text = report(results, command)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text)
    bad = [r for r in results if not r.passed]
    print(f"{len(results)} cases, {len(results) - len(bad)} as expected, {len(bad)} not",
          file=sys.stderr)
    return 1 if bad else 0
