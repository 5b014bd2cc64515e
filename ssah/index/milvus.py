"""``milvus``: search through a Milvus collection (BINARY_VECTOR field, HAMMING metric).

``uri`` is a local milvus-lite file (``./idx.db``; pymilvus starts a small local server for
it) or a Milvus server (``http://host:19530``, with ``token`` if it needs one).  Only
milvus-lite 2.x stores binary vectors, so the ``milvus`` extra pins ``milvus-lite>=2.4,<3``;
lite mode has only the BIN_FLAT index and needs a dimension divisible by 8, so codes are
zero-padded to whole bytes (12 -> 16 bits; distances do not change).

Schema: ``id`` (INT64 primary key, the index id), ``code`` (BINARY_VECTOR), plus scalar
fields from the metadata: ``label`` (INT64) for a 1-D integer label column, ``labels``
(ARRAY of INT64 class indices) for a multi-hot one, ``path`` (VARCHAR).  A search can pass a
Milvus ``filter`` expression over them, e.g. ``"label == 3"`` or ``"array_contains(labels, 3)"``.

Exactness: Milvus returns the k nearest in an arbitrary order at equal distances, so the
engine asks again for the whole group at the k-th distance (a range search with
``range_filter <= d < radius`` at exactly that distance, one call per distinct boundary distance) and keeps
its smallest ids; a group larger than Milvus's 16,384-hit limit is narrowed by bisection on
``id``.  Results therefore equal ``flat``'s, sorted by (distance, id).  Every search and query
runs with ``consistency_level="Strong"`` so items inserted just before are visible.

The engine also keeps the packed codes locally (for ``save`` and for re-filling a collection
that is missing or out of date when an index is loaded).
"""
from __future__ import annotations

import importlib.metadata
import shutil
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

from ..errors import SSAHError
from .base import ArrayStore, Engine, pad_bytes

MAX_TOPK = 16384
_LITE_USERS: dict[str, int] = {}     # local file -> open engines using its server
INSERT_BATCH = 5000
STRONG = "Strong"
INSTALL_HINT = "pip install 'ssah[milvus]'"


def _ensure_pkg_resources() -> None:
    """milvus-lite 2.x imports ``pkg_resources``, gone from recent setuptools; provide the
    two names it uses when it is missing."""
    try:
        import pkg_resources  # noqa: F401
        return
    except ImportError:
        pass
    mod = types.ModuleType("pkg_resources")

    class DistributionNotFound(Exception):
        pass

    class _Distribution:
        def __init__(self, version):
            self.version = version

    def get_distribution(name):
        try:
            return _Distribution(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError as e:
            raise DistributionNotFound(name) from e

    mod.DistributionNotFound = DistributionNotFound
    mod.get_distribution = get_distribution
    sys.modules["pkg_resources"] = mod


def is_local_uri(uri: str) -> bool:
    return "://" not in str(uri)


def import_pymilvus(local: bool = True):
    """Import pymilvus (and milvus-lite for local files) or explain how to install them."""
    try:
        import pymilvus
    except ImportError as e:
        raise SSAHError(f"the milvus engine needs pymilvus ({e}); install it with "
                        f"{INSTALL_HINT}") from None
    if local:
        _ensure_pkg_resources()
        try:
            import milvus_lite  # noqa: F401
        except ImportError as e:
            raise SSAHError(f"a local Milvus file needs milvus-lite ({e}); install it with "
                            f"{INSTALL_HINT}") from None
    return pymilvus


class MilvusEngine(Engine):
    """Options: ``uri`` (default: a temporary milvus-lite file), ``collection`` (default
    "ssah_index"), ``token`` (remote servers).

    The collection mirrors this index: the first ``add`` to a new index replaces a collection
    of the same name, so two indexes must not share one ``(uri, collection)``.
    """

    name = "milvus"
    wants_ids = True

    def __init__(self, bits: int, uri: str | None = None, collection: str = "ssah_index",
                 token: str | None = None):
        super().__init__(bits)
        self.dim = self.nbytes_code * 8
        self._tmpdir = None
        if uri is None:
            self._tmpdir = tempfile.mkdtemp(prefix="ssah-milvus-")
            uri = str(Path(self._tmpdir) / "milvus.db")
        self.uri = str(uri)
        self.local = is_local_uri(self.uri)
        if self.local:
            if not self.uri.endswith(".db"):
                raise SSAHError(f"a local Milvus uri must be a file name ending in .db, "
                                f"got {self.uri!r}")
            Path(self.uri).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
            self.uri = str(Path(self.uri).expanduser().resolve())
        self.collection = str(collection)
        self.token = token
        self._pymilvus = import_pymilvus(self.local)
        kwargs = {"token": token} if token else {}
        try:
            self._client = self._pymilvus.MilvusClient(self.uri, **kwargs)
        except Exception as e:  # connection problems are user errors (a wrong uri)
            raise SSAHError(f"cannot connect to Milvus at {self.uri}: {e}") from None
        if self.local:
            _LITE_USERS[self.uri] = _LITE_USERS.get(self.uri, 0) + 1
        self._store = ArrayStore(self.nbytes_code)
        self._ids = np.zeros(0, dtype=np.int64)
        self._fields: dict[str, str] = {}     # metadata column -> milvus field kind
        self._schema_ready = False

    # -- schema --------------------------------------------------------------------------------
    def _field_kinds(self, metadata) -> dict:
        kinds = {}
        for name, col in (metadata or {}).items():
            if name == "label" and col.ndim == 1 and col.dtype.kind in "iub":
                kinds["label"] = "label"
            elif name == "label" and col.ndim == 2:
                kinds["label"] = "labels"
            elif name == "path" and col.dtype.kind == "T":
                kinds["path"] = "path"
        return kinds

    def _create(self, metadata):
        DataType = self._pymilvus.DataType
        client = self._client
        self._fields = self._field_kinds(metadata)
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("code", DataType.BINARY_VECTOR, dim=self.dim)
        for kind in self._fields.values():
            if kind == "label":
                schema.add_field("label", DataType.INT64)
            elif kind == "labels":
                ncls = int(metadata["label"].shape[1])
                schema.add_field("labels", DataType.ARRAY, element_type=DataType.INT64,
                                 max_capacity=max(1, ncls))
            elif kind == "path":
                schema.add_field("path", DataType.VARCHAR, max_length=65535)
        params = client.prepare_index_params()
        params.add_index(field_name="code", index_type="BIN_FLAT", metric_type="HAMMING")
        if client.has_collection(self.collection):
            client.drop_collection(self.collection)
        client.create_collection(self.collection, schema=schema, index_params=params,
                                 consistency_level=STRONG)
        self._schema_ready = True

    def _rows(self, packed, ids, metadata):
        codes = pad_bytes(packed, self.dim // 8)
        rows = []
        cols = {}
        for name, kind in self._fields.items():
            col = metadata.get(name) if metadata else None
            cols[kind] = col
        for i in range(len(packed)):
            row = {"id": int(ids[i]), "code": codes[i].tobytes()}
            for kind, col in cols.items():
                if kind == "label":
                    row["label"] = int(col[i]) if col is not None else -1
                elif kind == "labels":
                    row["labels"] = np.flatnonzero(col[i]).tolist() if col is not None else []
                elif kind == "path":
                    row["path"] = str(col[i]) if col is not None else ""
            rows.append(row)
        return rows

    def _insert(self, packed, ids, metadata):
        if not self._schema_ready:
            self._create(metadata)
        for a in range(0, len(packed), INSERT_BATCH):
            b = min(a + INSERT_BATCH, len(packed))
            sub = {k: v[a:b] for k, v in (metadata or {}).items()}
            self._client.insert(self.collection, self._rows(packed[a:b], ids[a:b], sub))

    # -- updates -------------------------------------------------------------------------------
    def __len__(self):
        return self._store.n

    def add(self, packed, ids=None, metadata=None):
        if not len(packed):
            return
        if ids is None:
            raise SSAHError("the milvus engine needs ids with every add")
        self._insert(packed, ids, metadata)
        self._store.append(packed)
        self._ids = np.concatenate([self._ids, np.asarray(ids, dtype=np.int64)])

    def remove(self, positions, ids=None):
        if not len(positions):
            return
        gone = self._ids[positions]
        for a in range(0, len(gone), INSERT_BATCH):
            self._client.delete(self.collection, ids=[int(x) for x in gone[a:a + INSERT_BATCH]])
        self._store.remove(positions)
        keep = np.ones(len(self._ids), dtype=bool)
        keep[positions] = False
        self._ids = self._ids[keep]

    def reset(self, packed, ids=None, metadata=None):
        if self._schema_ready and self._field_kinds(metadata) == self._fields:
            # same schema: empty the collection in place (no drop and re-create)
            self._client.delete(self.collection, filter="id >= 0")
        else:
            self._schema_ready = False
            if self._client.has_collection(self.collection):
                self._client.drop_collection(self.collection)
        self._store = ArrayStore(self.nbytes_code)
        self._ids = np.zeros(0, dtype=np.int64)
        self.add(packed, ids=ids, metadata=metadata)

    def codes(self):
        return self._store.array.copy()

    # -- persistence hooks ---------------------------------------------------------------------
    def save_extra(self, path):
        """Where the collection lives, relative to the index folder when it is inside it."""
        if self._tmpdir:
            return {"uri": None, "collection": self.collection}
        uri = self.uri
        if self.local:
            folder = Path(path).resolve()
            folder = folder.parent if folder.suffix == ".ssah" else folder
            try:
                return {"uri": str(Path(uri).relative_to(folder)), "relative": True,
                        "collection": self.collection}
            except ValueError:
                pass
        return {"uri": uri, "collection": self.collection}

    @staticmethod
    def options_from_state(state, path) -> dict:
        """Engine options recorded by :meth:`save_extra`, resolved against the saved path."""
        if not state:
            return {}
        out = {"collection": state.get("collection", "ssah_index")}
        uri = state.get("uri")
        if uri and state.get("relative"):
            folder = Path(path)
            folder = folder.parent if folder.suffix == ".ssah" else folder
            uri = str(folder / uri)
        out["uri"] = uri
        return out

    def restore(self, packed, ids, metadata):
        """Reuse the saved collection when it still holds exactly these ids, else refill it."""
        self._store = ArrayStore(self.nbytes_code)
        self._store.append(packed)
        self._ids = np.asarray(ids, dtype=np.int64).copy()
        self._fields = self._field_kinds(metadata)
        if self._client.has_collection(self.collection) and self._count() == len(ids):
            self._schema_ready = True
            if len(ids):
                probe = [int(x) for x in np.unique(ids[np.linspace(0, len(ids) - 1, 16)
                                                       .astype(np.int64)])]
                got = self._client.query(self.collection, ids=probe, output_fields=["id"],
                                         consistency_level=STRONG)
                if len(got) == len(probe):
                    return
        self._schema_ready = False
        if self._client.has_collection(self.collection):
            self._client.drop_collection(self.collection)
        if len(ids):
            self._insert(packed, self._ids, metadata)

    def _count(self) -> int:
        res = self._client.query(self.collection, filter="", output_fields=["count(*)"],
                                 consistency_level=STRONG)
        return int(res[0]["count(*)"]) if res else 0

    # -- search --------------------------------------------------------------------------------
    def _search(self, vectors, limit, filter=None, band=None, id_below=None):
        params = {"metric_type": "HAMMING", "params": {}}
        if band is not None:
            lo, hi = band      # distances lo <= d <= hi
            # Milvus keeps range_filter <= d < radius (integers for HAMMING)
            params["params"] = {"range_filter": int(lo), "radius": int(hi) + 1}
        expr = filter or ""
        if id_below is not None:
            expr = f"({expr}) and id < {int(id_below)}" if expr else f"id < {int(id_below)}"
        res = self._client.search(self.collection, data=vectors, limit=int(limit),
                                  filter=expr, search_params=params, output_fields=["id"],
                                  consistency_level=STRONG)
        out = []
        for hits in res:
            ids = np.fromiter((h["id"] for h in hits), dtype=np.int64, count=len(hits))
            dist = np.fromiter((round(h["distance"]) for h in hits), dtype=np.int32,
                               count=len(hits))
            out.append((dist, ids))
        return out

    def _vectors(self, q_packed):
        padded = pad_bytes(q_packed, self.dim // 8)
        return [row.tobytes() for row in padded]

    def _band_smallest_ids(self, vector, d, need, filter):
        """The ``need`` smallest ids among items at exactly distance ``d``."""
        dist, ids = self._search([vector], MAX_TOPK, filter, band=(d, d))[0]
        if len(ids) < MAX_TOPK:
            return np.sort(ids)[:need]
        lo, hi = 0, int(self._ids[-1]) + 1 if len(self._ids) else 1
        while True:      # find an id bound holding between need and MAX_TOPK - 1 of them
            mid = (lo + hi) // 2
            dist, ids = self._search([vector], MAX_TOPK, filter, band=(d, d), id_below=mid)[0]
            if len(ids) >= MAX_TOPK:
                hi = mid
            elif len(ids) < need:
                lo = mid
            else:
                return np.sort(ids)[:need]

    def _positions(self, ids):
        pos = np.searchsorted(self._ids, ids)
        return pos.astype(np.int64)

    def search(self, q_packed, k, filter=None, **kwargs):
        m = len(q_packed)
        out_d = np.full((m, k), -1, np.int32)
        out_p = np.full((m, k), -1, np.int64)
        if len(self) == 0 or m == 0:
            return out_d, out_p
        if isinstance(filter, dict):
            filter = self.expression(filter)
        if k >= MAX_TOPK:
            raise SSAHError(f"the milvus engine returns at most k = {MAX_TOPK - 1} per query")
        vectors = self._vectors(q_packed)
        first = []
        for a in range(0, m, 256):
            first.extend(self._search(vectors[a:a + 256], k, filter))
        # complete the boundary group of every full row, batched by boundary distance
        boundary = {}
        for i, (dist, ids) in enumerate(first):
            if len(ids) >= k:
                boundary.setdefault(int(dist.max()), []).append(i)
        fixed = {}
        for d, rows in boundary.items():
            for a in range(0, len(rows), 64):
                chunk = rows[a:a + 64]
                res = self._search([vectors[i] for i in chunk], MAX_TOPK, filter, band=(d, d))
                for i, (bd, bids) in zip(chunk, res):
                    dist, ids = first[i]
                    below = ids[dist < d]
                    need = k - len(below)
                    if len(bids) >= MAX_TOPK:
                        top = self._band_smallest_ids(vectors[i], d, need, filter)
                    else:
                        top = np.sort(bids)[:need]
                    fixed[i] = (np.concatenate([dist[dist < d], np.full(len(top), d, np.int32)]),
                                np.concatenate([below, top]))
        for i in range(m):
            dist, ids = fixed.get(i, first[i])
            order = np.lexsort((ids, dist))[:k]
            out_d[i, :len(order)] = dist[order]
            out_p[i, :len(order)] = self._positions(ids[order])
        return out_d, out_p

    def range_search(self, q_packed, radius, filter=None, **kwargs):
        m = len(q_packed)
        if len(self) == 0 or m == 0:
            return [(np.zeros(0, np.int32), np.zeros(0, np.int64)) for _ in range(m)]
        if isinstance(filter, dict):
            filter = self.expression(filter)
        vectors = self._vectors(q_packed)
        out = []
        top = int(self._ids[-1]) + 1
        for v in vectors:
            parts = []
            stack = [(0, top)]
            while stack:      # split id ranges until each holds fewer than MAX_TOPK hits
                a, b = stack.pop()
                expr = f"id >= {a} and id < {b}"
                expr = f"({filter}) and {expr}" if filter else expr
                dist, ids = self._search([v], MAX_TOPK, expr, band=(0, radius))[0]
                if len(ids) >= MAX_TOPK and b - a > 1:
                    mid = (a + b) // 2
                    stack.extend([(a, mid), (mid, b)])
                else:
                    parts.append((dist, ids))
            dist = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int32)
            ids = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
            order = np.lexsort((ids, dist))
            out.append((dist[order], self._positions(ids[order])))
        return out

    def expression(self, filter: dict) -> str:
        """A ``{column: value or list}`` filter as a Milvus expression."""
        parts = []
        for name, want in filter.items():
            values = [v.item() if hasattr(v, "item") else v for v in np.atleast_1d(want)]
            kind = "id" if name == "id" else self._fields.get(name)
            if kind in ("id", "label"):
                field = "id" if kind == "id" else "label"
                parts.append(f"{field} in [{', '.join(str(int(v)) for v in values)}]")
            elif kind == "labels":
                parts.append(f"array_contains_any(labels, [{', '.join(str(int(v)) for v in values)}])")
            elif kind == "path":
                quoted = ", ".join('"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
                                   for v in values)
                parts.append(f"path in [{quoted}]")
            else:
                raise SSAHError(f"the milvus collection has no field for {name!r} "
                                f"(fields: id{''.join(', ' + f for f in self._fields.values())})")
        return " and ".join(f"({p})" for p in parts)

    # -- facts ---------------------------------------------------------------------------------
    def memory_bytes(self):
        return int(self._store.nbytes() + self._ids.nbytes)

    def options(self):
        return {"collection": self.collection}

    def stats(self):
        return {"uri": self.uri, "collection": self.collection, "dim": self.dim,
                "scalar_fields": sorted(self._fields.values())}

    def close(self):
        client, self._client = getattr(self, "_client", None), None
        if client is None:
            return
        try:
            client.close()
        except Exception:
            pass
        if self.local:
            # stop the local server once no open engine uses its file (it costs CPU while up)
            _LITE_USERS[self.uri] = _LITE_USERS.get(self.uri, 1) - 1
            if _LITE_USERS[self.uri] <= 0:
                del _LITE_USERS[self.uri]
                try:
                    from milvus_lite.server_manager import server_manager_instance
                    server_manager_instance.release_server(self.uri)
                except Exception:
                    pass
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
