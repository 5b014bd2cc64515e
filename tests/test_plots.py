"""Result plots: each writes a real PNG for tiny synthetic inputs, tolerates missing keys,
and the generation grid has the expected size."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ssah.errors import DataError
from ssah.plots import (plot_generated_grid, plot_pr_curves, plot_precision_at_n,
                        plot_training_curves, read_log)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def check_png(path, max_kb=300):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert 1024 < len(data) < max_kb * 1024
    with Image.open(path) as im:
        return im.size


def test_pr_curves(tmp_path):
    r = np.linspace(0, 1, 13)
    curves = {"SSAH": (1 - 0.5 * r, r), "ITQ-CCA": (1 - 0.8 * r ** 0.5, r), "LSH": ([0.3] * 13, r)}
    out = plot_pr_curves(curves, tmp_path / "a" / "b" / "pr.png", title="CIFAR-10, 12 bits")
    assert out == tmp_path / "a" / "b" / "pr.png"
    check_png(out)


def test_precision_at_n_accepts_tensors(tmp_path):
    ns = np.arange(100, 1100, 100)
    curves = {"SSAH": (ns, np.linspace(0.9, 0.8, 10)), "LSH": (torch.tensor(ns), torch.rand(10))}
    check_png(plot_precision_at_n(curves, tmp_path / "pn.png", title="P@N"))


def test_empty_and_mismatched_curves(tmp_path):
    check_png(plot_pr_curves({}, tmp_path / "empty.png", title="nothing"))
    with pytest.raises(DataError, match="lengths"):
        plot_pr_curves({"x": ([1, 2], [1, 2, 3])}, tmp_path / "bad.png", title="bad")


def _records(epochs=6):
    recs = []
    for e in range(1, epochs + 1):
        r = {"epoch": e, "h_loss": 2.0 / e, "h_sem": 1.0 / e, "h_con": 0.5 / e, "h_quan": 0.1,
             "a_loss": -1.0 / e, "a_sp": 0.2, "a_sem": -0.3, "a_quan": 0.05, "omega": 0.1 * e,
             "lr": 0.01, "angle_band1": 10.0, "images_per_s": 900.0}
        if e % 2 == 0:
            r["val_map"] = 0.1 * e
        recs.append(r)
    return recs


def test_training_curves_from_jsonl(tmp_path):
    log = tmp_path / "run" / "log.jsonl"
    log.parent.mkdir()
    log.write_text("\n".join(json.dumps(r) for r in _records()) + "\n\n")
    assert len(read_log(log)) == 6
    w, h = check_png(plot_training_curves(log, tmp_path / "curves.png", title="run"))
    assert w > h          # 10 panels on a 4-column grid


def test_training_curves_missing_keys(tmp_path):
    # H-Net only baseline: no a_* terms, no omega, no validation, no epoch key
    recs = [{"h_loss": 1.0 / (i + 1), "h_sem": 0.5, "note": "x", "h_quan": None}
            for i in range(4)]
    check_png(plot_training_curves(recs, tmp_path / "h_only.png", title="H only"))
    check_png(plot_training_curves([], tmp_path / "none.png", title="empty"))
    check_png(plot_training_curves([{"epoch": 1, "val_map": float("nan")}],
                                   tmp_path / "nan.png", title="nan"))


def test_training_curves_bad_log(tmp_path):
    bad = tmp_path / "log.jsonl"
    bad.write_text('{"epoch": 1}\nnot json\n')
    with pytest.raises(DataError, match=":2:"):
        plot_training_curves(bad, tmp_path / "x.png")
    with pytest.raises(DataError, match="not found"):
        plot_training_curves(tmp_path / "missing.jsonl", tmp_path / "x.png")


def test_generated_grid_size_hwc_float(tmp_path):
    rng = np.random.default_rng(0)
    B, H, W = 4, 32, 32
    orig = rng.random((B, H, W, 3)) * 1.4 - 0.2             # out of range: clamped
    gens = [np.clip(orig + 0.1 * k, 0, 1) for k in range(3)]
    masks = {"additive": rng.standard_normal((B, H, W)) * 0.3,
             "multiplicative": rng.random((B, 1, H, W))}
    out = plot_generated_grid(orig, gens, masks, tmp_path / "g" / "grid.png", "A-Net",
                              angles=rng.uniform(-30, 30, (3, B)),
                              centers={"multiplicative": 1.0})
    w, h = check_png(out)
    ncols = 1 + 3 + 2
    assert w == pytest.approx(120 * ncols, abs=2)
    assert h == pytest.approx(120 * B + 80, abs=2)


def test_generated_grid_chw_uint8_gray_and_flat_generations(tmp_path):
    rng = np.random.default_rng(1)
    B = 3
    orig = rng.integers(0, 256, (B, 1, 28, 28), dtype=np.uint8)
    flat = torch.rand(3 * B, 1, 28, 28)                       # Generation.images layout
    w, h = check_png(plot_generated_grid(orig, flat, None, tmp_path / "gray.png", "MNIST"))
    assert w == pytest.approx(120 * 4, abs=2)
    assert h == pytest.approx(120 * B + 80, abs=2)


def test_generated_grid_max_rows_and_errors(tmp_path):
    orig = np.random.default_rng(2).random((20, 3, 16, 16))
    w, h = check_png(plot_generated_grid(orig, [orig], path=tmp_path / "m.png", max_rows=5))
    assert h == pytest.approx(120 * 5 + 80, abs=2)
    with pytest.raises(DataError, match="originals"):
        plot_generated_grid(orig, [orig[:4]], path=tmp_path / "x.png")
    with pytest.raises(DataError, match="multiple"):
        plot_generated_grid(orig, orig[:7], path=tmp_path / "x.png")
    with pytest.raises(DataError, match="channel"):
        plot_generated_grid(np.zeros((2, 5, 16, 16)), [np.zeros((2, 5, 16, 16))],
                            path=tmp_path / "x.png")
