"""Shared fixtures: tiny datasets in every supported layout, built in temporary folders."""
from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

#: ../shared/data beside the project root, where the real data files live.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CIFAR_ZIP = SHARED_DATA / "cifar10-jpg.zip"

TREE_CLASSES = ("dog", "airplane", "cat", "bird")  # deliberately not in sorted order
TREE_PER_CLASS = {"train": 6, "test": 4}            # 4 x (6 + 4) = 40 images


def smooth_image(rng: np.random.Generator, size=(16, 16)) -> np.ndarray:
    """An RGB image with a random base colour and a gentle gradient (JPEG keeps it closely)."""
    h, w = size
    base = rng.integers(40, 216, size=3)
    yy, xx = np.mgrid[0:h, 0:w]
    grad = (yy * 2 + xx)[:, :, None] * rng.integers(-1, 2, size=3)
    return np.clip(base + grad, 0, 255).astype(np.uint8)


def jpeg_bytes(a: np.ndarray, quality=95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_tree(root: Path, seed=0) -> dict[str, np.ndarray]:
    """``root/{train,test}/<class>/NNNN.jpg``; returns id -> original pixels."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, k in TREE_PER_CLASS.items():
        for cls in TREE_CLASSES:
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for j in range(k):
                a = smooth_image(rng)
                rel = f"{split}/{cls}/{j:04d}.jpg"
                (root / rel).write_bytes(jpeg_bytes(a))
                arrays[rel] = a
    return arrays


def zip_tree(root: Path, zip_path: Path, prefix="cifar10-jpg/"):
    """A zip of the tree below ``root`` with members ``<prefix>train/<class>/NNNN.jpg``."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(prefix, b"")
        for dirpath, dirnames, filenames in sorted(os.walk(root)):
            dirnames.sort()
            rel_dir = Path(dirpath).relative_to(root).as_posix()
            if rel_dir != ".":
                zf.writestr(prefix + rel_dir + "/", b"")
            for f in sorted(filenames):
                rel = f if rel_dir == "." else f"{rel_dir}/{f}"
                zf.write(Path(dirpath) / f, prefix + rel)


@pytest.fixture
def jpeg_tree(tmp_path):
    """A 40-image JPEG tree (train/test x 4 classes) and its zip."""
    root = tmp_path / "tree"
    arrays = write_tree(root)
    zip_path = tmp_path / "cifar10-jpg.zip"
    zip_tree(root, zip_path)
    return SimpleNamespace(root=root, zip=zip_path, arrays=arrays,
                           classes=sorted(TREE_CLASSES))


CIFAR_META_NAMES = ["truck", "ship", "horse", "frog", "dog", "deer", "cat", "bird",
                    "automobile", "airplane"]  # reversed, to tell label_names order from sorted


def _cifar_batch(rng, n, name):
    return {b"batch_label": name.encode(), b"labels": rng.integers(0, 10, n).tolist(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img_{name}_{j}.png".encode() for j in range(n)]}


@pytest.fixture
def cifar_pickle(tmp_path):
    """``cifar-10-batches-py`` with data_batch_1..3 (5 images each), test_batch (4 images),
    batches.meta; and ``cifar-10-python.tar.gz`` holding the same folder."""
    rng = np.random.default_rng(1)
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    batches = {}
    for name, n in [("data_batch_1", 5), ("data_batch_2", 5), ("data_batch_3", 5),
                    ("test_batch", 4)]:
        batches[name] = _cifar_batch(rng, n, name)
        with open(d / name, "wb") as f:
            pickle.dump(batches[name], f, protocol=2)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CIFAR_META_NAMES],
                     b"num_cases_per_batch": 5, b"num_vis": 3072}, f, protocol=2)
    (d / "readme.html").write_text("<html></html>")
    tgz = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(d, arcname="cifar-10-batches-py")
    return SimpleNamespace(dir=d, tgz=tgz, batches=batches, class_names=CIFAR_META_NAMES)


def write_idx(path: Path, a: np.ndarray, gz=True):
    a = np.ascontiguousarray(a, dtype=np.uint8)
    raw = struct.pack(">HBB", 0, 0x08, a.ndim) + b"".join(struct.pack(">I", s) for s in a.shape)
    raw += a.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


@pytest.fixture(params=["gz", "plain"])
def idx_dir(tmp_path, request):
    """A Fashion-MNIST folder with 6 training and 4 test images, gzipped or not."""
    rng = np.random.default_rng(2)
    gz = request.param == "gz"
    out = SimpleNamespace(root=tmp_path / "fmnist")
    out.root.mkdir()
    for prefix, n in (("train", 6), ("t10k", 4)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(out.root / f"{prefix}-images-idx3-ubyte", x, gz)
        write_idx(out.root / f"{prefix}-labels-idx1-ubyte", y, gz)
        setattr(out, f"{prefix}_x", x)
        setattr(out, f"{prefix}_y", y)
    return out


@pytest.fixture
def list_dataset(tmp_path):
    """A NUS-WIDE style list file (5 label columns, a blank line) and its images."""
    rng = np.random.default_rng(3)
    root = tmp_path / "nus"
    (root / "images" / "sub").mkdir(parents=True)
    paths = [f"images/{j:03d}.jpg" for j in range(5)] + ["images/sub/005.png"]
    labels = rng.integers(0, 2, (6, 5)).astype(np.uint8)
    labels[0] = [1, 0, 0, 1, 0]
    arrays = {}
    for p in paths:
        a = smooth_image(rng)
        arrays[p] = a
        Image.fromarray(a).save(root / p)
    lines = [f"{p} " + " ".join(map(str, row)) for p, row in zip(paths, labels)]
    lines.insert(3, "")
    list_path = root / "list.txt"
    list_path.write_text("\n".join(lines) + "\n")
    return SimpleNamespace(root=root, list=list_path, paths=paths, labels=labels, arrays=arrays)


@pytest.fixture
def keep_threads():
    """Restores torch's thread count after a test that trains with ``num_threads`` set."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]


@pytest.fixture
def cub_root(tmp_path):
    """``CUB_200_2011/`` with 3 classes x 2 images; image ids listed out of order."""
    rng = np.random.default_rng(4)
    root = tmp_path / "CUB_200_2011"
    rows = []  # (id, path, class 1-based, is_train)
    k = 0
    for c, cls in enumerate(CUB_CLASSES, 1):
        (root / "images" / cls).mkdir(parents=True)
        for j in range(2):
            k += 1
            rel = f"{cls}/{cls.split('.')[1]}_{j:04d}.jpg"
            Image.fromarray(smooth_image(rng, (20, 24))).save(root / "images" / rel)
            rows.append((k, rel, c, 1 if j == 0 else 0))
    order = [rows[i] for i in (3, 0, 5, 1, 4, 2)]  # files need not be sorted by id
    (root / "images.txt").write_text("".join(f"{i} {p}\n" for i, p, _, _ in order))
    (root / "image_class_labels.txt").write_text("".join(f"{i} {c}\n" for i, _, c, _ in order))
    (root / "train_test_split.txt").write_text("".join(f"{i} {t}\n" for i, _, _, t in order))
    (root / "classes.txt").write_text("".join(f"{c} {n}\n" for c, n in
                                              enumerate(CUB_CLASSES, 1)))
    return SimpleNamespace(root=root, rows=rows)


DOG_FOLDERS = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02085936-Maltese_dog"]


def _dogs_mat(path: Path, files, labels):
    import scipy.io

    cell = np.empty((len(files), 1), dtype=object)
    for k, f in enumerate(files):
        cell[k, 0] = np.array([f])
    scipy.io.savemat(path, {"file_list": cell, "annotation_list": cell,
                            "labels": np.asarray(labels, dtype=np.float64).reshape(-1, 1)})


@pytest.fixture
def dogs_root(tmp_path):
    """Stanford Dogs: ``Images/<wnid-name>/`` with 3 breeds, 2 train + 1 test image each."""
    rng = np.random.default_rng(5)
    root = tmp_path / "dogs"
    train, test = [], []
    for c, folder in enumerate(DOG_FOLDERS, 1):
        (root / "Images" / folder).mkdir(parents=True)
        for j in range(3):
            rel = f"{folder}/{folder.split('-')[0]}_{j}.jpg"
            Image.fromarray(smooth_image(rng)).save(root / "Images" / rel)
            (test if j == 2 else train).append((rel, c))
    _dogs_mat(root / "train_list.mat", [f for f, _ in train], [c for _, c in train])
    _dogs_mat(root / "test_list.mat", [f for f, _ in test], [c for _, c in test])
    return SimpleNamespace(root=root, train=train, test=test)
