import json
import logging
import multiprocessing as mp
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from conftest import CIFAR_ZIP, CUB_CLASSES, jpeg_bytes, zip_tree
from ssah.data import (CIFAR10_CLASSES, DATASETS, ImageDataset, build_cache, cached_array,
                       decode_image, load_cifar10, load_cub, load_digits, load_fashion_mnist,
                       load_image_folder, load_list_file, load_stanford_dogs, open_dataset,
                       read_idx)
from ssah.errors import DataError


def as_array(img):
    return np.asarray(img)


def assert_close_jpeg(img, original, tol=6.0):
    a = np.asarray(img).astype(np.float64)
    assert a.shape == original.shape
    assert np.abs(a - original).mean() < tol


# ----------------------------------------------------------------------------- digits / IDX

def test_digits_scaled_to_uint8():
    from sklearn.datasets import load_digits as sk

    ds = load_digits()
    ref = sk()
    assert len(ds) == 1797 and ds.splits is None and ds.num_classes == 10
    img = ds.image(5)
    assert img.dtype == np.uint8 and img.shape == (8, 8)
    np.testing.assert_array_equal(img, np.rint(ref.images[5] * 255 / 16).astype(np.uint8))
    assert int(ds.image(0).max()) <= 255 and ds.labels[5] == ref.target[5]
    assert ds.class_names == [str(i) for i in range(10)]
    assert load_digits().checksum == ds.checksum


def test_fashion_mnist_from_idx(idx_dir):
    ds = load_fashion_mnist(idx_dir.root)
    assert len(ds) == 10
    assert ds.splits.tolist() == ["train"] * 6 + ["test"] * 4
    np.testing.assert_array_equal(ds.labels, np.r_[idx_dir.train_y, idx_dir.t10k_y])
    np.testing.assert_array_equal(ds.image(7), idx_dir.t10k_x[1])
    np.testing.assert_array_equal(ds.image(0), idx_dir.train_x[0])
    assert ds.ids[6] == "test/00000" and ds.class_names[9] == "Ankle boot"
    assert load_fashion_mnist(idx_dir.root).ids.tolist() == ds.ids.tolist()


def test_idx_bad_magic_names_file(idx_dir, tmp_path):
    bad = tmp_path / "bad-idx"
    bad.write_bytes(b"\x12\x34\x56\x78" + bytes(100))
    with pytest.raises(DataError, match="bad-idx"):
        read_idx(str(bad))
    # a labels file where an images file is expected: wrong number of dimensions
    img = next(p for p in idx_dir.root.iterdir() if p.name.startswith("train-images"))
    lab = next(p for p in idx_dir.root.iterdir() if p.name.startswith("train-labels"))
    img.write_bytes(lab.read_bytes())
    with pytest.raises(DataError, match=img.name):
        load_fashion_mnist(idx_dir.root)


def test_idx_truncated(tmp_path):
    from conftest import write_idx

    p = write_idx(tmp_path / "x-idx3-ubyte", np.zeros((3, 4, 4), np.uint8), gz=False)
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(DataError, match="truncated"):
        read_idx(str(p))


def test_fashion_mnist_missing(tmp_path):
    with pytest.raises(DataError) as e:
        load_fashion_mnist(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(e.value)
    assert "t10k-labels-idx1-ubyte" in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_fashion_mnist(tmp_path / "empty")


@pytest.mark.shared
def test_fashion_mnist_real():
    root = "/usr/share/datasets/fashion-mnist"
    if not os.path.isdir(root):
        pytest.skip("dataset-fashion-mnist is not installed")
    ds = load_fashion_mnist(root)
    assert len(ds) == 70000 and (ds.splits == "train").sum() == 60000
    assert np.bincount(ds.labels).tolist() == [7000] * 10


# ----------------------------------------------------------------------------- CIFAR-10

def _expected_pickle(cp):
    names = ["data_batch_1", "data_batch_2", "data_batch_3", "test_batch"]
    data = np.concatenate([cp.batches[n][b"data"] for n in names])
    labels = np.concatenate([cp.batches[n][b"labels"] for n in names])
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


@pytest.mark.parametrize("which", ["dir", "parent", "tgz"])
def test_cifar_pickle_formats(cifar_pickle, which):
    path = {"dir": cifar_pickle.dir, "parent": cifar_pickle.dir.parent,
            "tgz": cifar_pickle.tgz}[which]
    ds = load_cifar10(path)
    images, labels = _expected_pickle(cifar_pickle)
    assert len(ds) == 19
    np.testing.assert_array_equal(ds.labels, labels)
    for i in (0, 7, 14, 18):
        np.testing.assert_array_equal(ds.image(i), images[i])  # exact for pickles
    assert ds.image(3).shape == (32, 32, 3) and ds.image(3).dtype == np.uint8
    assert ds.class_names == cifar_pickle.class_names  # label_names order, not sorted
    assert ds.splits.tolist() == ["train"] * 15 + ["test"] * 4
    assert ds.ids[5] == "data_batch_2/00000" and ds.ids[-1] == "test_batch/00003"
    assert load_cifar10(path).checksum == ds.checksum


def test_cifar_pickle_any_number_of_batches(cifar_pickle):
    (cifar_pickle.dir / "data_batch_2").unlink()
    ds = load_cifar10(cifar_pickle.dir)
    assert len(ds) == 14 and ds.ids[5] == "data_batch_3/00000"


def test_cifar_bad_pickle_names_file(cifar_pickle):
    (cifar_pickle.dir / "data_batch_2").write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="data_batch_2"):
        load_cifar10(cifar_pickle.dir)


def test_cifar_pickle_refuses_code(cifar_pickle, tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    with open(cifar_pickle.dir / "data_batch_1", "wb") as f:
        pickle.dump({b"data": Evil()}, f)
    with pytest.raises(DataError, match="data_batch_1"):
        load_cifar10(cifar_pickle.dir)
    assert not (tmp_path / "pwned").exists()


def test_cifar_jpeg_tree(jpeg_tree):
    ds = load_cifar10(jpeg_tree.root)
    assert len(ds) == 40 and ds.class_names == ["airplane", "bird", "cat", "dog"]
    assert ds.source.startswith("cifar10-jpg:")
    assert (ds.splits == "train").sum() == 24 and ds.splits[0] == "train"
    for i, ident in enumerate(ds.ids):
        split, cls, _ = ident.split("/")
        assert ds.splits[i] == split and ds.class_names[ds.labels[i]] == cls
    assert ds.ids[0] == "train/airplane/0000.jpg"
    for i in (0, 13, 39):
        img = ds.image(i)
        assert isinstance(img, Image.Image) and img.mode == "RGB"
        assert_close_jpeg(img, jpeg_tree.arrays[ds.ids[i]])
    again = load_cifar10(jpeg_tree.root)
    assert again.ids.tolist() == ds.ids.tolist() and again.checksum == ds.checksum


def test_cifar_tree_inside_one_folder(jpeg_tree):
    outer = jpeg_tree.root.parent / "outer"
    outer.mkdir()
    jpeg_tree.root.rename(outer / "cifar10-jpg")
    ds = load_cifar10(outer)
    assert len(ds) == 40 and ds.ids[0] == "train/airplane/0000.jpg"


def test_cifar_zip_matches_tree(jpeg_tree):
    tree = load_cifar10(jpeg_tree.root)
    ds = load_cifar10(jpeg_tree.zip)
    assert ds.ids.tolist() == tree.ids.tolist()
    np.testing.assert_array_equal(ds.labels, tree.labels)
    assert ds.splits.tolist() == tree.splits.tolist()
    assert ds.class_names == tree.class_names
    for i in (0, 21, 39):  # the same JPEG bytes decode identically
        np.testing.assert_array_equal(as_array(ds.image(i)), as_array(tree.image(i)))
    assert not any(p.name == "train" for p in jpeg_tree.zip.parent.iterdir()), "extracted?"


def _child_read(ds, q):
    q.put([np.asarray(ds.image(i)).tolist() for i in (1, 30)])


def test_zip_dataset_survives_fork_and_pickle(jpeg_tree):
    ds = load_cifar10(jpeg_tree.zip)
    expected = [np.asarray(ds.image(i)).tolist() for i in (1, 30)]  # parent opens the zip
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_read, args=(ds, q))
    p.start()
    got = q.get(timeout=20)
    p.join(20)
    assert got == expected and p.exitcode == 0
    assert np.asarray(ds.image(30)).tolist() == expected[1]  # parent still reads correctly
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(as_array(clone.image(1)), np.array(expected[0], np.uint8))


def test_cifar_missing_path_shows_layout(tmp_path):
    missing = tmp_path / "no-such-cifar"
    with pytest.raises(DataError) as e:
        load_cifar10(missing)
    msg = str(e.value)
    assert str(missing) in msg and "data_batch_1" in msg and "train/<class>" in msg
    assert msg.count("\n") >= 4


def test_cifar_unknown_file_and_empty_dir(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match="junk.bin"):
        load_cifar10(junk)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        load_cifar10(tmp_path / "empty")


# ----------------------------------------------------------------------------- folders, lists

def test_image_folder_generic(tmp_path):
    rng = np.random.default_rng(9)
    for cls, n in (("zebra", 2), ("ant", 3)):
        (tmp_path / "f" / cls / "deep").mkdir(parents=True)
        for j in range(n):
            Image.fromarray(rng.integers(0, 255, (5, 7, 3), dtype=np.uint8)).save(
                tmp_path / "f" / cls / f"{j}.png")
    Image.new("L", (4, 4)).save(tmp_path / "f" / "zebra" / "deep" / "x.bmp")
    (tmp_path / "f" / "ant" / "notes.txt").write_text("not an image")
    (tmp_path / "f" / "stray.jpg").write_bytes(jpeg_bytes(np.zeros((4, 4, 3), np.uint8)))
    ds = load_image_folder(tmp_path / "f")
    assert ds.class_names == ["ant", "zebra"] and ds.splits is None
    assert ds.ids.tolist() == ["ant/0.png", "ant/1.png", "ant/2.png", "zebra/0.png",
                               "zebra/1.png", "zebra/deep/x.bmp"]
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.image(5).mode == "RGB" and ds.image(5).size == (4, 4)
    assert load_image_folder(tmp_path / "f", mode="L").image(0).mode == "L"
    with pytest.raises(DataError) as e:
        load_image_folder(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value) and "<class_a>" in str(e.value)


def test_list_file(list_dataset):
    ds = load_list_file(list_dataset.list, list_dataset.root)
    assert ds.multilabel and ds.labels.dtype == np.uint8 and ds.labels.shape == (6, 5)
    np.testing.assert_array_equal(ds.labels, list_dataset.labels)
    assert ds.ids.tolist() == list_dataset.paths and ds.splits is None
    np.testing.assert_array_equal(as_array(ds.image(5)), list_dataset.arrays[ds.ids[5]])  # png
    assert load_list_file(list_dataset.list).ids.tolist() == ds.ids.tolist()  # default root


def test_list_file_bad_column_count(list_dataset):
    lines = list_dataset.list.read_text().splitlines()
    lines[4] += " 1"  # line 5 (line 4 is blank)
    list_dataset.list.write_text("\n".join(lines))
    with pytest.raises(DataError) as e:
        load_list_file(list_dataset.list, list_dataset.root)
    assert str(list_dataset.list) in str(e.value) and "line 5" in str(e.value)


def test_list_file_bad_value(list_dataset):
    lines = list_dataset.list.read_text().splitlines()
    lines[1] = lines[1][:-1] + "7"
    list_dataset.list.write_text("\n".join(lines))
    with pytest.raises(DataError, match="line 2.*'7'"):
        load_list_file(list_dataset.list, list_dataset.root)


def test_list_file_missing_image(list_dataset, caplog):
    (list_dataset.root / list_dataset.paths[4]).unlink()  # listed on line 6
    with pytest.raises(DataError) as e:
        load_list_file(list_dataset.list, list_dataset.root)
    assert "line 6" in str(e.value) and "004.jpg" in str(e.value)
    with caplog.at_level(logging.WARNING, logger="ssah.data"):
        ds = load_list_file(list_dataset.list, list_dataset.root, skip_bad=True)
    assert len(ds) == 5 and ds.skipped == [list_dataset.paths[4]] and "not found" in caplog.text
    np.testing.assert_array_equal(ds.labels, np.delete(list_dataset.labels, 4, axis=0))


# ----------------------------------------------------------------------------- CUB, Dogs

@pytest.mark.parametrize("parent", [False, True])
def test_cub(cub_root, parent):
    ds = load_cub(cub_root.root.parent if parent else cub_root.root)
    rows = sorted(cub_root.rows)
    assert len(ds) == 6 and ds.class_names == CUB_CLASSES
    assert ds.ids.tolist() == [r[1] for r in rows]
    assert ds.labels.tolist() == [r[2] - 1 for r in rows] == [0, 0, 1, 1, 2, 2]
    assert ds.splits.tolist() == ["train", "test"] * 3
    assert ds.image(3).size == (24, 20)


def test_cub_errors(cub_root):
    (cub_root.root / "classes.txt").unlink()
    assert load_cub(cub_root.root).class_names == CUB_CLASSES  # from the folder names
    p = cub_root.root / "image_class_labels.txt"
    p.write_text(p.read_text() + "7 1 extra\n")
    with pytest.raises(DataError, match="image_class_labels.txt, line 7"):
        load_cub(cub_root.root)
    p.write_text("\n".join(p.read_text().splitlines()[:5]))
    with pytest.raises(DataError, match="image_class_labels.txt: no entry"):
        load_cub(cub_root.root)
    with pytest.raises(DataError) as e:
        load_cub(cub_root.root.parent / "missing")
    assert "missing" in str(e.value) and "train_test_split.txt" in str(e.value)


def test_cub_missing_image_skip_bad(cub_root):
    victim = cub_root.root / "images" / sorted(cub_root.rows)[2][1]
    victim.unlink()
    with pytest.raises(DataError, match=victim.name):
        load_cub(cub_root.root)
    ds = load_cub(cub_root.root, skip_bad=True)
    assert len(ds) == 5 and ds.labels.tolist() == [0, 0, 1, 2, 2] and len(ds.skipped) == 1


def test_stanford_dogs(dogs_root):
    ds = load_stanford_dogs(dogs_root.root)
    assert len(ds) == 9
    assert ds.ids.tolist() == [f for f, _ in dogs_root.train + dogs_root.test]
    assert ds.labels.tolist() == [0, 0, 1, 1, 2, 2, 0, 1, 2]
    assert ds.splits.tolist() == ["train"] * 6 + ["test"] * 3
    assert ds.class_names == ["Chihuahua", "Japanese_spaniel", "Maltese_dog"]
    assert ds.image(8).mode == "RGB"
    lists = dogs_root.root / "lists"
    lists.mkdir()
    for name in ("train_list.mat", "test_list.mat"):
        (dogs_root.root / name).rename(lists / name)
    assert load_stanford_dogs(dogs_root.root).ids.tolist() == ds.ids.tolist()


def test_stanford_dogs_errors(dogs_root):
    with pytest.raises(DataError) as e:
        load_stanford_dogs(dogs_root.root / "nope")
    assert "nope" in str(e.value) and "train_list.mat" in str(e.value)
    (dogs_root.root / "test_list.mat").write_bytes(b"garbage")
    with pytest.raises(DataError, match="test_list.mat"):
        load_stanford_dogs(dogs_root.root)


# ----------------------------------------------------------------------------- dispatch

def test_open_dataset(jpeg_tree, list_dataset, cub_root, dogs_root, cifar_pickle):
    assert len(open_dataset("digits")) == 1797
    assert len(open_dataset("cifar10", jpeg_tree.zip)) == 40
    assert len(open_dataset("cifar10", cifar_pickle.tgz)) == 19
    assert len(open_dataset("folder", jpeg_tree.root / "train")) == 24
    assert len(open_dataset("list", list_dataset.list, root=list_dataset.root)) == 6
    assert len(open_dataset("cub", cub_root.root)) == 6
    assert len(open_dataset("dogs", dogs_root.root)) == 9
    with pytest.raises(DataError) as e:
        open_dataset("imagenet")
    for name in DATASETS:
        assert name in str(e.value)
    with pytest.raises(DataError, match="expected layout"):
        open_dataset("cub")


# ----------------------------------------------------------------------------- decoding

@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "LA", "I;16", "I", "1", "F"])
def test_decode_any_mode(mode, tmp_path):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (6, 5, 3), dtype=np.uint8))
    if mode == "I;16":
        img = Image.fromarray(np.full((6, 5), 65535, dtype=np.uint16))
        assert img.mode.startswith("I;16")
    elif mode == "F":
        img = Image.fromarray(np.full((6, 5), 0.5, dtype=np.float32))
    else:
        img = rgb.convert(mode)
    fmt = {"CMYK": "TIFF", "F": "TIFF", "I": "TIFF"}.get(mode, "PNG")
    p = tmp_path / f"x.{fmt.lower()}"
    img.save(p, format=fmt)
    out = decode_image(str(p), "x")
    assert out.mode == "RGB" and out.size == (5, 6)
    assert decode_image(p.read_bytes(), "x", mode="L").mode == "L"
    if mode == "I;16":
        assert np.asarray(out).min() == 255  # scaled, not clipped to garbage
    if mode == "F":
        assert abs(int(np.asarray(out)[0, 0, 0]) - 128) <= 1


def test_decode_transparency_onto_white(tmp_path):
    a = np.zeros((4, 4, 4), np.uint8)  # fully transparent black
    p = tmp_path / "t.png"
    Image.fromarray(a, "RGBA").save(p)
    assert np.asarray(decode_image(p, "t")).min() == 255


def test_corrupt_and_truncated_images(jpeg_tree):
    victim = jpeg_tree.root / "train" / "cat" / "0002.jpg"
    victim.write_bytes(b"this is not a jpeg")
    other = jpeg_tree.root / "test" / "dog" / "0001.jpg"
    other.write_bytes(other.read_bytes()[:200])
    ds = load_cifar10(jpeg_tree.root)
    i = ds.ids.tolist().index("train/cat/0002.jpg")
    with pytest.raises(DataError, match=str(victim)):
        ds.image(i)
    with pytest.raises(DataError, match="0001.jpg"):
        ds.image(ds.ids.tolist().index("test/dog/0001.jpg"))


def test_decompression_bomb_guard(tmp_path):
    p = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(p)
    assert decode_image(p, "big", max_pixels=60_000).size == (300, 200)
    with pytest.raises(DataError, match="big.png.*pixels"):
        decode_image(p, str(p), max_pixels=59_999)
    (tmp_path / "f" / "a").mkdir(parents=True)
    Image.new("RGB", (300, 200)).save(tmp_path / "f" / "a" / "big.png")
    ds = load_image_folder(tmp_path / "f", max_pixels=1000)
    with pytest.raises(DataError, match="big.png"):
        ds.image(0)


# ----------------------------------------------------------------------------- cache

class CountingLoader:
    def __init__(self, loader):
        self.loader, self.calls = loader, 0

    def __call__(self, i):
        self.calls += 1
        return self.loader(i)


def counted(ds):
    c = CountingLoader(ds._loader)
    return ImageDataset(ds.labels, ds.ids, c, ds.source, ds.class_names, ds.splits,
                        ds.checksum), c


def test_cache_reused_without_decoding(jpeg_tree, tmp_path):
    ds, calls = counted(load_cifar10(jpeg_tree.zip))
    cache = tmp_path / "cache"
    a = cached_array(ds, 24, cache, progress=False)
    assert calls.calls == 40 and a.shape == (40, 24, 24, 3) and a.dtype == np.uint8
    assert isinstance(a, np.memmap) and not a.flags.writeable
    expected = np.asarray(ds.image(17).resize((24, 24), Image.BICUBIC))
    np.testing.assert_array_equal(a[17], expected)
    calls.calls = 0
    b = cached_array(ds, 24, cache, progress=False)
    assert calls.calls == 0
    np.testing.assert_array_equal(a, b)
    ds2, calls2 = counted(load_cifar10(jpeg_tree.zip))  # a fresh load finds the same file
    cached_array(ds2, 24, cache, progress=False)
    assert calls2.calls == 0
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".npy")
    meta = json.loads((cache / files[0]).read_text())
    assert meta["fields"]["size"] == 24 and meta["fields"]["source"] == ds.source
    assert meta["skipped"] == []
    cached_array(ds, 16, cache, progress=False)  # another size: another file
    assert calls.calls == 40 and len(list(cache.iterdir())) == 4


def test_cache_invalidated_when_zip_changes(jpeg_tree, tmp_path):
    cache = tmp_path / "cache"
    ds, calls = counted(load_cifar10(jpeg_tree.zip))
    a = np.array(cached_array(ds, 16, cache, progress=False))
    i = ds.ids.tolist().index("test/cat/0000.jpg")
    (jpeg_tree.root / "test" / "cat" / "0000.jpg").write_bytes(
        jpeg_bytes(np.full((16, 16, 3), 7, np.uint8)))
    zip_tree(jpeg_tree.root, jpeg_tree.zip)
    ds2, calls2 = counted(load_cifar10(jpeg_tree.zip))
    assert ds2.checksum != ds.checksum
    b = cached_array(ds2, 16, cache, progress=False)
    assert calls2.calls == 40
    assert np.abs(b[i].astype(int) - 7).max() <= 2 and not np.array_equal(a[i], b[i])
    np.testing.assert_array_equal(np.delete(a, i, 0), np.delete(np.asarray(b), i, 0))


def test_cache_invalidated_when_tree_file_changes(jpeg_tree, tmp_path):
    ds, _ = counted(load_cifar10(jpeg_tree.root))
    cached_array(ds, 16, tmp_path / "c", progress=False)
    f = jpeg_tree.root / "train" / "dog" / "0003.jpg"
    f.write_bytes(jpeg_bytes(np.zeros((16, 16, 3), np.uint8)))
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    ds2, calls2 = counted(load_cifar10(jpeg_tree.root))
    assert ds2.checksum != ds.checksum
    cached_array(ds2, 16, tmp_path / "c", progress=False)
    assert calls2.calls == 40


def test_cache_skip_bad(jpeg_tree, tmp_path, caplog):
    for rel in ("train/bird/0001.jpg", "test/airplane/0003.jpg"):
        (jpeg_tree.root / rel).write_bytes(b"\xff\xd8\xff garbage")
    ds = load_cifar10(jpeg_tree.root)
    with pytest.raises(DataError, match="0001.jpg|0003.jpg"):
        cached_array(ds, 8, tmp_path / "c", progress=False)
    assert [p for p in (tmp_path / "c").iterdir()] == []  # no partial or temp file left
    with caplog.at_level(logging.WARNING, logger="ssah.data"):
        res = build_cache(ds, 8, tmp_path / "c", skip_bad=True, progress=False)
    assert "skipped 2" in caplog.text
    assert sorted(res.skipped_ids) == ["test/airplane/0003.jpg", "train/bird/0001.jpg"]
    bad = [ds.ids.tolist().index(s) for s in res.skipped_ids]
    assert sorted(res.skipped_indices.tolist()) == sorted(bad)
    assert res.keep.sum() == 38 and not res.keep[bad].any()
    assert (res.array[bad] == 0).all() and res.array[res.keep].mean() > 20
    meta = json.loads(open(res.path[:-4] + ".json").read())
    assert [s["id"] for s in meta["skipped"]] == sorted(res.skipped_ids,
                                                         key=ds.ids.tolist().index)
    again = build_cache(ds, 8, tmp_path / "c", skip_bad=True, progress=False)
    assert not again.built and again.skipped_ids == res.skipped_ids
    with pytest.raises(DataError, match="2 images"):  # the reused cache still reports them
        cached_array(ds, 8, tmp_path / "c", progress=False)


def test_cache_native_size_and_gray(cifar_pickle, tmp_path):
    ds = load_cifar10(cifar_pickle.dir)
    a = cached_array(ds, None, tmp_path, progress=False)
    assert a.shape == (19, 32, 32, 3)
    np.testing.assert_array_equal(a[10], ds.image(10))
    g = cached_array(load_digits(), 16, tmp_path, channels=1, progress=False)
    assert g.shape == (1797, 16, 16, 1)
    d = cached_array(load_digits(), None, tmp_path, channels=3, progress=False)
    np.testing.assert_array_equal(d[3, :, :, 1], load_digits().image(3))


def test_cache_native_size_must_agree(tmp_path):
    imgs = [np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4, 3), np.uint8)]
    ds = ImageDataset([0, 1], ["a", "b"], imgs.__getitem__, "test:mixed")
    with pytest.raises(DataError, match="image b"):
        cached_array(ds, None, tmp_path, progress=False)
    assert cached_array(ds, 6, tmp_path, progress=False).shape == (2, 6, 6, 3)


# ----------------------------------------------------------------------------- real data

@pytest.mark.shared
def test_real_cifar10_zip(tmp_path):
    if not CIFAR_ZIP.is_file():
        pytest.skip(f"{CIFAR_ZIP} not present")
    ds = load_cifar10(CIFAR_ZIP)
    assert len(ds) == 60000 and ds.class_names == list(CIFAR10_CLASSES)
    assert np.bincount(ds.labels).tolist() == [6000] * 10
    assert (ds.splits == "test").sum() == 10000
    img = ds.image(12345)
    assert img.size == (32, 32) and img.mode == "RGB"
    assert ds.class_names[ds.labels[12345]] == ds.ids[12345].split("/")[1]
