"""``ssah bench paper --quick``: the whole pipeline on a small subset, resumable and skipping."""
import json
from pathlib import Path

import pytest

from ssah.bench.paper import PAPER, parse_row, plan
from ssah.errors import ConfigError
from ssah.bench.report import budget_line, table_markdown
from ssah.cli import main

SHARED_ZIP = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-jpg.zip"


def test_plan_covers_the_papers_tables():
    specs = plan(["headline", "shallow", "table4", "table5", "table6", "table3"], [12, 24, 48], [0],
                 ablation_epochs=5, quick=False, n_unseen_splits=5)
    keys = {(s.table, s.name, s.bits) for s in specs}
    assert {("headline", "full", b) for b in (12, 24, 48)} <= keys
    assert len([s for s in specs if s.table == "table4"]) == 9 * 3
    # every requested bit length, also where the paper prints only some (Table 6: 12 and 48)
    assert len([s for s in specs if s.table == "table5"]) == 7 * 3
    assert len([s for s in specs if s.table == "table6"]) == 3 * 2 * 3    # 3 omegas x paced x bits
    assert {s.bits for s in specs if s.table == "table6"} == {12, 24, 48}
    assert len([s for s in specs if s.table == "table3" and s.name == "full"]) == 5 * 3
    assert all("train.epochs=5" in s.overrides for s in specs if s.table in ("table4", "table5", "table6"))
    assert not any("train.epochs=5" in s.overrides for s in specs if s.table == "headline")
    assert len({s.slug for s in specs}) == len(specs)
    assert not any(s.name.startswith("baseline (") for s in specs)


def test_time_matched_baseline_is_an_extra_headline_row():
    specs = plan(["headline"], [12], [0], ablation_epochs=None, quick=False, n_unseen_splits=5,
                 baseline_epochs=120)
    extra = [s for s in specs if s.name == "baseline (120 epochs)"]
    assert len(extra) == 1 and extra[0].table == "headline"
    assert extra[0].overrides == ["train.variant=baseline", "train.epochs=120"]
    assert len({s.slug for s in specs}) == 3


def test_row_adds_a_labelled_headline_run_per_bit_length():
    row = parse_row("full (sampled band, 24 epochs): train.variant=full model.sample_band=true train.epochs=24")
    assert row == ("full (sampled band, 24 epochs)",
                   ["train.variant=full", "model.sample_band=true", "train.epochs=24"])
    specs = plan(["headline", "table4"], [12, 48], [0], ablation_epochs=3, quick=False,
                 n_unseen_splits=5, rows=[row])
    extra = [s for s in specs if s.name == row[0]]
    assert [(s.table, s.bits, s.overrides) for s in extra] == [("headline", 12, row[1]), ("headline", 48, row[1])]
    assert len({s.key for s in specs}) == len(specs)
    for bad in ("no colon", ": train.epochs=3", "label:", "label: train.epochs"):
        with pytest.raises(ConfigError, match="--row"):
            parse_row(bad)


def test_report_shows_missing_numbers_as_missing():
    runs = [{"table": "headline", "name": "full", "bits": 12, "map_all": 0.5, "train_seconds": 10,
             "ties": "expected"}]
    md = table_markdown(runs, "headline", PAPER)
    assert "| full | 0.500 | 0.862 | – | 0.878 | – | 0.886 | 10 |" in md
    assert "| baseline | – | 0.751 | – | – | – | 0.792 | – |" in md


def test_report_marks_numbers_ranked_with_ties_in_database_order():
    runs = [{"table": "headline", "name": "full", "bits": 12, "map_all": 0.5, "train_seconds": 10,
             "ties": "expected"},
            {"table": "headline", "name": "full", "bits": 24, "map_all": 0.6, "train_seconds": 10}]
    md = table_markdown(runs, "headline", PAPER)
    assert "| full | 0.500 | 0.862 | 0.600 † | 0.878 | – | 0.886 | 10 |" in md


def test_report_never_averages_tie_aware_numbers_with_database_order_ones():
    runs = [{"table": "headline", "name": "full", "bits": 12, "map_all": v, "train_seconds": 10,
             "ties": t} for v, t in ((0.4, "expected"), (0.6, "expected"), (0.9, None), (0.7, None))]
    md = table_markdown(runs, "headline", PAPER)
    assert "| full | 0.500 ± 0.100 (n=2); 0.800 ± 0.100 (n=2) † | 0.862 |" in md


def run_quick(tmp_path, dataset, *extra):
    argv = ["bench", "paper", "--quick", "--dataset", dataset, "--tables", "headline,shallow",
            "--out", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs"), "--quiet", *extra]
    assert main(argv) == 0
    return json.loads((tmp_path / "results" / "results.json").read_text())["runs"]


def test_quick_pipeline_on_digits_writes_results_and_skips_finished_runs(tmp_path, capsys):
    runs = run_quick(tmp_path, "digits")
    assert {r["name"] for r in runs} == {"full", "baseline", "lsh", "pca-itq", "itq-cca"}
    for r in runs:
        for key in ("variant", "backbone", "bits", "seed", "map_all", "map_at_5000", "train_seconds",
                    "device", "machine", "commit", "config"):
            assert key in r
        assert 0 <= r["map_all"] <= 1
        # a shallow row names the frozen backbone whose features it hashed, not the deep runs' one
        assert r["backbone"] == ("efficientnet-lite0" if r["table"] == "shallow" else "small-cnn")
        # a trained run records its per-epoch log; a shallow one has none
        if r["table"] == "shallow":
            assert "history" not in r
        else:
            assert [h["epoch"] for h in r["history"]] == list(range(1, r["epochs"] + 1))
            assert all(h["h_loss"] > 0 for h in r["history"])
            assert sum(h["epoch_seconds"] for h in r["history"]) == pytest.approx(r["train_seconds"], abs=1e-4)
    out = tmp_path / "results"
    assert "Features: the pooled features of the frozen, ImageNet-pretrained efficientnet-lite0" \
        in (out / "README.md").read_text()
    for name in ("README.md", "pr_12b.png", "p_at_n_12b.png", "training_full_12b.png", "generated_12b.png"):
        assert (out / name).is_file(), name
    capsys.readouterr()
    again = run_quick(tmp_path, "digits")
    assert "done, skipped" in capsys.readouterr().out
    assert [r["wall_seconds"] for r in again] == [r["wall_seconds"] for r in runs]
    # a run dir whose log and checkpoint are not at the recorded epoch (a --force re-run in
    # progress) must not redraw the recorded run's plots; at the recorded epoch it does
    results_json = out / "results.json"
    recorded = results_json.read_text()
    doc = json.loads(recorded)
    for r in doc["runs"]:
        if r["name"] == "full":
            r["epochs"] += 1
            del r["history"]
    results_json.write_text(json.dumps(doc))
    plots = ("training_full_12b.png", "generated_12b.png")
    for name in plots:
        (out / name).write_bytes(b"committed")
    run_quick(tmp_path, "digits", "--report-only")
    assert [(out / name).read_bytes() for name in plots] == [b"committed"] * 2
    results_json.write_text(recorded)
    run_quick(tmp_path, "digits", "--report-only")
    assert all((out / name).read_bytes() != b"committed" for name in plots)
    # regenerated where the run dirs are absent (a fresh clone), the report keeps linking the
    # committed plots of those runs instead of dropping them
    import shutil
    shutil.rmtree(tmp_path / "runs")
    (out / "training_full_12b.png").unlink()     # redrawn from the recorded history
    run_quick(tmp_path, "digits", "--report-only")
    md = (out / "README.md").read_text()
    assert "(training_full_12b.png)" in md and "(generated_12b.png)" in md
    assert (out / "training_full_12b.png").is_file()


@pytest.mark.shared
@pytest.mark.skipif(not SHARED_ZIP.is_file(), reason="../shared/data/cifar10-jpg.zip is absent")
def test_quick_pipeline_on_cifar10(tmp_path):
    runs = run_quick(tmp_path, "cifar10", "--data-path", str(SHARED_ZIP), "--set", "data.image_size=32",
                     f"data.cache_dir={tmp_path / 'cache'}")
    assert {r["name"] for r in runs} >= {"full", "baseline"}


def test_results_from_two_processes_are_merged(tmp_path):
    from ssah.bench.paper import Results
    a, b = Results(tmp_path), Results(tmp_path)
    a.add({"key": "headline/full/12/0/0", "map_all": 0.5}, {"p": [1]})
    b.add({"key": "shallow/lsh/12/0/0", "map_all": 0.2}, {"p": [2]})
    a.add({"key": "headline/full/12/0/0", "map_all": 0.6}, {"p": [3]})
    on_disk = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert {r["key"]: r["map_all"] for r in on_disk} == {"headline/full/12/0/0": 0.6, "shallow/lsh/12/0/0": 0.2}
    assert set(json.loads((tmp_path / "curves.json").read_text())) == {"headline/full/12/0/0",
                                                                         "shallow/lsh/12/0/0"}


def test_second_backbone_gets_its_own_rows_and_run_dirs(tmp_path, capsys):
    """--backbone runs are new entries (not 'done' because the default backbone's are)."""
    run_quick(tmp_path, "digits", "--tables", "headline")
    capsys.readouterr()
    runs = run_quick(tmp_path, "digits", "--tables", "headline", "--backbone", "efficientnet-lite0",
                     "--set", "data.image_size=32", "model.mask_features=[block4]")
    assert "done, skipped" not in capsys.readouterr().out
    by_name = {r["name"]: r for r in runs}
    assert set(by_name) == {"full", "baseline", "full (efficientnet-lite0)", "baseline (efficientnet-lite0)"}
    assert by_name["full (efficientnet-lite0)"]["backbone"] == "efficientnet-lite0"
    assert by_name["full"]["backbone"] != "efficientnet-lite0"
    assert len({r["config"]["run_dir"] for r in runs}) == 4
    md = (tmp_path / "results" / "README.md").read_text()
    assert "| full (efficientnet-lite0) |" in md
    assert (tmp_path / "results" / "training_full_12b_efficientnet-lite0.png").is_file()


def test_a_config_shared_by_two_tables_is_trained_once(tmp_path, capsys):
    """Table 6's self-paced omega = 0.1 is the headline ``full`` config: reported, not retrained."""
    runs = run_quick(tmp_path, "digits", "--tables", "headline,table6", "--set", "loss.omega=0.1",
                     "loss.self_paced=true")
    by_key = {r["key"]: r for r in runs}
    twin = by_key["table6/self-paced w=0.1/12/0/0"]
    assert twin["same_run_as"] == "headline/full/12/0/0"
    assert twin["map_all"] == by_key["headline/full/12/0/0"]["map_all"]
    assert "same_run_as" not in by_key["table6/fixed-paced w=0.1/12/0/0"]
    assert "the same run as headline/full/12/0/0" in capsys.readouterr().out
    assert not any("self-paced" in p.name for p in (tmp_path / "runs" / "digits-quick").iterdir())


def test_a_run_removed_from_disk_is_not_written_back(tmp_path):
    """Only the records a process added override the file: a stale run deleted by hand stays deleted."""
    from ssah.bench.paper import Results
    Results(tmp_path).add({"key": "table4/marn/12/0/0", "map_all": 0.1}, {})
    running = Results(tmp_path)               # loaded while the stale run is still on disk
    (tmp_path / "results.json").write_text(json.dumps({"runs": []}))
    running.add({"key": "table4/msmn/12/0/0", "map_all": 0.5}, {})
    on_disk = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert [r["key"] for r in on_disk] == ["table4/msmn/12/0/0"]


def test_a_run_dir_left_by_another_config_is_set_aside_not_resumed(tmp_path, capsys):
    """A run dir whose checkpoints have other epochs or lr (an earlier recipe) is moved to
    ``.stale-0`` and the run trains afresh, instead of mixing the two recipes."""
    run_quick(tmp_path, "digits", "--tables", "headline", "--only", "headline/baseline/")
    results = tmp_path / "results" / "results.json"
    results.write_text(json.dumps({"runs": []}))                 # as if the record was discarded
    capsys.readouterr()
    runs = run_quick(tmp_path, "digits", "--tables", "headline", "--only", "headline/baseline/",
                     "--set", "train.lr=0.05")
    out = capsys.readouterr().out
    run_dir = tmp_path / "runs" / "digits-quick" / "headline-baseline-12b-s0-split0"
    assert f"{run_dir} was trained with another config (train.lr: 0.01 -> 0.05); moved to " in out
    assert (run_dir.parent / (run_dir.name + ".stale-0") / "checkpoints").is_dir()
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log if "epoch" in e] == [1]          # trained afresh
    assert runs[0]["config"]["train"]["lr"] == 0.05


def test_a_record_written_before_a_config_key_existed_is_still_a_twin(tmp_path):
    """Records keep the config of their day: a key added since (at its default) is no difference."""
    from ssah.bench.paper import Results
    from ssah.config import load_config
    cfg = load_config(None, ["train.variant=full", "run_dir=runs/a"]).to_dict()
    old = {**cfg, "model": {k: v for k, v in cfg["model"].items() if k != "sample_band"}}
    res = Results(tmp_path)
    res.add({"key": "table4/full/12/0/0", "variant": "full", "config": old}, {})
    want = load_config(None, ["train.variant=full", "run_dir=runs/b", "train.quiet=true"]).to_dict()
    assert res.twin(want)["key"] == "table4/full/12/0/0"
    other = load_config(None, ["train.variant=full", "model.sample_band=true"]).to_dict()
    assert res.twin(other) is None
    # threads and device change speed, not what is trained (resume ignores them too); epochs do not
    assert res.twin({**want, "train": {**want["train"], "num_threads": 1, "device": "cuda"}})
    assert res.twin({**want, "train": {**want["train"], "epochs": 99}}) is None


def test_budget_line_names_the_epochs_of_a_table():
    run = {"table": "table3", "backbone": "small-cnn", "image_size": 28, "device": "cpu",
           "machine": "x86_64 CPU"}
    assert budget_line([{**run, "epochs": 1}], "table3").startswith("Budget: 1 epoch; backbone small-cnn at 28 px")
    assert budget_line([{**run, "epochs": 3}, {**run, "epochs": 4}], "table3").startswith("Budget: 3, 4 epochs;")
    assert budget_line([{**run, "epochs": 3}], "table4") == ""


def test_reevaluate_ranks_old_database_order_records_again_from_their_checkpoints(tmp_path, capsys):
    runs = run_quick(tmp_path, "digits", "--tables", "headline")
    assert runs and all(r["ties"] == "expected" for r in runs)
    path = tmp_path / "results" / "results.json"
    old = [{**{k: v for k, v in r.items() if k != "ties"}, "map_all": 0.0} for r in runs]
    old.append({**old[0], "key": "table4/full/12/0/0", "table": "table4", "same_run_as": old[0]["key"]})
    path.write_text(json.dumps({"runs": old}))
    capsys.readouterr()
    after = {r["key"]: r for r in run_quick(tmp_path, "digits", "--reevaluate")}
    assert f"{len(runs)} runs re-evaluated" in capsys.readouterr().out
    for r in runs:
        new = after[r["key"]]
        assert new["map_all"] == pytest.approx(r["map_all"], abs=1e-12)   # same checkpoint, same ranking
        assert new["ties"] == "expected" and new["database_order"]["map_all"] == 0.0
    assert after["table4/full/12/0/0"]["map_all"] == after[runs[0]["key"]]["map_all"]
    assert "†" not in (tmp_path / "results" / "README.md").read_text().split("Table")[1]
    capsys.readouterr()
    run_quick(tmp_path, "digits", "--reevaluate")   # nothing left to do
    assert "0 runs re-evaluated" in capsys.readouterr().out
    # a record whose run dir holds a checkpoint from another epoch is left alone
    other = {**old[0], "key": "headline/full/12/7/0", "seed": 7, "epochs": old[0]["epochs"] + 1}
    path.write_text(json.dumps({"runs": list(after.values()) + [other]}))
    rec = {r["key"]: r for r in run_quick(tmp_path, "digits", "--reevaluate")}[other["key"]]
    out = capsys.readouterr().out
    assert "0 runs re-evaluated" in out and f"{other['key']}: " in out and "left as it is" in out
    assert "ties" not in rec and rec["map_all"] == 0.0
