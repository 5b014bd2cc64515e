"""Result plots: precision-recall and precision@N curves, training curves, A-Net generations.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no display, no global
backend change) and saved as PNG at 100 dpi. Every function creates the parent folders of
``path`` and returns it as a :class:`pathlib.Path`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ssah.atomic import atomic_write
from ssah.errors import DataError

__all__ = ["plot_pr_curves", "plot_precision_at_n", "plot_training_curves",
           "plot_generated_grid", "read_log"]

DPI = 100


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path) -> Path:
    """Write the PNG atomically: a reader never sees a half-written plot."""
    path = Path(path)
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=DPI)
    fig.clear()            # release the artists; the figure is not registered with pyplot
    return path


def _np(x) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _xy_plot(curves: Mapping, path, title: str, xlabel: str, ylabel: str,
             swap: bool, xlim=None) -> Path:
    fig = _new_figure(5.5, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    for label, (a, b) in curves.items():
        a, b = _np(a).astype(float).ravel(), _np(b).astype(float).ravel()
        if a.shape != b.shape:
            raise DataError(f"curve {label!r}: arrays of different lengths {a.size} and {b.size}")
        x, y = (b, a) if swap else (a, b)
        ax.plot(x, y, marker="o", markersize=3, linewidth=1.5, label=str(label))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if xlim is not None:
        ax.set_xlim(*xlim)
    ax.set_ylim(0.0, 1.02)
    ax.grid(True, alpha=0.3)
    if curves:
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no curves", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_pr_curves(curves: Mapping, path, title: str = "Precision-recall") -> Path:
    """One precision-recall line per method/variant for one code length.

    ``curves`` maps a label to ``(precision, recall)`` arrays, e.g. the output of
    :func:`ssah.metrics.precision_recall_curve` (one point per Hamming radius).
    """
    return _xy_plot(curves, path, title, "recall", "precision", swap=True, xlim=(0.0, 1.02))


def plot_precision_at_n(curves: Mapping, path, title: str = "Precision@N") -> Path:
    """One precision@N line per method/variant; ``curves`` maps a label to ``(ns, precisions)``
    (see :func:`ssah.metrics.precision_at_n`)."""
    return _xy_plot(curves, path, title, "N (number of top returned items)", "precision",
                    swap=False)


# --------------------------------------------------------------------------- training curves

def read_log(log) -> list[dict]:
    """Records of a run's ``log.jsonl`` (a path), or a sequence of dicts as is."""
    if isinstance(log, (str, Path)):
        path = Path(log)
        if not path.is_file():
            raise DataError(f"{path}: training log not found")
        records = []
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{i}: not a JSON line ({exc.msg})") from None
            if not isinstance(rec, dict):
                raise DataError(f"{path}:{i}: expected a JSON object per line")
            records.append(rec)
        return records
    records = list(log)
    if not all(isinstance(r, Mapping) for r in records):
        raise DataError("training log: expected a path or a sequence of dicts")
    return [dict(r) for r in records]


def _number(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


_TERM_ORDER = ("loss", "sem", "con", "sp", "quan")   # total first, then as in the paper


def _panel_keys(records: list[dict]) -> list[str]:
    present = {k for r in records for k, v in r.items() if _number(v) is not None}

    def group(prefix):
        known = [prefix + t for t in _TERM_ORDER if prefix + t in present]
        return known + sorted(k for k in present if k.startswith(prefix) and k not in known)

    return group("h_") + group("a_") + [k for k in ("omega", "val_map") if k in present]


_TITLES = {"h_loss": "H-Net loss", "h_sem": "H-Net semantic", "h_con": "H-Net consistency",
           "h_quan": "H-Net quantisation", "a_loss": "A-Net loss", "a_sp": "A-Net L_sp",
           "a_sem": "A-Net semantic", "a_quan": "A-Net quantisation", "omega": "omega",
           "val_map": "validation mAP"}


def plot_training_curves(log, path, title: str = "Training curves") -> Path:
    """Per-epoch training curves from a run's ``log.jsonl`` (a path or a list of records).

    One panel per loss term present (``h_*`` then ``a_*``, totals first), then ``omega`` and
    ``val_map``, each against ``epoch`` (the record's position, from 1, where a record has no
    ``epoch``). Keys absent from every record are skipped; a record missing a key (e.g. epochs
    without validation) or holding a non-numeric value simply contributes no point.
    """
    records = read_log(log)
    keys = _panel_keys(records)
    ncols = min(4, max(1, len(keys)))
    nrows = max(1, math.ceil(len(keys) / ncols))
    fig = _new_figure(2.7 * ncols + 0.3, 2.2 * nrows + 0.5)
    if not keys:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no logged values", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    for i, key in enumerate(keys):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        xs, ys = [], []
        for j, r in enumerate(records):
            y = _number(r.get(key))
            x = _number(r.get("epoch", j + 1))
            if y is not None and x is not None:
                xs.append(x)
                ys.append(y)
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, linewidth=1.3,
                color="tab:green" if key == "val_map" else "tab:blue")
        ax.set_title(_TITLES.get(key, key), fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------- generations

def _images(x, name: str) -> np.ndarray:
    """(B, H, W, C) float images in [0, 1] with C in {1, 3}, from HWC / CHW / HW batches."""
    a = _np(x)
    if a.dtype.kind not in "biuf":
        raise DataError(f"{name}: expected a numeric image array, got dtype {a.dtype}")
    if a.ndim == 3:                                    # (B, H, W) grayscale
        a = a[..., None]
    if a.ndim != 4:
        raise DataError(f"{name}: expected (B, H, W, C) or (B, C, H, W) images, "
                        f"got shape {a.shape}")
    if a.shape[-1] not in (1, 3, 4) and a.shape[1] in (1, 3, 4):
        a = a.transpose(0, 2, 3, 1)                    # channels first -> last
    if a.shape[-1] not in (1, 3, 4):
        raise DataError(f"{name}: cannot find a 1, 3 or 4 channel axis in shape {a.shape}")
    a = a[..., :3] if a.shape[-1] == 4 else a
    a = a.astype(np.float64) / 255.0 if a.dtype == np.uint8 else a.astype(np.float64)
    return np.clip(np.nan_to_num(a), 0.0, 1.0)


def _mask(x, name: str, b: int) -> np.ndarray:
    m = _np(x).astype(np.float64)
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.ndim != 3 or m.shape[0] < b:
        raise DataError(f"mask {name!r}: expected (B, H, W) with B >= {b}, got shape {m.shape}")
    return np.nan_to_num(m[:b])


def plot_generated_grid(originals, generations, masks: Mapping | None = None, path=None,
                        title: str = "A-Net generations", angles=None,
                        centers: Mapping | None = None, max_rows: int = 8) -> Path:
    """A grid showing what the A-Net learned: one row per training image; columns are the
    original, one generated image per rotation band, then one column per mask.

    * ``originals``: (B, H, W, C) or (B, C, H, W) (or (B, H, W)) images, float in [0, 1]
      or uint8; values are clamped to [0, 1]; one channel is shown in gray.
    * ``generations``: a list with one such array per band, or one array of ``n * B``
      images flattened band-major as in :class:`ssah.models.anet.Generation` ``.images``.
    * ``masks``: optional ``{name: (B, H, W) or (B, 1, H, W)}``, e.g. ``{"additive":
      tanh(AM), "multiplicative": 1 - sigmoid(PM)}``, drawn with a diverging colormap
      symmetric around ``centers[name]`` (default 0); the column title gives the range.
    * ``angles``: optional (n, B) rotation angles in degrees, written under each generation.
    * At most ``max_rows`` images (the first ones) are shown.

    Each cell is 1.2 x 1.2 inches (120 px) plus room for titles.
    """
    if path is None:
        raise DataError("plot_generated_grid: an output path is required")
    orig = _images(originals, "originals")
    b_all = len(orig)
    if isinstance(generations, (list, tuple)):
        bands = [_images(g, f"generations[{i}]") for i, g in enumerate(generations)]
    else:
        flat = _images(generations, "generations")
        if len(flat) % b_all:
            raise DataError(f"generations: {len(flat)} images is not a multiple of the "
                            f"{b_all} originals")
        bands = [flat[i * b_all:(i + 1) * b_all] for i in range(len(flat) // b_all)]
    for i, g in enumerate(bands):
        if len(g) != b_all:
            raise DataError(f"generations[{i}]: {len(g)} images for {b_all} originals")
    b = min(b_all, max(1, int(max_rows)))
    masks = dict(masks or {})
    centers = dict(centers or {})
    mask_arrays = {k: _mask(v, k, b) for k, v in masks.items() if v is not None}
    ang = None if angles is None else _np(angles).astype(float)
    if ang is not None and (ang.ndim != 2 or ang.shape[0] != len(bands) or ang.shape[1] < b):
        raise DataError(f"angles: expected shape ({len(bands)}, {b_all}), got {ang.shape}")

    ncols = 1 + len(bands) + len(mask_arrays)
    cell = 1.2
    height = cell * b + 0.8
    fig = _new_figure(cell * ncols, height)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=(0.2 if ang is not None else 0.02) / height,
                        top=1 - 0.75 / height, wspace=0.05,
                        hspace=0.3 if ang is not None else 0.05)
    lims = {}
    for k, m in mask_arrays.items():
        c = float(centers.get(k, 0.0))
        lims[k] = (c, max(float(np.abs(m - c).max()), 1e-6))

    def show(ax, img):
        if img.shape[-1] == 1:
            ax.imshow(img[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        else:
            ax.imshow(img, interpolation="nearest")

    for r in range(b):
        col = 0
        axes = [fig.add_subplot(b, ncols, r * ncols + j + 1) for j in range(ncols)]
        show(axes[col], orig[r])
        if r == 0:
            axes[col].set_title("original", fontsize=8)
        for i, g in enumerate(bands):
            col += 1
            show(axes[col], g[r])
            if r == 0:
                axes[col].set_title(f"band {i + 1}", fontsize=8)
            if ang is not None:
                axes[col].set_xlabel(f"{ang[i, r]:+.0f}°", fontsize=7, labelpad=1)
        for k, m in mask_arrays.items():
            col += 1
            c, h = lims[k]
            axes[col].imshow(m[r], cmap="RdBu_r", vmin=c - h, vmax=c + h,
                             interpolation="nearest")
            if r == 0:
                axes[col].set_title(f"{k}\n[{c - h:.2g}, {c + h:.2g}]", fontsize=7)
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
