import pytest

from ssah.config import Config, apply_override, load_config
from ssah.errors import ConfigError
from ssah.train.schedules import lr_factor, omega_at


def test_defaults_are_the_papers():
    cfg = load_config()
    assert (cfg.loss.lambda1, cfg.loss.lambda2, cfg.loss.alpha, cfg.loss.beta) == (1.0, 0.5, 0.5, 0.1)
    assert (cfg.loss.omega, cfg.loss.omega_step, cfg.loss.omega_every) == (0.1, 0.02, 5)
    assert (cfg.train.batch_size, cfg.train.momentum, cfg.train.weight_decay) == (32, 0.9, 5e-4)


def test_yaml_and_toml_with_overrides(tmp_path):
    y = tmp_path / "a.yaml"
    y.write_text("model:\n  bits: 24\ntrain:\n  epochs: 3\n")
    t = tmp_path / "a.toml"
    t.write_text("[model]\nbits = 24\n[train]\nepochs = 3\n")
    for path in (y, t):
        cfg = load_config(path, ["train.epochs=7", "loss.anet_losses=[sem, sph]", "data.path=null"])
        assert cfg.model.bits == 24 and cfg.train.epochs == 7
        assert cfg.loss.anet_losses == ["sem", "sph"] and cfg.data.path is None
    assert Config.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("text,needle", [
    ("model:\n  bitz: 3\n", "bitz"),
    ("model:\n  bits: many\n", "model.bits"),
    ("train:\n  variant: nope\n", "train.variant"),
    ("loss:\n  sp_hinge: row\n", "loss.sp_hinge"),
    ("- 1\n- 2\n", "mapping"),
    ("model: [\n", "cannot parse"),
])
def test_bad_config_files_name_the_key(tmp_path, text, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_config(p)


def test_bad_overrides():
    cfg = Config()
    for item, needle in [("train.epochs", "key=value"), ("train.nope=1", "unknown key"),
                         ("nope.x=1", "unknown section"), ("train.epochs=1.5", "integer"),
                         ("loss.hnet_losses=[sem, xyz]", None)]:
        with pytest.raises(ConfigError, match=needle):
            apply_override(cfg, item)
            cfg.validate()
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/config.yaml")


def test_omega_schedule_and_lr():
    assert [omega_at(e, 0.1, 0.02, 5) for e in (0, 4, 5, 10, 14)] == pytest.approx([0.1, 0.1, 0.12, 0.14, 0.14])
    assert lr_factor(0, 100, "cosine") == 1.0
    assert lr_factor(50, 100, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, "cosine") == pytest.approx(0.0)
    assert lr_factor(0, 100, "cosine", warmup_steps=10) == pytest.approx(0.1)
    assert lr_factor(70, 100, "constant") == 1.0
