"""Encoding images to binary codes with a trained H-Net, and evaluating retrieval."""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from .. import metrics


@torch.no_grad()
def encode_images(hnet, images, device: torch.device, batch_size: int = 256,
                  channels_last: bool = True, progress: bool = False, rows=None) -> np.ndarray:
    """Codes b = sign(mu) as int8 in {-1, +1}, (N, bits) of ``images[rows]`` (all rows when None).

    Streams ``images`` (N, H, W, C), e.g. a memmap, in chunks, so memory stays bounded.
    """
    from .build import to_tensor
    was_training = hnet.training
    hnet.eval()
    rows = np.arange(len(images)) if rows is None else np.asarray(rows)
    n = len(rows)
    out = np.empty((n, hnet.bits), dtype=np.int8)
    chunks = range(0, n, batch_size)
    for start in tqdm(chunks, desc="encode", unit="batch", disable=not progress, leave=False):
        x = to_tensor(images[rows[start:start + batch_size]], device, channels_last)
        mu = hnet(x)
        out[start:start + len(x)] = torch.where(mu >= 0, 1, -1).to(torch.int8).cpu().numpy()
    hnet.train(was_training)
    return out


def retrieval_report(query_codes, query_labels, db_codes, db_labels, top_k=(5000,),
                     ns=(10, 100, 1000), radius: int = 2, tie_aware: bool = True) -> dict:
    """mAP@all, mAP@K, P@N and precision within Hamming radius ``radius``.

    ``tie_aware`` (the default): the ranked metrics are their expectation over random orders
    of equal-distance items, so they do not depend on the database's order; a database
    stored class by class would otherwise put other classes first in every tie.
    ``tie_aware=False`` breaks ties by database position. ``ties`` in the report says which.
    """
    args = (query_codes, query_labels, db_codes, db_labels)
    report = {"map_all": metrics.mean_average_precision(*args, tie_aware=tie_aware)}
    for k in top_k:
        report[f"map_at_{k}"] = metrics.mean_average_precision(
            *args, top_k=min(k, len(db_codes)), tie_aware=tie_aware)
    ns = [n_ for n_ in ns if n_ <= len(db_codes)]
    p = metrics.precision_at_n(*args, ns, tie_aware=tie_aware) if ns else []
    for n_, v in zip(ns, p):
        report[f"p_at_{n_}"] = float(v)
    report[f"precision_r{radius}"] = metrics.precision_within_radius(
        query_codes, query_labels, db_codes, db_labels, radius=radius)
    report["ties"] = "expected" if tie_aware else "database-order"
    report["n_queries"] = int(len(query_codes))
    report["n_database"] = int(len(db_codes))
    return report


def image_encoder(checkpoint, device: str = "auto"):
    """``encode(path) -> (bits,) int8`` for single image files, preprocessed like training data."""
    from ..data import decode_image, prepare_image
    from . import load_model
    hnet, cfg, path, state = load_model(checkpoint, device)
    dev = next(hnet.parameters()).device
    size, channels = state["input_size"], state["in_channels"]

    def encode(image_path) -> np.ndarray:
        img = decode_image(image_path, str(image_path), mode="RGB" if channels == 3 else "L")
        a = prepare_image(img, str(image_path), size, channels)
        return encode_images(hnet, a[None], dev, channels_last=False)[0]
    return encode


class ImageEncoder:
    """Encode uploaded images (encoded bytes or PIL images) with a trained H-Net.

    ``encoder.decode(data, name, max_pixels)`` decodes bytes safely (pixel limit, errors name
    the upload) in the model's colour mode; ``encoder.encode([img, ...])`` returns
    (n, bits) int8 codes in {-1, +1}, preprocessed exactly like :func:`image_encoder`.
    ``info`` describes the model (checkpoint, backbone, bits, variant, dataset, epoch).
    """

    def __init__(self, checkpoint, device: str = "auto"):
        from . import load_model
        self.hnet, self.cfg, self.path, state = load_model(checkpoint, device)
        self.device = next(self.hnet.parameters()).device
        self.size, self.channels = int(state["input_size"]), int(state["in_channels"])
        self.bits = int(self.hnet.bits)
        self.info = {"checkpoint": str(self.path), "backbone": self.cfg.model.backbone,
                     "bits": self.bits, "variant": self.cfg.train.variant,
                     "dataset": self.cfg.data.dataset, "epoch": int(state.get("epoch", 0)),
                     "input_size": self.size, "channels": self.channels}

    @property
    def mode(self) -> str:
        return "RGB" if self.channels == 3 else "L"

    def decode(self, data, name: str = "upload", max_pixels=None):
        from ..data import DEFAULT_MAX_PIXELS, decode_image
        return decode_image(data, name, mode=self.mode,
                            max_pixels=DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels)

    def encode(self, images, names=None) -> np.ndarray:
        """Codes of PIL images (or encoded bytes, decoded with the default pixel limit)."""
        from ..data import prepare_image
        names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
        arrays = []
        for img, name in zip(images, names):
            if isinstance(img, (bytes, bytearray, memoryview)):
                img = self.decode(img, name)
            arrays.append(prepare_image(img, name, self.size, self.channels))
        if not arrays:
            return np.empty((0, self.bits), dtype=np.int8)
        return encode_images(self.hnet, np.stack(arrays), self.device, channels_last=False)


# ---------------------------------------------------------------------------------------------
# sharded encoding: one contiguous slice of a dataset per shard file, resumable
# ---------------------------------------------------------------------------------------------
def shard_bounds(n: int, shards: int, index: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of shard ``index`` of ``shards`` contiguous, near-equal slices of ``n``."""
    if shards < 1 or not 0 <= index < shards:
        raise ValueError(f"shard {index} of {shards} does not exist")
    return n * index // shards, n * (index + 1) // shards


class _SliceLoader:
    def __init__(self, ds, lo: int):
        self.ds, self.lo = ds, lo

    def __call__(self, i: int):
        return self.ds.image(self.lo + i)


def dataset_slice(ds, lo: int, hi: int):
    """Rows ``[lo, hi)`` of ``ds`` as an ImageDataset (images decoded on demand from ``ds``)."""
    from ..data.base import ImageDataset
    sub = ImageDataset(ds.labels[lo:hi], ds.ids[lo:hi], _SliceLoader(ds, lo),
                       source=f"{ds.source}#rows={lo}:{hi}", class_names=ds.class_names,
                       splits=None if ds.splits is None else ds.splits[lo:hi],
                       checksum=None if ds.checksum is None else f"{ds.checksum}#rows={lo}:{hi}")
    return sub


#: arrays of a codes file covered by its ``checksum`` entry, in this order
CODES_FIELDS = ("codes", "bits", "ids", "names", "labels", "skipped", "meta")


def codes_checksum(arrays: dict) -> str:
    """SHA-256 over the arrays of a codes file (dtype, shape and bytes of each, in order)."""
    import hashlib
    h = hashlib.sha256()
    for key in CODES_FIELDS:
        if key not in arrays:
            continue
        a = np.asarray(arrays[key])
        h.update(f"{key}:{a.dtype.str}:{a.shape}:".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def write_codes_file(path, arrays: dict) -> None:
    """Write a codes ``.npz`` atomically (temp file, fsync, rename) with a ``checksum`` entry;
    on any failure nothing is left at ``path`` or beside it."""
    import os
    import tempfile
    from pathlib import Path
    path = Path(path)
    arrays = dict(arrays)
    arrays["checksum"] = np.asarray(codes_checksum(arrays))
    from ..errors import SSAHError
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise SSAHError(f"--out {path} is a folder; give a file name ending in .npz")
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)   # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise SSAHError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def complete_codes_file(path, meta: str) -> bool:
    """True when ``path`` is a codes file whose checksum verifies and whose ``meta`` (what was
    encoded: model, data, rows) equals ``meta``; such a shard need not be encoded again."""
    from pathlib import Path
    if not Path(path).is_file():
        return False
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception:   # truncated or not an npz: encode again
        return False
    if "checksum" not in arrays or "meta" not in arrays:
        return False
    return str(arrays["checksum"]) == codes_checksum(arrays) and str(arrays["meta"]) == meta
