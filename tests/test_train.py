"""Algorithm 1 on digits: step isolation, learning, resume, checkpoints."""
import json

import numpy as np
import pytest
import torch

from ssah.config import load_config
from ssah.errors import CheckpointError
from ssah.train import Trainer, build_anet, build_hnet, evaluate_checkpoint, prepare_data, train
from ssah.train.checkpoint import list_checkpoints, load_checkpoint
from ssah.losses import similarity_matrix


def digits_cfg(tmp_path, *overrides):
    return load_config(None, [
        "data.dataset=digits", "data.image_size=8", "data.channels=1",
        f"data.cache_dir={tmp_path / 'cache'}", "data.queries_per_class=10",
        "data.labeled_per_class=40", "data.val_per_class=5",
        "model.backbone=small-cnn", "model.bits=16", "model.mask_features=[conv1]",
        "train.epochs=2", "train.batch_size=16", "train.unlabeled_batch_size=16",
        "train.lr=0.02", "train.device=cpu", "train.quiet=true", f"run_dir={tmp_path / 'run'}",
        *overrides])


def make_trainer(cfg):
    torch.manual_seed(0)
    data = prepare_data(cfg.data, cfg.run_dir, progress=False)
    hnet = build_hnet(cfg.model, data.channels)
    anet = build_anet(cfg, data.channels)
    return Trainer(cfg, hnet, anet, data, cfg.run_dir, torch.device("cpu"))


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before, module):
    return [k for k, v in module.state_dict().items() if not torch.equal(before[k], v)]


def test_anet_step_leaves_hnet_alone_and_hnet_step_leaves_anet_alone(tmp_path):
    tr = make_trainer(digits_cfg(tmp_path))
    idx = tr.plan(0).labeled[0]
    x = tr._batch(idx)
    xu = tr._batch(tr.plan(0).unlabeled[0])
    S = similarity_matrix(tr.data.labels[idx], tr.data.labels[idx])
    h0, a0 = snapshot(tr.hnet), snapshot(tr.anet)
    tr.anet_step(x, S, 0.1)
    assert changed(h0, tr.hnet) == []             # parameters and BN buffers untouched
    assert changed(a0, tr.anet) != []
    assert all(p.grad is None for p in tr.hnet.parameters())
    h1, a1 = snapshot(tr.hnet), snapshot(tr.anet)
    tr.hnet_step(x, xu, S, 0.1)
    assert changed(a1, tr.anet) == []
    assert changed(h1, tr.hnet) != []


@pytest.mark.parametrize("variant", ["baseline", "random-rotate-mask", "msmn-mul", "marn", "fixed-paced"])
def test_every_variant_runs_a_step(tmp_path, variant):
    tr = make_trainer(digits_cfg(tmp_path, f"train.variant={variant}"))
    logs = tr.train_step(0, 0)
    assert np.isfinite(logs["h_loss"])
    assert ("a_loss" in logs) == (variant in ("msmn-mul", "marn", "fixed-paced"))
    assert (tr.anet is None) == (variant == "baseline")


def test_table5_loss_switches(tmp_path):
    tr = make_trainer(digits_cfg(tmp_path, "loss.anet_losses=[sph]", "loss.hnet_losses=[sem, con, sp]"))
    logs = tr.train_step(0, 0)
    assert "h_sp" in logs and "h_con" in logs
    assert logs["a_sem"] == 0.0


def test_short_training_lowers_loss_and_beats_untrained_map(tmp_path):
    cfg = digits_cfg(tmp_path, "train.epochs=6")
    tr = make_trainer(cfg)
    before = tr.validate()
    history = tr.fit()
    assert history[-1]["h_sem"] < history[0]["h_sem"]
    assert history[-1]["val_map"] > before + 0.2
    report = evaluate_checkpoint(cfg.run_dir, device="cpu")
    assert report["map_all"] > 0.6 and report["n_queries"] == 100
    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    rec = json.loads(lines[-1])
    for key in ("h_sem", "h_con", "h_quan", "a_sp", "omega", "angle_band1", "angle_band3",
                "mask_add_abs", "mask_mul", "val_map", "images_per_s"):
        assert key in rec
    assert 20 <= rec["angle_band3"] <= 30 and 0 <= rec["angle_band1"] <= 10
    assert (tmp_path / "run" / "split.json").exists() and (tmp_path / "run" / "config.yaml").exists()


def test_resume_gives_the_same_next_step_loss(tmp_path, monkeypatch):
    seen = {}
    original = Trainer.train_step

    def recording(self, epoch, i):
        logs = original(self, epoch, i)
        seen.setdefault(self.run_dir.name, {})[(epoch, i)] = logs["h_loss"]
        if self.run_dir.name == "cut" and (epoch, i) == (1, 4) and not getattr(self, "resumed", False):
            raise KeyboardInterrupt   # stopped mid-epoch, after the checkpoint at step 4
        return logs

    monkeypatch.setattr(Trainer, "train_step", recording)
    short = ["train.steps_per_epoch=7", "train.eval_every=0"]
    make_trainer(digits_cfg(tmp_path, f"run_dir={tmp_path / 'full'}", *short)).fit()
    cut_cfg = digits_cfg(tmp_path, f"run_dir={tmp_path / 'cut'}", "train.checkpoint_every_steps=4", *short)
    with pytest.raises(KeyboardInterrupt):
        make_trainer(cut_cfg).fit()
    seen["cut"].clear()
    tr = make_trainer(cut_cfg)
    tr.resumed = True
    tr.fit(resume=True)
    first = min(seen["cut"])
    assert first == (1, 4)
    assert seen["cut"][first] == pytest.approx(seen["full"][first], rel=1e-5)
    last = max(seen["full"])
    assert seen["cut"][last] == pytest.approx(seen["full"][last], rel=1e-4)


def test_checkpoints_are_atomic_kept_and_checked(tmp_path):
    cfg = digits_cfg(tmp_path, "train.epochs=4", "train.keep_checkpoints=2", "train.eval_every=0",
                     "train.steps_per_epoch=2")
    make_trainer(cfg).fit()
    ckpts = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert len(ckpts) == 2
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp-*"))
    # a truncated newest checkpoint is reported and the previous one is used
    data = ckpts[-1].read_bytes()
    ckpts[-1].write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(ckpts[-1])
    with pytest.warns(UserWarning, match="corrupt"):
        report = evaluate_checkpoint(tmp_path / "run", device="cpu")
    assert report["epoch"] == 3
    # another bit length is refused on resume
    other = digits_cfg(tmp_path, "model.bits=32", "train.epochs=5")
    with pytest.raises(CheckpointError, match="bits"):
        make_trainer(other).fit(resume=True)
    # so is another learning rate (a stale run dir), while more epochs extend the run
    with pytest.raises(CheckpointError, match=r"another config \(train.lr: 0.02 -> 0.05, checkpoint -> config\)"):
        make_trainer(digits_cfg(tmp_path, "train.lr=0.05", "train.epochs=5",
                                "train.steps_per_epoch=2")).fit(resume=True)
    longer = make_trainer(digits_cfg(tmp_path, "train.epochs=5", "train.steps_per_epoch=2",
                                     "train.num_threads=1"))
    assert "epochs: 4" in (tmp_path / "run" / "config.yaml").read_text()
    longer.fit(resume=True)
    assert longer.epoch == 5
    assert "epochs: 5" in (tmp_path / "run" / "config.yaml").read_text()   # what it ran under


def test_sample_band_weights_eq7_by_the_number_of_bands(tmp_path):
    """With one band sampled per image, l_sp is n times the one-generation sum (Eq 7
    stays unbiased) and a training step runs."""
    tr = make_trainer(digits_cfg(tmp_path, "model.sample_band=true"))
    assert tr.anet.sample_band
    logs = tr.train_step(0, 0)
    assert np.isfinite(logs["h_loss"]) and np.isfinite(logs["a_sp"])
    g = torch.Generator().manual_seed(0)
    u = torch.tanh(torch.randn(6, 8, generator=g))
    y = torch.tanh(torch.randn(1, 6, 8, generator=g))
    S = similarity_matrix(np.array([0, 0, 1, 1, 2, 2]), np.array([0, 0, 1, 1, 2, 2]))
    one = tr.sp_term(u, y, S, 0.1, ("sph", "spc"))
    assert torch.allclose(tr.sp_term(u, y, S, 0.1, ("sph", "spc"), 3.0), 3 * one)
    assert float(one) > 0


def test_warm_start_loads_the_source_weights_and_refuses_another_split(tmp_path):
    src = digits_cfg(tmp_path, "train.variant=baseline", "train.epochs=1", "train.eval_every=0",
                     f"run_dir={tmp_path / 'stage1'}")
    first = train(src)
    cfg = digits_cfg(tmp_path, "train.variant=full", "train.epochs=0",
                     f"train.init_from={tmp_path / 'stage1'}", f"run_dir={tmp_path / 'stage2'}")
    second = train(cfg)   # zero epochs: the weights are exactly the source's
    for k, v in first.hnet.state_dict().items():
        assert torch.equal(v, second.hnet.state_dict()[k]), k
    cfg.train.epochs = 1
    train(cfg)                                                 # writes stage 2's own checkpoint
    (tmp_path / "stage1").rename(tmp_path / "stage1.moved")   # resume needs only the run's own
    cfg.train.epochs = 2
    assert train(cfg, resume=True).epoch == 2
    (tmp_path / "stage1.moved").rename(tmp_path / "stage1")
    untouched = train(digits_cfg(tmp_path, "train.variant=full", "train.epochs=0",
                                 f"run_dir={tmp_path / 'fresh'}"))
    assert any(not torch.equal(v, untouched.hnet.state_dict()[k])
               for k, v in first.hnet.state_dict().items())
    for bad in ("data.split_seed=1", "data.val_per_class=4", "model.bits=8"):
        with pytest.raises(CheckpointError, match=bad.split("=")[0]):
            train(digits_cfg(tmp_path, "train.epochs=0", f"train.init_from={tmp_path / 'stage1'}",
                             f"run_dir={tmp_path / 'bad'}", bad))
    with pytest.raises(CheckpointError, match="train.init_from"):
        train(digits_cfg(tmp_path, "train.epochs=0", f"train.init_from={tmp_path / 'nowhere'}",
                         f"run_dir={tmp_path / 'bad2'}"))
