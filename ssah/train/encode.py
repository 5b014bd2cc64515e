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
                     ns=(10, 100, 1000), radius: int = 2) -> dict:
    """mAP@all, mAP@K, P@N and precision within Hamming radius ``radius``."""
    report = {"map_all": metrics.mean_average_precision(query_codes, query_labels, db_codes, db_labels)}
    for k in top_k:
        report[f"map_at_{k}"] = metrics.mean_average_precision(
            query_codes, query_labels, db_codes, db_labels, top_k=min(k, len(db_codes)))
    ns = [n_ for n_ in ns if n_ <= len(db_codes)]
    p = metrics.precision_at_n(query_codes, query_labels, db_codes, db_labels, ns) if ns else []
    for n_, v in zip(ns, p):
        report[f"p_at_{n_}"] = float(v)
    report[f"precision_r{radius}"] = metrics.precision_within_radius(
        query_codes, query_labels, db_codes, db_labels, radius=radius)
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
