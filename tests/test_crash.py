"""Crash safety: SIGKILL mid-epoch then --resume, corrupt checkpoints, failed checkpoint writes."""
import errno
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from ssah.cli import main
from ssah.errors import CheckpointError
from ssah.train import evaluate_checkpoint
from ssah.train import checkpoint as ckpt_mod
from ssah.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def write_config(tmp_path, run_dir, epochs=2):
    cfg = tmp_path / "digits.yaml"
    cfg.write_text(f"""data:
  dataset: digits
  image_size: 8
  channels: 1
  cache_dir: {tmp_path / 'cache'}
  queries_per_class: 10
  labeled_per_class: 40
  val_per_class: 5
model:
  backbone: small-cnn
  bits: 16
  mask_features: [conv1]
train:
  epochs: {epochs}
  batch_size: 16
  unlabeled_batch_size: 16
  lr: 0.02
  device: cpu
  quiet: true
  num_threads: 1
run_dir: {run_dir}
""")
    return cfg


def mid_epoch(path: Path) -> bool:
    return int(path.stem.split("-")[1]) % 1_000_000 != 0


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path, keep_threads):
    cfg = write_config(tmp_path, tmp_path / "full")
    every = ["--set", "train.checkpoint_every_steps=4"]
    assert main(["train", str(cfg), *every]) == 0                     # uninterrupted
    cut = tmp_path / "cut"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "ssah", "train", str(cfg), "--run-dir", str(cut),
                             *every], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 120
    try:   # kill once a mid-epoch checkpoint of the second (last) epoch exists
        while time.time() < deadline and proc.poll() is None:
            if any(mid_epoch(p) and p.stem >= "ckpt-001000000"
                   for p in list_checkpoints(cut / "checkpoints")):
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    found = latest_checkpoint(cut / "checkpoints")
    assert found is not None and found[1]["step_in_epoch"] > 0       # killed mid-epoch
    (cut / "checkpoints" / ".tmp-stale.pt").write_bytes(b"half a checkpoint")
    assert main(["train", str(cfg), "--run-dir", str(cut), "--resume", *every]) == 0
    assert not list((cut / "checkpoints").glob(".tmp-*"))            # stale temp file cleaned
    a, b = (load_checkpoint(list_checkpoints(d / "checkpoints")[-1]) for d in (tmp_path / "full", cut))
    assert a["epoch"] == b["epoch"] == 2
    worst = max((a["hnet"][k].float() - b["hnet"][k].float()).abs().max().item() for k in a["hnet"])
    assert worst < 1e-5                                               # same weights
    ra, rb = (evaluate_checkpoint(d, device="cpu") for d in (tmp_path / "full", cut))
    assert rb["map_all"] == pytest.approx(ra["map_all"], abs=1e-4)
    logs = [[json.loads(line) for line in (d / "log.jsonl").read_text().splitlines()]
            for d in (tmp_path / "full", cut)]
    assert [r["epoch"] for r in logs[1]] == [1, 2]                    # each epoch logged once
    for ra_, rb_ in zip(*logs):
        assert rb_["h_loss"] == pytest.approx(ra_["h_loss"], rel=1e-4)
        assert rb_["val_map"] == pytest.approx(ra_["val_map"], abs=1e-4)


def tensor_member_offset(path: Path) -> int:
    """Byte offset of the middle of the largest tensor stored in a torch zip checkpoint."""
    with zipfile.ZipFile(path) as zf:
        info = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    name_len = int.from_bytes(header[26:28], "little")
    extra_len = int.from_bytes(header[28:30], "little")
    return info.header_offset + 30 + name_len + extra_len + info.file_size // 2


def small_state(value: float = 1.0) -> dict:
    return {"hnet": {"w": torch.full((64, 64), value)}, "epoch": 1, "history": "[]"}


def test_flipped_byte_in_tensor_data_is_caught_and_the_previous_checkpoint_used(tmp_path, capsys):
    d = tmp_path / "checkpoints"
    save_checkpoint(small_state(1.0), d, 1)
    newest = save_checkpoint(small_state(2.0), d, 2)
    data = bytearray(newest.read_bytes())
    data[tensor_member_offset(newest)] ^= 0x10          # torch.load alone would not notice
    newest.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(newest)
    with pytest.warns(UserWarning, match="corrupt"):
        path, state = latest_checkpoint(d)
    assert path.name == "ckpt-000000001.pt" and state["hnet"]["w"][0, 0] == 1.0
    assert main(["evaluate", "--checkpoint", str(newest)]) == 2
    err = capsys.readouterr().err
    assert err.count("ssah: error:") == 1 and "corrupt" in err and "Traceback" not in err


def _partial_save(obj, f, *args, **kwargs):
    f.write(b"PK\x03\x04 partial bytes")   # some bytes reach the disk, then it is full
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _fail_replace(src, dst):
    raise OSError(errno.EIO, os.strerror(errno.EIO))


def _fail_fsync(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("target,fake,message", [
    ("torch.save", _partial_save, "No space left"),
    ("os.replace", _fail_replace, "Input/output error"),
    ("os.fsync", _fail_fsync, "No space left"),
])
@pytest.mark.parametrize("step", [1, 2])   # overwrite the good file's name, or a new name
def test_failed_write_never_replaces_the_last_good_checkpoint(tmp_path, monkeypatch, target, fake,
                                                              message, step):
    d = tmp_path / "checkpoints"
    good = save_checkpoint(small_state(1.0), d, 1)
    before = good.read_bytes()
    module, name = target.split(".")
    monkeypatch.setattr({"torch": ckpt_mod.torch, "os": os}[module], name, fake)
    with pytest.raises(CheckpointError, match=message):
        save_checkpoint(small_state(2.0), d, step)
    monkeypatch.undo()
    assert good.read_bytes() == before
    assert sorted(p.name for p in d.iterdir()) == ["ckpt-000000001.pt"]   # no temp file left
    assert load_checkpoint(good)["hnet"]["w"][0, 0] == 1.0
