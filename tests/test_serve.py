"""The image search service (``ssah serve``): every endpoint, limit, bad input, auth,
persistence across a restart and searches running while items are added and removed."""
from __future__ import annotations

import hashlib
import io
import shutil
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

fastapi = pytest.importorskip("fastapi")
pytest.importorskip("httpx")

with warnings.catch_warnings():        # starlette's notice about httpx's successor
    warnings.filterwarnings("ignore", message="Using `httpx` with")
    from fastapi.testclient import TestClient  # noqa: E402

from ssah.bench.serve import synthetic_checkpoint  # noqa: E402
from ssah.cli import main as ssah_main  # noqa: E402
from ssah.serve.app import Limits, create_app  # noqa: E402
from ssah.train.encode import ImageEncoder  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with")

TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def digit_image(i: int) -> np.ndarray:
    from sklearn.datasets import load_digits
    return np.rint(load_digits().images[i] * (255.0 / 16.0)).astype(np.uint8)


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def fit_hash_layer(checkpoint: Path, seed: int = 0) -> None:
    """Give a random H-Net label-aware codes in a second: keep its random backbone and solve
    its hash layer by ridge regression onto one random code per digit class (a stand-in for
    training, which takes a minute on a busy 2-core machine)."""
    import torch
    from sklearn.datasets import load_digits
    from ssah.train import load_model
    from ssah.train.build import to_tensor
    hnet, _, path, state = load_model(checkpoint, "cpu")
    d = load_digits()
    x = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    with torch.no_grad():
        f = hnet.backbone(to_tensor(x, torch.device("cpu"), False)).double()
    f = torch.cat([f, torch.ones(len(f), 1, dtype=f.dtype)], 1)
    g = torch.Generator().manual_seed(seed)
    classes = torch.randint(0, 2, (10, hnet.bits), generator=g).double() * 2 - 1
    target = classes[torch.as_tensor(d.target)]
    w = torch.linalg.solve(f.T @ f + 1e-3 * torch.eye(f.shape[1], dtype=f.dtype), f.T @ target)
    state["hnet"]["hash_layer.weight"] = w[:-1].T.float().contiguous()
    state["hnet"]["hash_layer.bias"] = w[-1].float().contiguous()
    from ssah.train.checkpoint import save_checkpoint
    path.unlink()
    save_checkpoint({k: v for k, v in state.items() if k not in ("format", "sha256")},
                    path.parent, 0, keep=1)


def make_served(tmp: Path) -> SimpleNamespace:
    """A 12-bit H-Net for 8x8 digits (see :func:`fit_hash_layer`), the codes of all 1,797
    digits from ``ssah encode`` and their flat index."""
    ckpt = synthetic_checkpoint(tmp / "run", bits=12, channels=1, size=8, dataset="digits")
    fit_hash_layer(ckpt)
    codes = tmp / "codes.npz"
    assert ssah_main(["encode", "--checkpoint", str(tmp / "run"), "--out", str(codes), "--quiet",
                      "--cache-dir", str(tmp / "cache"), "--device", "cpu"]) == 0
    assert ssah_main(["index", "build", "--codes", str(codes), "--out", str(tmp / "idx")]) == 0
    return SimpleNamespace(tmp=tmp, checkpoint=ckpt, run=tmp / "run", index=tmp / "idx",
                           encoder=ImageEncoder(ckpt, "cpu"))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    return make_served(tmp_path_factory.mktemp("serve"))


def fresh_index(served, tmp_path) -> Path:
    """A private copy of the index, for tests that write."""
    dst = tmp_path / "idx"
    shutil.copytree(served.index, dst)
    return dst


def digest(folder: Path) -> str:
    """The saved index and the stored images (not the writers' lock file)."""
    h = hashlib.sha256((folder / "index.ssah").read_bytes())
    for f in sorted((folder / "images").glob("*")) if (folder / "images").is_dir() else []:
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def client(served):
    app = create_app(served.encoder, served.index)          # read-only
    with TestClient(app) as c:
        yield c


# ---------------------------------------------------------------------------------------------
# read endpoints
# ---------------------------------------------------------------------------------------------
def test_health_stats_openapi_and_pages(client):
    assert client.get("/healthz").json() == {"status": "ok", "count": 1797}
    s = client.get("/stats").json()
    assert (s["count"], s["bits"], s["engine"], s["writable"]) == (1797, 12, "flat", False)
    assert s["model"]["backbone"] == "small-cnn" and s["model"]["bits"] == 12
    assert s["labels"] and s["class_names"][:3] == ["0", "1", "2"]
    assert s["limits"]["max_k"] == 1000 and s["limits"]["max_upload_bytes"] == 10 * 1024 * 1024
    spec = client.get("/openapi.json").json()
    for path in ("/search", "/items", "/items/{item_id}", "/items/{item_id}/image", "/stats",
                 "/healthz", "/random"):
        assert path in spec["paths"], path
    body = spec["paths"]["/search"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)
    page = client.get("/")
    assert page.status_code == 200 and 'id="drop"' in page.text and "Random database image" in page.text
    assert "http" not in page.text.split("<footer>")[0]          # no external resources
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200
    assert "openapi.json" in client.get("/api").text
    assert 0 <= client.get("/random").json()["id"] < 1797


def test_search_by_id_code_and_image_agree(client, served):
    r = client.post("/search", json={"id": 5, "k": 5})
    assert r.status_code == 200
    res = r.json()
    assert res["query"]["type"] == "id" and res["query"]["label"] == 5
    rows = res["results"]
    assert len(rows) == 5 and rows[0]["distance"] == 0
    assert [x["distance"] for x in rows] == sorted(x["distance"] for x in rows)
    assert all({"id", "distance", "label", "name", "image_url"} <= set(x) for x in rows)
    assert rows[0]["image_url"] == f"/items/{rows[0]['id']}/image"
    code = res["query"]["code"]
    by_code = client.post("/search", json={"code": code, "k": 5}).json()
    assert by_code["query"]["type"] == "code" and by_code["results"] == rows
    spaced = client.post("/search", json={"code": code[:6] + " " + code[6:], "k": 5}).json()
    assert spaced["results"] == rows
    # the image of item 5 encodes to item 5's stored code
    up = client.post("/search", files={"image": ("five.png", png(digit_image(5)), "image/png")},
                     data={"k": "5"})
    assert up.status_code == 200
    got = up.json()
    assert got["query"]["type"] == "image" and got["query"]["code"] == code
    assert got["results"] == rows and got["encode_ms"] >= 0 and got["took_ms"] > 0
    raw = client.post("/search?k=5", content=png(digit_image(5)),
                      headers={"content-type": "image/png"})
    assert raw.status_code == 200 and raw.json()["results"] == rows


def test_search_radius_label_filter_and_k(client):
    r = client.post("/search", json={"id": 5, "radius": 2}).json()
    assert r["results"] and all(x["distance"] <= 2 for x in r["results"])
    small = client.post("/search", json={"id": 5, "radius": 12, "k": 7}).json()
    assert len(small["results"]) == 7 and small["truncated"] is True
    f = client.post("/search", json={"id": 5, "k": 20, "label": 3}).json()
    assert len(f["results"]) == 20 and {x["label"] for x in f["results"]} == {3}
    q = client.post("/search?k=3&label=3", json={"id": 5}).json()
    assert len(q["results"]) == 3 and {x["label"] for x in q["results"]} == {3}
    big = client.post("/search", json={"id": 5, "k": 1000}).json()
    assert len(big["results"]) == 1000


def test_item_metadata_and_thumbnail(client):
    item = client.get("/items/5").json()
    assert item["id"] == 5 and item["label"] == 5 and item["name"] == "0005"
    assert len(item["code"]) == 12 and set(item["code"]) <= {"0", "1"}
    r = client.get("/items/5/image")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(r.content))
    assert img.size == (128, 128)                # the 8x8 digit enlarged 16x, nearest
    a = np.asarray(img)
    assert np.array_equal(a[::16, ::16], digit_image(5))
    assert Image.open(io.BytesIO(client.get("/items/5/image?size=64").content)).size == (64, 64)
    for url, status in (("/items/99999", 404), ("/items/99999/image", 404), ("/items/-1", 404),
                        ("/items/abc", 400), ("/items/5/image?size=4", 400),
                        ("/items/5/image?size=big", 400), ("/nowhere", 404)):
        r = client.get(url)
        assert r.status_code == status and r.json()["error"], url


# ---------------------------------------------------------------------------------------------
# bad input: a clear 4xx, nothing changes, the server keeps serving
# ---------------------------------------------------------------------------------------------
TRUNCATED_JPEG = jpeg(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))[:300]

BAD_SEARCHES = [
    ("not an image", dict(files={"image": ("notes.txt", b"hello, not pixels", "text/plain")}),
     400, "cannot decode image notes.txt"),
    ("truncated jpeg", dict(files={"image": ("cut.jpg", TRUNCATED_JPEG, "image/jpeg")}), 400,
     "cut.jpg"),
    ("empty file", dict(files={"image": ("empty.png", b"", "image/png")}), 400, "empty"),
    ("multipart without a file", dict(data={"k": "3"}, files={"other": (None, "x")}), 400,
     "no image file"),
    ("empty body", dict(content=b"", headers={"content-type": "application/json"}), 400,
     "empty request body"),
    ("no body at all", dict(), 400, "empty request body"),
    ("bad json", dict(content=b'{"id": 3', headers={"content-type": "application/json"}), 400,
     "invalid JSON"),
    ("json list", dict(json=[1, 2]), 400, "must be an object"),
    ("unknown id", dict(json={"id": 123456}), 404, "unknown id 123456"),
    ("negative id", dict(json={"id": -3}), 404, "unknown id"),
    ("huge id", dict(json={"id": 2**70}), 404, "unknown id"),
    ("id as float", dict(json={"id": 1.5}), 400, "'id' must be"),
    ("code too short", dict(json={"code": "0101"}), 400, "has 4 bits, the index holds 12-bit"),
    ("code not binary", dict(json={"code": "01010101012x"}), 400, "0s and 1s"),
    ("code not a string", dict(json={"code": 5}), 400, "string of 0s and 1s"),
    ("both id and code", dict(json={"id": 1, "code": "0" * 12}), 400, "exactly one query"),
    ("neither", dict(json={"k": 3}), 400, "exactly one query"),
    ("unknown key", dict(json={"id": 1, "kk": 3}), 400, "unknown key"),
    ("k zero", dict(json={"id": 1, "k": 0}), 400, "between 1 and 1000"),
    ("k too big", dict(json={"id": 1, "k": 1001}), 400, "between 1 and 1000"),
    ("k not a number", dict(json={"id": 1, "k": "ten"}), 400, "'k' must be an integer"),
    ("k bool", dict(json={"id": 1, "k": True}), 400, "'k' must be an integer"),
    ("k in the query string", dict(json={"id": 1}, params={"k": "-2"}), 400, "between 1"),
    ("radius negative", dict(json={"id": 1, "radius": -1}), 400, "'radius'"),
    ("radius over bits", dict(json={"id": 1, "radius": 13}), 400, "between 0 and 12"),
    ("unknown query parameter", dict(json={"id": 1}, params={"q": "1"}), 400, "unknown query"),
    ("unsupported type", dict(content=b"id=1", headers={"content-type": "text/plain"}), 415,
     "unsupported Content-Type"),
]


@pytest.mark.parametrize("what,kwargs,status,needle", BAD_SEARCHES, ids=[b[0] for b in BAD_SEARCHES])
def test_bad_search_input_is_a_clear_4xx(client, served, what, kwargs, status, needle):
    before = digest(served.index)
    r = client.post("/search", **kwargs)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]
    assert "Traceback" not in r.text and "BytesIO" not in r.text
    assert client.get("/healthz").json()["count"] == 1797
    assert digest(served.index) == before


def test_wrong_methods_are_json_errors(client):
    r = client.put("/search", json={"id": 1})
    assert r.status_code == 405 and "not allowed" in r.json()["error"]
    r = client.get("/search")
    assert r.status_code == 405


# ---------------------------------------------------------------------------------------------
# limits
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def limited(served):
    limits = Limits(max_upload_mb=0.02, max_pixels=1000, max_k=50, timeout=0.5)
    app = create_app(served.encoder, served.index, limits=limits)
    with TestClient(app) as c:
        yield c


def test_upload_size_limit(limited):
    ok = limited.post("/search", content=png(digit_image(1)), headers={"content-type": "image/png"})
    assert ok.status_code == 200
    blob = b"\x89PNG" + bytes(30_000)
    r = limited.post("/search", files={"image": ("big.png", blob, "image/png")})
    assert r.status_code == 413 and "upload limit of 0.02 MB" in r.json()["error"]

    def chunks():                 # no Content-Length: counted while streaming
        for _ in range(10):
            yield bytes(4096)
    r = limited.post("/search", content=chunks(), headers={"content-type": "image/png"})
    assert r.status_code == 413 and "upload limit" in r.json()["error"]
    assert limited.get("/healthz").status_code == 200


def test_pixel_limit_guards_against_decompression_bombs(limited):
    bomb = png(np.zeros((2000, 2000), dtype=np.uint8))       # 4 Mpx, a few KB compressed
    assert len(bomb) < 20_000
    r = limited.post("/search", files={"image": ("bomb.png", bomb, "image/png")})
    assert r.status_code == 413 and "over the limit of 1,000 pixels" in r.json()["error"]
    ok = limited.post("/search", files={"image": ("ok.png", png(digit_image(2)), "image/png")})
    assert ok.status_code == 200


def test_k_limit(limited):
    assert limited.post("/search", json={"id": 1, "k": 50}).status_code == 200
    r = limited.post("/search", json={"id": 1, "k": 51})
    assert r.status_code == 400 and "between 1 and 50" in r.json()["error"]
    r = limited.post("/search", json={"id": 1, "radius": 12})     # capped at max_k
    assert len(r.json()["results"]) == 50 and r.json()["truncated"]


def test_request_timeout(limited, monkeypatch):
    service = limited.app.state.service
    real = service.encoder.encode

    def slow(*a, **kw):
        time.sleep(1.5)
        return real(*a, **kw)
    monkeypatch.setattr(service.encoder, "encode", slow)
    t = time.perf_counter()
    r = limited.post("/search", files={"image": ("q.png", png(digit_image(3)), "image/png")})
    assert r.status_code == 504 and "timed out after 0.5 s" in r.json()["error"]
    assert time.perf_counter() - t < 1.4
    assert limited.post("/search", json={"id": 3}).status_code == 200


def test_bad_limits_are_refused(served):
    with pytest.raises(Exception, match="max_k"):
        create_app(served.encoder, served.index, limits=Limits(max_k=0))


# ---------------------------------------------------------------------------------------------
# writes: auth, persistence, nothing changes on failure
# ---------------------------------------------------------------------------------------------
def test_read_only_without_a_token(client, served):
    before = digest(served.index)
    r = client.post("/items", files={"image": ("a.png", png(digit_image(1)), "image/png")},
                    headers=AUTH)
    assert r.status_code == 403 and "read-only" in r.json()["error"]
    r = client.delete("/items/3", headers=AUTH)
    assert r.status_code == 403 and "--token-file" in r.json()["error"]
    assert digest(served.index) == before


def test_auth_missing_wrong_and_right_token(served, tmp_path):
    idx = fresh_index(served, tmp_path)
    files = {"image": ("a.png", png(digit_image(1)), "image/png")}
    with TestClient(create_app(served.encoder, idx, token=TOKEN)) as c:
        r = c.post("/items", files=files)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert "Authorization" in r.json()["error"]
        r = c.post("/items", files=files, headers={"Authorization": f"Basic {TOKEN}"})
        assert r.status_code == 401
        r = c.post("/items", files=files, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 403 and r.json()["error"] == "invalid token"
        r = c.post("/items", files=files, headers={"Authorization": f"Bearer {TOKEN}x"})
        assert r.status_code == 403
        assert c.delete("/items/3").status_code == 401
        assert c.delete("/items/3", headers={"Authorization": "Bearer nope"}).status_code == 403
        assert c.get("/healthz").json()["count"] == 1797
        r = c.post("/items", files=files, headers=AUTH)
        assert r.status_code == 201 and r.json()["count"] == 1798


def test_add_remove_persist_across_restart(served, tmp_path):
    idx = fresh_index(served, tmp_path)
    seven = png(digit_image(7))
    with TestClient(create_app(served.encoder, idx, token=TOKEN)) as c:
        r = c.post("/items", headers=AUTH, data={"label": "7"},
                   files=[("image", ("seven.png", seven, "image/png")),
                          ("image", ("one.jpg", jpeg(np.stack([digit_image(1)] * 3, -1)),
                                     "image/jpeg"))])
        assert r.status_code == 201, r.text
        added = r.json()["added"]
        assert [a["id"] for a in added] == [1797, 1798] and r.json()["count"] == 1799
        item = c.get("/items/1797").json()
        assert item["label"] == 7 and item["name"] == "seven.png" and item["path"].startswith("images/")
        assert (idx / item["path"]).is_file()
        thumb = Image.open(io.BytesIO(c.get("/items/1797/image?size=64").content))
        assert thumb.size == (64, 64)
        # the new item is found by its own image
        res = c.post("/search", files={"image": ("q.png", seven, "image/png")},
                     data={"k": "1000", "label": "7"}).json()["results"]
        assert any(x["id"] == 1797 and x["distance"] == 0 for x in res)
        assert c.get("/items/5").json()["path"] == ""            # old items: no file, a name
        assert c.get("/items/5/image").status_code == 200
    # a restart keeps the additions
    with TestClient(create_app(served.encoder, idx, token=TOKEN)) as c:
        assert c.get("/stats").json()["count"] == 1799
        assert c.get("/items/1798").json()["name"] == "one.jpg"
        path = idx / c.get("/items/1797").json()["path"]
        r = c.delete("/items/1797", headers=AUTH)
        assert r.status_code == 200 and r.json() == {"removed": 1797, "count": 1798}
        assert not path.exists()
        assert c.get("/items/1797").status_code == 404
        r = c.delete("/items/1797", headers=AUTH)
        assert r.status_code == 404 and "unknown id 1797" in r.json()["error"]
        assert c.delete("/items/abc", headers=AUTH).status_code == 400
    with TestClient(create_app(served.encoder, idx, token=TOKEN)) as c:
        assert c.get("/stats").json()["count"] == 1798
        assert c.get("/items/1797").status_code == 404
        assert c.get("/items/1798").status_code == 200


@pytest.mark.parametrize("what,kwargs,status", [
    ("one bad image among good ones",
     dict(files=[("image", ("good.png", png(digit_image(1)), "image/png")),
                 ("image", ("bad.png", b"not a png", "image/png"))]), 400),
    ("empty body", dict(content=b"", headers={"content-type": "multipart/form-data; boundary=x"}), 400),
    ("no file", dict(data={"label": "3"}), 415),
    ("multipart without a file", dict(data={"label": "3"}, files={"other": (None, "x")}), 400),
    ("labels do not match", dict(data={"label": ["1", "2"]},
                                 files=[("image", ("a.png", png(digit_image(1)), "image/png"))] * 3), 400),
    ("bad label", dict(data={"label": "x"},
                       files={"image": ("a.png", png(digit_image(1)), "image/png")}), 400),
    ("unknown field", dict(data={"colour": "red"},
                           files={"image": ("a.png", png(digit_image(1)), "image/png")}), 400),
    ("json", dict(json={"code": "0" * 12}), 415),
])
def test_bad_add_changes_nothing(served, tmp_path, what, kwargs, status):
    idx = fresh_index(served, tmp_path)
    before = digest(idx)
    with TestClient(create_app(served.encoder, idx, token=TOKEN)) as c:
        kwargs = dict(kwargs)
        headers = {**AUTH, **kwargs.pop("headers", {})}
        r = c.post("/items", headers=headers, **kwargs)
        assert r.status_code == status, r.text
        assert r.json()["error"]
        assert c.get("/healthz").json()["count"] == 1797
    assert digest(idx) == before


def test_failed_save_is_rolled_back(served, tmp_path, monkeypatch):
    idx = fresh_index(served, tmp_path)
    before = digest(idx)
    with TestClient(create_app(served.encoder, idx, token=TOKEN)) as c:
        index = c.app.state.service.index

        def broken(path):
            raise OSError(28, "No space left on device")
        monkeypatch.setattr(index, "save", broken)
        r = c.post("/items", headers=AUTH,
                   files={"image": ("a.png", png(digit_image(1)), "image/png")})
        assert r.status_code == 500 and "nothing changed" in r.json()["error"]
        assert c.get("/healthz").json()["count"] == 1797
        r = c.delete("/items/4", headers=AUTH)
        assert r.status_code == 500 and c.get("/items/4").status_code == 200
        res = c.post("/search", json={"id": 4, "k": 1000}).json()
        assert res["query"]["id"] == 4 and 4 in [x["id"] for x in res["results"]]
    assert digest(idx) == before


def test_reloads_an_index_changed_by_another_process(served, tmp_path):
    from ssah.index import HammingIndex
    idx = fresh_index(served, tmp_path)
    with TestClient(create_app(served.encoder, idx)) as c:
        service = c.app.state.service
        service.reload_interval = 0.0
        other = HammingIndex.load(idx)
        other.remove([0, 1, 2])
        time.sleep(0.01)
        other.save(idx)
        assert c.get("/stats").json()["count"] == 1794
        assert c.get("/items/0").status_code == 404


# ---------------------------------------------------------------------------------------------
# concurrency
# ---------------------------------------------------------------------------------------------
def test_searches_during_adds_and_removes(served, tmp_path):
    idx = fresh_index(served, tmp_path)
    images = [png(digit_image(i)) for i in range(8)]
    with TestClient(create_app(served.encoder, idx, token=TOKEN)) as c:
        stop = threading.Event()
        failures = []

        def writer():
            n = 0
            while not stop.is_set() and n < 12:
                r = c.post("/items", headers=AUTH,
                           files={"image": ("w.png", images[n % 8], "image/png")})
                if r.status_code != 201:
                    failures.append(("add", r.status_code, r.text))
                    return
                new = r.json()["added"][0]["id"]
                if n % 2:
                    d = c.delete(f"/items/{new}", headers=AUTH)
                    if d.status_code != 200:
                        failures.append(("delete", d.status_code, d.text))
                n += 1

        def reader(j):
            out = []
            for t in range(15):
                if t % 3 == 0:
                    r = c.post("/search", files={"image": ("q.png", images[j % 8], "image/png")},
                               data={"k": "20"})
                else:
                    r = c.post("/search", json={"id": (j * 31 + t) % 1797, "k": 20})
                out.append(r.status_code)
                if r.status_code != 200 or len(r.json()["results"]) != 20:
                    failures.append(("search", r.status_code, r.text[:200]))
            return out

        w = threading.Thread(target=writer)
        w.start()
        with ThreadPoolExecutor(6) as pool:
            codes = [s for out in pool.map(reader, range(6)) for s in out]
        stop.set()
        w.join()
        assert not failures, failures[:3]
        assert codes and set(codes) == {200}
        final = c.get("/stats").json()["count"]
    with TestClient(create_app(served.encoder, idx)) as c:       # what was saved is consistent
        assert c.get("/stats").json()["count"] == final


# ---------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------
def test_serve_cli_errors_are_one_line(served, tmp_path, capsys):
    from ssah.cli import main
    from ssah.serve.cli import read_token
    empty = tmp_path / "token"
    empty.write_text("\n")
    with pytest.raises(Exception, match="is empty"):
        read_token(empty)
    (tmp_path / "good").write_text(f"{TOKEN}\n")
    assert read_token(tmp_path / "good") == TOKEN
    assert main(["serve", "--checkpoint", str(served.run), "--index", str(tmp_path / "nope"),
                 "--port", "0"]) == 2
    assert "no index at" in capsys.readouterr().err
    assert main(["serve", "--checkpoint", str(served.run), "--index", str(served.index),
                 "--token-file", str(tmp_path / "missing")]) == 2
    assert "file not found" in capsys.readouterr().err
    other = synthetic_checkpoint(tmp_path / "m16", bits=16, channels=1, size=8)
    assert main(["serve", "--checkpoint", str(other), "--index", str(served.index)]) == 2
    err = capsys.readouterr().err
    assert "12-bit codes" in err and "16-bit" in err and "Traceback" not in err


def test_bench_serve_runs_a_short_load(tmp_path, capsys):
    from ssah.bench.serve import main
    out = tmp_path / "README.md"
    rc = main(["--items", "3000", "--bits", "16", "--engines", "flat", "--concurrency", "1,4",
               "--duration", "0.5", "--max-requests", "40", "--out", str(out)])
    assert rc == 0
    text = out.read_text()
    assert "| flat | 3,000 | id | 4 |" in text and "| image | 1 |" in text
    assert "python -m ssah bench serve --items 3000" in text
