"""``ssah bench paper``: the paper's tables (1, 3, 4, 5, 6 and shallow baselines), resumable.

Every run has its own run directory under ``--runs-dir`` and checkpoints as it trains, so a
killed benchmark continues where it stopped; a finished run (one with an entry in
``results.json``) is not run again unless ``--force``. Results, a README with the paper's
numbers side by side and PNG plots go to ``--out`` (default ``results/<dataset>``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write
from ..config import VARIANTS, config_differences, load_config
from ..errors import ConfigError

BITS = (12, 24, 48)
TABLE4 = ("baseline", "random-rotate", "marn", "random-mask", "msmn-add", "msmn-mul", "msmn",
          "random-rotate-mask", "full")
# Table 5: name -> (A-Net losses, H-Net losses); l_sp = sph + spc.
TABLE5 = {
    "A:sem H:sem+con": (["sem"], ["sem", "con"]),
    "A:sph H:sem+con": (["sph"], ["sem", "con"]),
    "A:spc H:sem+con": (["spc"], ["sem", "con"]),
    "A:sp H:sem+con": (["sph", "spc"], ["sem", "con"]),
    "A:sem+sp H:sem": (["sem", "sph", "spc"], ["sem"]),
    "A:sem+sp H:sem+con": (["sem", "sph", "spc"], ["sem", "con"]),
    "A:sem+sp H:sem+con+sp": (["sem", "sph", "spc"], ["sem", "con", "sp"]),
}
TABLE6_OMEGAS = (0.05, 0.1, 0.3)
SHALLOW = ("lsh", "pca-itq", "itq-cca", "sdh")

# The paper's numbers (mAP@all), by (table, name) -> {bits: mAP}.
PAPER = {
    ("headline", "full"): {12: 0.862, 24: 0.878, 48: 0.886},
    ("headline", "baseline"): {12: 0.751, 48: 0.792},
    ("table4", "baseline"): {12: 0.751, 48: 0.792},
    ("table4", "random-rotate"): {12: 0.788, 48: 0.810},
    ("table4", "marn"): {12: 0.801, 48: 0.831},
    ("table4", "random-mask"): {12: 0.792, 48: 0.813},
    ("table4", "msmn-add"): {12: 0.811, 48: 0.838},
    ("table4", "msmn-mul"): {12: 0.820, 48: 0.847},
    ("table4", "msmn"): {12: 0.830, 48: 0.853},
    ("table4", "random-rotate-mask"): {12: 0.796, 48: 0.816},
    ("table4", "full"): {12: 0.862, 48: 0.886},
    ("table5", "A:sem H:sem+con"): {12: 0.809, 24: 0.823, 48: 0.85},
    ("table5", "A:sph H:sem+con"): {12: 0.821, 24: 0.843, 48: 0.862},
    ("table5", "A:spc H:sem+con"): {12: 0.836, 24: 0.850, 48: 0.870},
    ("table5", "A:sp H:sem+con"): {12: 0.848, 24: 0.862, 48: 0.872},
    ("table5", "A:sem+sp H:sem"): {12: 0.841, 24: 0.855, 48: 0.867},
    ("table5", "A:sem+sp H:sem+con"): {12: 0.862, 24: 0.878, 48: 0.886},
    ("table5", "A:sem+sp H:sem+con+sp"): {12: 0.843, 24: 0.852, 48: 0.8612},
    ("table6", "self-paced w=0.05"): {12: 0.843, 48: 0.855},
    ("table6", "self-paced w=0.1"): {12: 0.862, 48: 0.886},
    ("table6", "self-paced w=0.3"): {12: 0.855, 48: 0.873},
    ("table6", "fixed-paced w=0.05"): {12: 0.819, 48: 0.842},
    ("table6", "fixed-paced w=0.1"): {12: 0.839, 48: 0.861},
    ("table6", "fixed-paced w=0.3"): {12: 0.838, 48: 0.852},
    ("table3", "full"): {12: 0.338, 24: 0.370, 48: 0.379},
    ("table3", "itq-cca"): {12: 0.157, 24: 0.165, 48: 0.201},
    ("table3", "sdh"): {12: 0.185, 24: 0.193, 48: 0.213},
    ("shallow", "itq-cca"): {12: 0.435, 24: 0.435, 48: 0.435},
    ("shallow", "sdh"): {12: 0.558, 24: 0.596, 48: 0.614},
}
TABLE_TITLES = {
    "headline": "Table 1: full SSAH and the H-Net baseline (full training budget)",
    "table4": "Table 4: network components (ablation budget)",
    "table5": "Table 5: loss combinations (ablation budget)",
    "table6": "Table 6: self-paced against fixed-paced margins (ablation budget)",
    "table3": "Table 3: unseen classes (7 known, 3 unseen; mean over class splits)",
    "shallow": "Shallow baselines on frozen backbone features",
}
CONFIGS = {"cifar10": "cifar10.yaml", "fashion-mnist": "fashion-mnist.yaml", "digits": "digits.yaml"}
QUICK = ["data.max_items=800", "data.queries_per_class=5", "data.labeled_per_class=20",
         "data.val_per_class=2", "train.epochs=1", "train.steps_per_epoch=2", "train.eval_every=0"]


@dataclass
class RunSpec:
    """One entry of a table: a deep run (config overrides) or a shallow baseline."""
    table: str
    name: str
    bits: int
    overrides: list = field(default_factory=list)
    method: str | None = None     # shallow baseline name
    seed: int = 0
    split_seed: int = 0
    backbone: str | None = None   # set by --backbone: kept apart from the config's default

    @property
    def key(self) -> str:
        tag = f"/{self.backbone}" if self.backbone else ""
        return f"{self.table}/{self.name}/{self.bits}/{self.seed}/{self.split_seed}{tag}"

    @property
    def label(self) -> str:
        """The row name in the tables."""
        return f"{self.name} ({self.backbone})" if self.backbone else self.name

    @property
    def slug(self) -> str:
        tag = f"-{self.backbone}" if self.backbone else ""
        s = f"{self.table}-{self.name}-{self.bits}b-s{self.seed}-split{self.split_seed}{tag}"
        return file_safe(s)


def file_safe(s: str) -> str:
    """``s`` with every character other than letters, digits, ``-``, ``_`` and ``.`` made ``_``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)


def plan(tables, bits, seeds, ablation_epochs, quick: bool, n_unseen_splits: int,
         baseline_epochs: int | None = None, rows=()) -> list[RunSpec]:
    """The runs of the requested tables, headline first.

    ``baseline_epochs`` adds a headline row ``baseline (N epochs)``: the H-Net baseline trained
    N epochs, so that it can be given about the full run's training time, not its epochs.
    ``rows`` adds headline rows ``(label, overrides)``, e.g. a full run with other settings."""
    ab = [f"train.epochs={ablation_epochs}"] if ablation_epochs else []
    specs: list[RunSpec] = []
    for seed in seeds:
        for b in bits:
            if "headline" in tables:
                specs += [RunSpec("headline", v, b, [f"train.variant={v}"], seed=seed)
                          for v in ("full", "baseline")]
                if baseline_epochs:
                    specs.append(RunSpec("headline", f"baseline ({baseline_epochs} epochs)", b,
                                         ["train.variant=baseline", f"train.epochs={baseline_epochs}"],
                                         seed=seed))
                specs += [RunSpec("headline", name, b, list(ov), seed=seed) for name, ov in rows]
            if "shallow" in tables:
                specs += [RunSpec("shallow", m, b, method=m, seed=seed)
                          for m in (SHALLOW[:3] if quick else SHALLOW)]
            if "table4" in tables:
                variants = ("random-rotate", "marn") if quick else TABLE4
                specs += [RunSpec("table4", v, b, [f"train.variant={v}", *ab], seed=seed) for v in variants]
            if "table6" in tables:
                for w in ((0.1,) if quick else TABLE6_OMEGAS):
                    for paced, sp in (("self-paced", "true"), ("fixed-paced", "false")):
                        specs.append(RunSpec("table6", f"{paced} w={w}", b,
                                             [f"loss.omega={w}", f"loss.self_paced={sp}", *ab], seed=seed))
            if "table5" in tables:
                for name, (a, h) in list(TABLE5.items())[: 2 if quick else None]:
                    specs.append(RunSpec("table5", name, b, [f"loss.anet_losses=[{','.join(a)}]",
                                                             f"loss.hnet_losses=[{','.join(h)}]", *ab], seed=seed))
            if "table3" in tables:
                for s in range(1 if quick else n_unseen_splits):
                    unseen = ["data.protocol=unseen", f"data.split_seed={s}", "data.val_per_class=0"]
                    specs.append(RunSpec("table3", "full", b, ["train.variant=full", *unseen, *ab],
                                         seed=seed, split_seed=s))
                    specs += [RunSpec("table3", m, b, unseen, method=m, seed=seed, split_seed=s)
                              for m in ("itq-cca", "sdh")]
    return specs


def parse_row(text: str) -> tuple[str, list[str]]:
    """``'LABEL: KEY=VALUE ...'`` -> (LABEL, [KEY=VALUE, ...]) for ``--row``."""
    label, sep, rest = text.partition(":")
    overrides = shlex.split(rest)
    if not sep or not label.strip() or not overrides or any("=" not in o for o in overrides):
        raise ConfigError(f"--row {text!r}: expected 'LABEL: KEY=VALUE ...', e.g. "
                          f"'full (sampled band): train.variant=full model.sample_band=true'")
    return label.strip(), overrides


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA), {os.cpu_count()} CPU cores"
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}"


class Results:
    """``results.json`` ({"runs": [...]}) and ``curves.json``, rewritten atomically after each run."""

    def __init__(self, out: Path):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.runs = self._read("results.json").get("runs", [])
        self.curves = self._read("curves.json")
        # what this process added (records, curves by key): only these override what is on disk
        self.mine: dict = {}
        self.mine_curves: dict = {}

    def _read(self, name):
        p = self.out / name
        return json.loads(p.read_text()) if p.is_file() else {}

    def done(self, spec: RunSpec) -> bool:
        return any(r["key"] == spec.key for r in self.runs)

    def twin(self, config: dict) -> dict | None:
        """A finished deep run trained with this same config, if any. How a run executes
        (``EXECUTION_KEYS``: run dir, device, threads, logging) does not count, as on resume.

        Tables share configurations (Table 4's ``full`` is Table 6's self-paced omega = 0.1 and
        Table 5's A:sem+sp H:sem+con), so such a run is trained once and reported in each table."""
        return next((r for r in self.runs if r.get("config") and r["variant"] in VARIANTS
                     and not config_differences(r["config"], config)),
                    None)

    def add(self, record: dict, curves: dict) -> None:
        """Merge one record into what is on disk now (another process may have added or removed runs)."""
        on_disk = self._read("results.json").get("runs", [])
        self.mine[record["key"]] = record
        self.mine_curves[record["key"]] = curves
        self.runs = list({**{r["key"]: r for r in on_disk}, **self.mine}.values())
        self.curves = {**self._read("curves.json"), **self.mine_curves}
        _write_json(self.out / "results.json", {"runs": self.runs})
        _write_json(self.out / "curves.json", self.curves)


def set_aside_stale_run(run_dir: Path, cfg) -> Path | None:
    """A run dir whose checkpoints were trained with another config (an earlier recipe, other
    epochs) would be resumed into a mixed run: move it to ``<run_dir>.stale-N`` and say so."""
    from ..train.checkpoint import latest_checkpoint
    found = latest_checkpoint(run_dir / "checkpoints") if run_dir.is_dir() else None
    if found is None or not found[1].get("config"):
        return None
    diffs = config_differences(found[1]["config"], cfg)
    if not diffs:
        return None
    n = 0
    while run_dir.with_name(f"{run_dir.name}.stale-{n}").exists():
        n += 1
    moved = run_dir.with_name(f"{run_dir.name}.stale-{n}")
    run_dir.rename(moved)
    print(f"{run_dir} was trained with another config ({'; '.join(diffs[:5])}); moved to {moved}, "
          f"training afresh", flush=True)
    return moved


def _write_json(path: Path, obj) -> None:
    with atomic_write(path) as f:
        os.fchmod(f.fileno(), 0o644)
        f.write(json.dumps(obj, indent=1).encode())


def _report(codes_q, labels_q, codes_d, labels_d) -> tuple[dict, dict]:
    from .. import metrics
    from ..train import retrieval_report
    report = retrieval_report(codes_q, labels_q, codes_d, labels_d, top_k=(5000,))
    precision, recall = metrics.precision_recall_curve(codes_q, labels_q, codes_d, labels_d)
    ns = [n for n in (1, 10, 50, 100, 200, 500, 1000, 2000, 5000) if n <= len(codes_d)]
    pn = metrics.precision_at_n(codes_q, labels_q, codes_d, labels_d, ns, tie_aware=True)
    curves = {"precision": np.asarray(precision).tolist(), "recall": np.asarray(recall).tolist(),
              "ns": ns, "p_at_n": np.asarray(pn).tolist()}
    return report, curves


class PaperBench:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out or f"results/{args.dataset}{'-quick' if args.quick else ''}")
        self.runs_dir = Path(args.runs_dir) / (args.dataset + ("-quick" if args.quick else ""))
        self.results = Results(self.out)
        self.config_path = args.config or str(resources.files("ssah") / "configs" / CONFIGS[args.dataset])
        self.base = list(args.set or [])
        if args.backbone:
            self.base.append(f"model.backbone={args.backbone}")
        if args.data_path:
            self.base.append(f"data.path={args.data_path}")
        if args.quick:
            self.base += QUICK
        self.base += ["train.quiet=true"] if args.quiet else []
        self.base.append(f"train.device={args.device}")

    def config(self, spec: RunSpec):
        return load_config(self.config_path, [*self.base, *spec.overrides, f"model.bits={spec.bits}",
                                              f"train.seed={spec.seed}", f"run_dir={self.runs_dir / spec.slug}"])

    def run(self, spec: RunSpec, command: str = "") -> dict:
        cfg = self.config(spec)
        if self.args.force and Path(cfg.run_dir).exists():
            shutil.rmtree(cfg.run_dir)
        twin = None if spec.method or self.args.force else self.results.twin(cfg.to_dict())
        if twin is not None:
            record = {**twin, "key": spec.key, "table": spec.table, "name": spec.label,
                      "same_run_as": twin["key"]}
            self.results.add(record, self.results.curves.get(twin["key"], {}))
            return record
        start = time.time()
        history = None
        if spec.method:
            report, curves, seconds = self._shallow(cfg, spec)
            device = "cpu"
        else:
            report, curves, seconds, device, history = self._deep(cfg)
        record = {"key": spec.key, "table": spec.table, "name": spec.label, "variant": cfg.train.variant
                  if not spec.method else spec.method,
                  # a shallow baseline hashes the frozen --shallow-backbone's features
                  "backbone": self.args.shallow_backbone if spec.method else cfg.model.backbone,
                  "bits": spec.bits,
                  "seed": spec.seed, "split_seed": spec.split_seed, "map_all": report["map_all"],
                  "map_at_5000": report.get("map_at_5000"), "p_at_100": report.get("p_at_100"),
                  "precision_r2": report["precision_r2"], "ties": report["ties"],
                  "train_seconds": seconds,
                  "wall_seconds": time.time() - start, "device": device, "machine": machine(),
                  "epochs": cfg.train.epochs if not spec.method else None,
                  "image_size": cfg.data.image_size, "dataset": cfg.data.dataset,
                  "commit": _commit(), "config": cfg.to_dict(), "quick": bool(self.args.quick),
                  "command": command}
        if history is not None:
            # the per-epoch log (losses, omega, validation mAP), so that the training curves
            # outlive the run dir
            record["history"] = [{k: round(v, 5) if isinstance(v, float) else v for k, v in h.items()}
                                 for h in history]
        self.results.add(record, curves)
        return record

    def _deep(self, cfg):
        from ..train import encode_images, train
        set_aside_stale_run(Path(cfg.run_dir), cfg)
        trainer = train(cfg, resume=True)
        data = trainer.data
        q, db = data.split.query, data.split.database
        enc = dict(channels_last=trainer.channels_last, progress=not cfg.train.quiet)
        codes_q = encode_images(trainer.hnet, data.images, trainer.device, rows=q, **enc)
        codes_d = encode_images(trainer.hnet, data.images, trainer.device, rows=db, **enc)
        report, curves = _report(codes_q, data.labels[q], codes_d, data.labels[db])
        seconds = float(sum(h.get("epoch_seconds", 0.0) for h in trainer.history))
        device = str(trainer.device) if trainer.device.type == "cpu" else torch.cuda.get_device_name(0)
        return report, curves, seconds, device, trainer.history

    def reevaluate(self, only: str | None, command: str) -> int:
        """Rank again, tie-aware, the deep runs recorded with ties in database order whose run
        directory still holds the final checkpoint; the old figures stay under ``database_order``.
        Returns how many runs were re-evaluated."""
        from ..train import encode_split
        from ..train.checkpoint import load_checkpoint
        done, missing = 0, []
        for rec in list(self.results.runs):
            if (rec.get("ties") == "expected" or rec.get("same_run_as") or not rec.get("config")
                    or rec["variant"] not in VARIANTS or (only and only not in rec["key"])):
                continue
            run_dir = Path(rec["config"]["run_dir"])
            ckpts = sorted((run_dir / "checkpoints").glob("ckpt-*.pt"))
            if not ckpts:
                missing.append(rec["key"])
                continue
            epoch = load_checkpoint(ckpts[-1])["epoch"]
            if epoch != rec["epochs"]:
                print(f"{rec['key']}: {ckpts[-1]} is from epoch {epoch}, not {rec['epochs']}; left as it is")
                continue
            codes_q, labels_q, codes_d, labels_d, *_ = encode_split(
                ckpts[-1], self.args.device, progress=not self.args.quiet)
            report, curves = _report(codes_q, labels_q, codes_d, labels_d)
            old = {k: rec.get(k) for k in ("map_all", "map_at_5000", "p_at_100")}
            new = {"map_all": report["map_all"], "map_at_5000": report.get("map_at_5000"),
                   "p_at_100": report.get("p_at_100"), "precision_r2": report["precision_r2"],
                   "ties": report["ties"], "database_order": old,
                   "reevaluated": {"commit": _commit(), "command": command, "machine": machine()}}
            for r in [rec] + [r for r in self.results.runs if r.get("same_run_as") == rec["key"]]:
                self.results.add({**r, **new}, curves)
            print(f"{rec['key']}: mAP@all {old['map_all']:.4f} -> {new['map_all']:.4f}, "
                  f"mAP@5000 {old['map_at_5000']:.4f} -> {new['map_at_5000']:.4f}", flush=True)
            done += 1
        if missing:
            print(f"{len(missing)} runs have no checkpoint under {self.runs_dir} and are left as "
                  f"they are (marked † in the tables), e.g. {missing[0]}")
        return done

    def _shallow(self, cfg, spec):
        from .. import baselines
        from ..train import prepare_data
        data = prepare_data(cfg.data, cfg.run_dir, progress=not cfg.train.quiet)
        feats = self.features(cfg, data)
        lab = data.split.labeled if len(data.split.labeled) else data.split.database
        start = time.time()
        x, y = feats[lab], data.labels[lab]
        model = {"lsh": lambda: baselines.lsh(x, spec.bits, seed=spec.seed),
                 "pca-itq": lambda: baselines.pca_itq(x, spec.bits, seed=spec.seed),
                 "itq-cca": lambda: baselines.itq_cca(x, y, spec.bits, seed=spec.seed),
                 "sdh": lambda: baselines.sdh(x, y, spec.bits, seed=spec.seed)}[spec.method]()
        seconds = time.time() - start
        q, db = data.split.query, data.split.database
        report, curves = _report(model.encode(feats[q]), data.labels[q], model.encode(feats[db]),
                                 data.labels[db])
        return report, curves, seconds

    def features(self, cfg, data) -> np.ndarray:
        """Pooled features of the frozen (ImageNet) backbone for every image, cached on disk."""
        from ..models import build_backbone
        from ..train.build import to_tensor
        name = self.args.shallow_backbone
        path = self.runs_dir / f"features-{name}-{data.images.shape[1]}px-{len(data.images)}.npy"
        if path.is_file():
            return np.load(path)
        net = build_backbone(name, in_channels=data.channels).eval().to(memory_format=torch.channels_last)
        out = []
        with torch.no_grad():
            for i in range(0, len(data.images), 256):
                out.append(net(to_tensor(data.images[i:i + 256], torch.device("cpu"), True)).numpy())
        feats = np.concatenate(out).astype(np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, feats)
        return feats


def _commit() -> str | None:
    from ..train.trainer import git_commit
    return git_commit()


def summarise(results: Results, dataset: str, command: str) -> None:
    """Write README.md (tables with the paper's numbers side by side) and the plots."""
    from .report import write_report
    write_report(results, dataset, command, PAPER if dataset == "cifar10" else {}, TABLE_TITLES)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="ssah bench paper", description=__doc__)
    p.add_argument("--dataset", default="cifar10", choices=sorted(CONFIGS))
    p.add_argument("--config", help="base config (default: the packaged one for the dataset)")
    p.add_argument("--data-path", help="dataset path (default: the config's)")
    p.add_argument("--backbone", help="override model.backbone")
    p.add_argument("--tables", default="headline,shallow",
                   help="comma list of headline, shallow, table4, table5, table6, table3")
    p.add_argument("--bits", default=",".join(map(str, BITS)))
    p.add_argument("--seeds", default="0", help="comma list of training seeds")
    p.add_argument("--ablation-epochs", type=int, default=None, help="shorter budget for table 3-6 runs")
    p.add_argument("--baseline-epochs", type=int, default=None,
                   help="also run the headline baseline for this many epochs (a time-matched baseline)")
    p.add_argument("--row", action="append", default=[], metavar="'LABEL: KEY=VALUE ...'",
                   help="also run a headline row LABEL with these config overrides (repeatable)")
    p.add_argument("--unseen-splits", type=int, default=5)
    p.add_argument("--shallow-backbone", default="efficientnet-lite0")
    p.add_argument("--set", action="extend", nargs="+", metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--quick", action="store_true", help="minutes-long version on a small subset")
    p.add_argument("--force", action="store_true", help="re-run finished runs")
    p.add_argument("--only", help="run only entries whose key contains this text")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="results directory (default results/<dataset>)")
    p.add_argument("--runs-dir", default="runs/paper")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--report-only", action="store_true", help="only rewrite README and plots")
    p.add_argument("--reevaluate", action="store_true",
                   help="rank the finished deep runs recorded with ties in database order again, "
                        "tie-aware, from their final checkpoints (with --only: those keys)")
    args = p.parse_args(argv)
    tables = [t.strip() for t in args.tables.split(",") if t.strip()]
    unknown = set(tables) - set(TABLE_TITLES)
    if unknown:
        raise ConfigError(f"--tables: unknown {sorted(unknown)}; choose from {sorted(TABLE_TITLES)}")
    bits = [int(b) for b in args.bits.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [parse_row(r) for r in args.row]
    bench = PaperBench(args)
    specs = plan(tables, [bits[0]] if args.quick else bits, seeds, args.ablation_epochs, args.quick,
                 args.unseen_splits, args.baseline_epochs, rows)
    if args.backbone:   # deep runs on another backbone are separate rows (and run dirs)
        for s in specs:
            s.backbone = None if s.method else args.backbone
    if args.only:
        specs = [s for s in specs if args.only in s.key]
    command = "ssah bench paper " + shlex.join(argv if argv is not None else [])
    if args.reevaluate:
        print(f"{bench.reevaluate(args.only, command)} runs re-evaluated")
    elif not args.report_only:
        for i, spec in enumerate(specs, 1):
            if bench.results.done(spec) and not args.force:
                print(f"[{i}/{len(specs)}] {spec.key}: done, skipped (--force re-runs it)")
                continue
            print(f"[{i}/{len(specs)}] {spec.key}: running", flush=True)
            record = bench.run(spec, command)
            same = f", the same run as {record['same_run_as']}" if "same_run_as" in record else ""
            print(f"[{i}/{len(specs)}] {spec.key}: mAP@all {record['map_all']:.4f} "
                  f"mAP@5000 {record['map_at_5000']:.4f} ({record['train_seconds']:.0f} s training{same})",
                  flush=True)
            summarise(bench.results, args.dataset, command)
    summarise(bench.results, args.dataset, command)
    print(f"results in {bench.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
