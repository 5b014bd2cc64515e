"""Bad inputs for every loader, ``ssah encode``, ``ssah index build`` and ``ssah search``.

The cases live in ``ssah.bench.robustness`` (which also writes ``results/robustness/README.md``):
each must give a clear error (exit 2, one ``ssah: error:`` line, no traceback, no output or
temp file left behind), a counted skip under ``--skip-bad``, or a normal result.
"""
import resource
import time

import pytest

from ssah.bench import robustness
from ssah.bench.robustness import Env, all_cases, huge_png, run_case
from ssah.data import decode_image
from ssah.errors import DataError

CASES = all_cases()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return Env(tmp_path_factory.mktemp("fuzz-shared"))


def test_the_suite_covers_every_loader_and_command():
    targets = {c.target for c in CASES}
    assert targets == {"folder", "cifar-tree", "cifar-zip", "list", "cub", "dogs", "encode",
                       "index build", "search"}
    names = {c.name.split("/")[1] for c in CASES if c.target in robustness.LOADERS}
    assert {k.name for k in robustness.IMAGE_KINDS} <= names
    assert len(CASES) >= 100


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gives_its_expected_outcome(case, env, tmp_path):
    result = run_case(case, tmp_path, env)
    assert result.outcome == case.expect, result.detail


def test_huge_png_is_refused_from_its_header(tmp_path):
    data = huge_png()
    assert len(data) < 100_000                       # 20000 x 20000 pixels in about 50 KB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(DataError, match="decompression bomb"):
        decode_image(data, "huge.png")
    # our own guard (64 megapixels), below Pillow's: 9000 x 9000 = 81 megapixels
    with pytest.raises(DataError, match=r"9000x9000 = 81,000,000 pixels, over the limit"):
        decode_image(huge_png(9000, 9000), "big.png")
    assert time.perf_counter() - t0 < 5
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
    assert grown_mb < 50                              # decoded, even 1-bit, it would be 50+ MB


def test_robustness_table_is_written(tmp_path):
    out = tmp_path / "README.md"
    assert robustness.main(["--only", "folder/", "--only", "index/nan", "--only", "search/k-",
                            "--out", str(out)]) == 0
    text = out.read_text()
    assert "python -m ssah bench robustness --only folder/" in text
    assert "as expected, 0 not" in text and "**(unexpected)**" not in text
    assert "| `folder/huge/skip-bad` |" in text and "| `index/nan-codes` |" in text
