"""Command-line sub-commands: ``ssah index build|add|remove|stats`` and ``ssah search``.

:func:`register` adds them to the top-level argparse sub-parsers; each sets ``func`` (taking
``args``, returning an exit code).  User errors raise :class:`~ssah.errors.SSAHError`.
Search by image is a hook: :func:`search_command` takes ``encode_image(path) -> code``.
"""
from __future__ import annotations

import argparse
import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import DataError, SSAHError

ENGINE_CHOICES = ("flat", "ivf", "mih", "milvus")


# ---------------------------------------------------------------------------------------------
# codes files written by ``ssah encode``
# ---------------------------------------------------------------------------------------------
def read_codes_file(path) -> dict:
    """Load a codes ``.npz``: packed ``codes``, ``bits``; optional ``ids``, ``labels``,
    ``paths``, ``names``.  Returns {"packed", "bits", "ids" or None, "metadata"}."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: codes file not found")
    try:
        with open(p, "rb") as f, np.load(f, allow_pickle=False) as z:   # closed on errors too
            data = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile / format errors
        raise DataError(f"{p}: not a readable codes .npz ({e})") from None
    for key in ("codes", "bits"):
        if key not in data:
            raise DataError(f"{p}: no {key!r} array (expected a codes file from `ssah encode`)")
    try:
        bits = int(np.asarray(data["bits"]).reshape(()))
    except (TypeError, ValueError):
        raise DataError(f"{p}: 'bits' must be one integer") from None
    packed = np.asarray(data["codes"])
    if bits < 1 or packed.ndim != 2 or packed.shape[1] != (bits + 7) // 8 \
            or packed.dtype != np.uint8:
        raise DataError(f"{p}: 'codes' {packed.dtype} {packed.shape} is not packed {bits}-bit "
                        f"codes (expected uint8 (n, {(bits + 7) // 8}))")
    n = len(packed)
    ids = data.get("ids")
    if ids is not None:
        ids = np.asarray(ids)
        if ids.shape != (n,) or ids.dtype.kind not in "iu":
            raise DataError(f"{p}: 'ids' must be {n} integers, got {ids.dtype} {ids.shape}")
    meta = {}
    if "labels" in data:
        labels = np.asarray(data["labels"])
        if len(labels) != n or labels.ndim not in (1, 2):
            raise DataError(f"{p}: 'labels' {labels.shape} does not match {n} codes")
        meta["label"] = labels
    for key, col in (("paths", "path"), ("names", "name")):
        if key in data:
            vals = np.asarray(data[key])
            if vals.shape != (n,):
                raise DataError(f"{p}: {key!r} {vals.shape} does not match {n} codes")
            meta[col] = np.asarray([_valid_text(v) for v in vals.astype(str).tolist()], dtype=str)
    return {"packed": packed, "bits": bits, "ids": ids, "metadata": meta, "path": str(p)}


def _valid_text(s: str) -> str:
    """A file name that is not valid UTF-8 (undecodable bytes kept as surrogates, as Python
    reads such names) gets ``\\xNN`` escapes: index strings must be valid Unicode."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def read_shards(paths) -> list[dict]:
    """Several codes files that must agree on ``bits`` and have disjoint ids."""
    shards = [read_codes_file(p) for p in paths]
    bits = {s["bits"] for s in shards}
    if len(bits) > 1:
        detail = ", ".join(f"{s['path']}: {s['bits']}" for s in shards)
        raise DataError(f"codes files disagree on bits ({detail})")
    seen: dict[int, str] = {}
    for s in shards:
        if s["ids"] is None:
            continue
        ids, counts = np.unique(s["ids"], return_counts=True)
        if (counts > 1).any():
            raise DataError(f"{s['path']}: duplicate ids {ids[counts > 1][:5].tolist()}")
        for other, other_ids in seen.items():
            clash = np.intersect1d(ids, other_ids)
            if len(clash):
                raise DataError(f"{s['path']} and {other} share ids {clash[:5].tolist()}")
        seen[s["path"]] = ids
    return shards


def add_shards(index, shards) -> int:
    total = 0
    for s in shards:
        if s["bits"] != index.bits:
            raise DataError(f"{s['path']} holds {s['bits']}-bit codes, the index "
                            f"{index.bits}-bit ones")
        index.add_packed(s["packed"], ids=s["ids"], metadata=s["metadata"] or None)
        total += len(s["packed"])
    return total


def engine_options(args) -> dict:
    opts = {}
    engine = getattr(args, "engine", None)
    if getattr(args, "uri", None):
        if engine not in (None, "milvus"):
            raise SSAHError("--uri is an option of the milvus engine")
        opts["uri"] = args.uri
    if getattr(args, "collection", None):
        opts["collection"] = args.collection
    for name, owner in (("nlist", "ivf"), ("nprobe", "ivf"), ("memory_budget", "mih")):
        if getattr(args, name, None) is not None:
            if engine not in (None, owner):
                raise SSAHError(f"--{name.replace('_', '-')} is an option of the {owner} engine")
            opts[name] = getattr(args, name)
    return opts


@contextmanager
def _opened(path, **kwargs):
    """A loaded index, closed (its Milvus connection released) whatever happens."""
    from .hamming import HammingIndex
    index = HammingIndex.load(path, **kwargs)
    try:
        yield index
    finally:
        index.close()


# ---------------------------------------------------------------------------------------------
# ssah index ...
# ---------------------------------------------------------------------------------------------
def build_command(args) -> int:
    from .hamming import HammingIndex
    shards = read_shards(args.codes)
    opts = engine_options(args)
    if args.engine == "milvus" and "uri" not in opts:
        out = Path(args.out)
        folder = out.parent if out.suffix == ".ssah" else out
        opts["uri"] = str(folder / "milvus.db")
    index = HammingIndex(shards[0]["bits"], engine=args.engine, **opts)
    try:
        n = add_shards(index, shards)
        target = index.save(args.out)
    finally:
        index.close()
    print(f"indexed {n} codes of {index.bits} bits with engine {args.engine} -> {target}")
    return 0


def _edit_saved(path, change):
    """Loads the index at ``path``, applies ``change(index) -> count`` and saves it in place;
    returns (count, where it was saved, items now in it)."""
    with _opened(path) as index:
        n = change(index)
        target = index.save(path)
        return n, target, len(index)


def add_command(args) -> int:
    n, target, total = _edit_saved(args.index, lambda index: add_shards(index, read_shards(args.codes)))
    print(f"added {n} codes ({total} in all) -> {target}")
    return 0


def remove_command(args) -> int:
    missing = "ignore" if args.ignore_missing else "error"
    n, target, total = _edit_saved(args.index, lambda index: index.remove(args.ids, missing=missing))
    print(f"removed {n} items ({total} left) -> {target}")
    return 0


def stats_command(args) -> int:
    with _opened(args.index) as index:
        stats = index.stats()
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    mem = stats["memory_bytes"]
    rows = [("bits", stats["bits"]), ("engine", stats["engine"]), ("exact", stats["exact"]),
            ("count", stats["count"]), ("id range", stats["id_range"]),
            ("metadata", ", ".join(f"{k} ({v['dtype']}{v['shape'] or ''})"
                                   for k, v in stats["metadata_columns"].items()) or "-"),
            ("memory", f"{mem['total']:,} bytes (engine {mem['engine']:,}, ids {mem['ids']:,}, "
                       f"metadata {mem['metadata']:,})"),
            ("bytes/item", f"{stats['bytes_per_item']:.2f} (codes + ids)"
             if stats["bytes_per_item"] is not None else "-")]
    rows += [(f"  {k}", v) for k, v in stats["engine_stats"].items()]
    rows += [(f"  option {k}", v) for k, v in stats["engine_options"].items()]
    width = max(len(r[0]) for r in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


# ---------------------------------------------------------------------------------------------
# ssah search
# ---------------------------------------------------------------------------------------------
def parse_code(text: str, bits: int) -> np.ndarray:
    """'0101...' (spaces and underscores allowed) -> (1, bits) 0/1 array."""
    s = "".join(ch for ch in text if ch not in " _")
    if not s or set(s) - {"0", "1"}:
        raise SSAHError(f"--code must be a string of 0s and 1s, got {text!r}")
    if len(s) != bits:
        raise SSAHError(f"--code has {len(s)} bits, the index holds {bits}-bit codes")
    return np.frombuffer(s.encode("ascii"), dtype=np.uint8)[None, :] - ord("0")


def _cell(value):
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, np.ndarray):
        if value.ndim == 1 and value.dtype.kind in "biu":
            return np.flatnonzero(value).tolist()
        return value.tolist()
    return value


def format_results(dist, ids, meta: dict) -> list[dict]:
    rows = []
    for r, (d, i) in enumerate(zip(dist.tolist(), ids.tolist())):
        if i < 0:
            continue
        row = {"rank": r + 1, "id": int(i), "distance": int(d)}
        for name, col in meta.items():
            row[name] = _cell(col[len(rows)])
        rows.append(row)
    return rows


def print_table(rows: list[dict], columns=("rank", "id", "distance", "label", "path")) -> None:
    if not rows:
        print("no results")
        return
    cols = [c for c in columns if c in rows[0]] + [c for c in rows[0] if c not in columns]
    text = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(t[j]) for t in text)) for j, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip())
    for t in text:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths)).rstrip())


def search_command(args, encode_image=None) -> int:
    """``ssah search``: by database id (``--id``), code string (``--code``) or, when the
    caller passes ``encode_image(path) -> code``, by image (``args.image``)."""
    opts = {}
    if getattr(args, "engine", None):
        opts["engine"] = args.engine
    if args.k is not None and args.k < 1:
        raise SSAHError(f"-k must be at least 1, got {args.k}")
    if args.radius is not None and args.radius < 0:
        raise SSAHError(f"--radius must be 0 or more, got {args.radius}")
    with _opened(args.index, **opts) as index:
        image = getattr(args, "image", None)
        sources = sum(x is not None for x in (args.id, args.code, image))
        if sources != 1:
            raise SSAHError("give exactly one query: --id N or --code 0101..."
                            + (" or --image" if encode_image is not None else ""))
        if args.id is not None:
            query = index.codes_of([args.id])
        elif args.code is not None:
            query = parse_code(args.code, index.bits)
        else:
            if encode_image is None:
                raise SSAHError("search by image needs a model (--checkpoint)")
            query = np.asarray(encode_image(image)).reshape(1, -1)
        filt = None
        if getattr(args, "label", None) is not None:
            filt = {"label": args.label}
        if getattr(args, "filter", None):
            if filt is not None:
                raise SSAHError("use either --label or --filter")
            filt = args.filter
        if args.radius is not None:
            (dist, ids), = index.range_search(query, args.radius, filter=filt)
            if args.k is not None:
                dist, ids = dist[:args.k], ids[:args.k]
        else:
            d, i = index.search(query, args.k or 10, filter=filt)
            dist, ids = d[0], i[0]
        valid = ids[ids >= 0]
        meta = index.metadata_of(valid) if len(valid) else {}
        rows = format_results(dist, ids, meta)
        if args.json:
            print(json.dumps({"query": {"id": args.id, "code": args.code, "image": image},
                              "engine": index.engine, "results": rows}, indent=2))
        else:
            print_table(rows)
    return 0


# ---------------------------------------------------------------------------------------------
# argparse wiring
# ---------------------------------------------------------------------------------------------
def _engine_args(p, default="flat"):
    p.add_argument("--engine", choices=ENGINE_CHOICES, default=default,
                   help="flat (FAISS exhaustive, default), ivf (approximate), mih (exact, "
                        "sub-linear), milvus (needs ssah[milvus])")
    p.add_argument("--uri", help="milvus: a local .db file or http://host:19530 "
                                 "(default: OUT/milvus.db)")
    p.add_argument("--collection", help="milvus collection name (default ssah_index)")
    p.add_argument("--nlist", type=int, help="ivf: number of cells")
    p.add_argument("--nprobe", type=int, help="ivf: cells visited per query")
    p.add_argument("--memory-budget", metavar="BYTES|auto|none",
                   help="mih: bytes per item its tables may hold (auto = bits/8 + 8, the "
                        "default; where they do not fit it scans); none lifts the bound")


def register(subparsers) -> None:
    """Add ``index`` (build, add, remove, stats) and ``search`` to a sub-parsers object."""
    ix = subparsers.add_parser("index", help="build and maintain a Hamming index of codes")
    isub = ix.add_subparsers(dest="index_command", required=True)

    b = isub.add_parser("build", help="index codes files (several are merged)")
    b.add_argument("--codes", required=True, nargs="+", action="extend", metavar="NPZ",
                   help="codes .npz from `ssah encode` (repeat or list several shards)")
    b.add_argument("--out", required=True, help="index folder (or a .ssah file)")
    _engine_args(b)
    b.set_defaults(func=build_command)

    a = isub.add_parser("add", help="add codes to an index")
    a.add_argument("--index", required=True)
    a.add_argument("--codes", required=True, nargs="+", action="extend", metavar="NPZ")
    a.set_defaults(func=add_command)

    r = isub.add_parser("remove", help="remove items by id")
    r.add_argument("--index", required=True)
    r.add_argument("--ids", required=True, nargs="+", type=int)
    r.add_argument("--ignore-missing", action="store_true", help="skip unknown ids")
    r.set_defaults(func=remove_command)

    s = isub.add_parser("stats", help="what an index holds")
    s.add_argument("--index", required=True)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=stats_command)

    q = subparsers.add_parser("search", help="nearest codes in an index")
    q.add_argument("--index", required=True)
    q.add_argument("--id", type=int, help="query with the code of this database id")
    q.add_argument("--code", help="query code as a 0/1 string")
    q.add_argument("-k", "--k", type=int, default=None, help="results (default 10)")
    q.add_argument("--radius", type=int, help="every item within this Hamming distance")
    q.add_argument("--label", type=int, help="only items with this label")
    q.add_argument("--filter", help="milvus engine: a filter expression, e.g. 'label == 3'")
    q.add_argument("--engine", choices=ENGINE_CHOICES,
                   help="search with another engine than the saved one (e.g. mih)")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.add_argument("--image", help="query with this image file (needs --checkpoint)")
    q.add_argument("--checkpoint", help="the model that encodes --image (file or run directory)")
    q.add_argument("--device", default="auto")
    q.set_defaults(func=_search_with_model)


def _search_with_model(args) -> int:
    """``ssah search``; with ``--checkpoint``, ``--image`` is encoded by that H-Net."""
    encode = None
    if args.checkpoint:
        from ..train.encode import image_encoder
        encode = image_encoder(args.checkpoint, args.device)
    return search_command(args, encode_image=encode)


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone parser with just these commands (tests, embedding)."""
    p = argparse.ArgumentParser(prog="ssah")
    register(p.add_subparsers(dest="command", required=True))
    return p
