"""The results README (our numbers beside the paper's) and plots of ``ssah bench paper``."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError


def _cell(values) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values):.3f} (n={len(values)})"


def _mixed_cell(runs: list[dict]) -> str:
    """Tie-aware runs and runs marked † (ranked with ties in database order, which biases mAP
    down) are summarised apart, never averaged together: ``"0.56 ± 0.02 (n=2); 0.58 †"``."""
    fair = [r["map_all"] for r in runs if r.get("ties") == "expected"]
    old = [r["map_all"] for r in runs if r.get("ties") != "expected"]
    parts = ([_cell(fair)] if fair or not old else []) + ([_cell(old) + " †"] if old else [])
    return "; ".join(parts)


def table_markdown(runs: list[dict], table: str, paper: dict, bits_all=(12, 24, 48)) -> str:
    rows = [r for r in runs if r["table"] == table]
    if not rows:
        return ""
    names = list(dict.fromkeys(r["name"] for r in rows))
    names += [n for (t, n) in paper if t == table and n not in names]
    bits = [b for b in bits_all if any(r["bits"] == b for r in rows) or
            any(b in paper.get((table, n), {}) for n in names)]
    head = "| method | " + " | ".join(f"{b} bits ours | {b} bits paper" for b in bits) + " | training s |"
    sep = "|---" * (1 + 2 * len(bits) + 1) + "|"
    lines = [head, sep]
    for n in names:
        cells = []
        for b in bits:
            mine = [r for r in rows if r["name"] == n and r["bits"] == b]
            ref = paper.get((table, n), {}).get(b)
            cells += [_mixed_cell(mine), "–" if ref is None else f"{ref:.3f}"]
        secs = [r["train_seconds"] for r in rows if r["name"] == n]
        seconds = f"{np.mean(secs):.0f}" if secs else "–"
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {seconds} |")
    return "\n".join(lines)


def budget_line(runs: list[dict], table: str) -> str:
    """What a table's runs were given: epochs (deep runs) or features (shallow ones), and where."""
    rows = [r for r in runs if r["table"] == table]
    if not rows:
        return ""
    backbones = ", ".join(sorted({r["backbone"] for r in rows}))
    sizes = ", ".join(sorted({str(r["image_size"]) for r in rows}))
    devices = "; ".join(sorted({f"{r['device']} ({r['machine']})" for r in rows}))
    quick = " QUICK MODE (tiny subset, pipeline check only)." if any(r.get("quick") for r in rows) else ""
    epochs = sorted({r["epochs"] for r in rows if r.get("epochs")})
    if epochs:
        unit = "epoch" if epochs == [1] else "epochs"
        what = f"Budget: {', '.join(map(str, epochs))} {unit}; backbone {backbones} at {sizes} px"
    else:
        what = (f"Features: the pooled features of the frozen, ImageNet-pretrained {backbones} at "
                f"{sizes} px, hash functions fitted on the labeled images")
    return f"{what}; device {devices}.{quick}"


def write_report(results, dataset: str, command: str, paper: dict, titles: dict) -> Path:
    out = results.out
    runs = results.runs
    commands = list(dict.fromkeys(r.get("command") or command for r in runs)) or [command]
    parts = [f"# Results on {dataset}", "",
             "mAP over the whole database (mAP@all); `–` is a missing number. "
             "Every number below comes from these commands (each run records its own in "
             "`results.json`; runs checkpoint and resume, finished runs are skipped):", "",
             "```sh\n" + "\n".join(c.strip() for c in commands) + "\n```", "",
             "Ranked metrics (mAP, mAP@K, P@N) are tie-aware: the expectation over random orders "
             "of the database items at equal Hamming distance from the query. A number marked † "
             "was ranked with ties in database order, before that was fixed; where the database "
             "is stored class by class (CIFAR-10's zip is; Fashion-MNIST's files are not) that puts "
             "other classes first in every tie and biases the number down; elsewhere it only adds "
             "noise. `ssah bench paper --reevaluate` ranks such a run again "
             "from its final checkpoint and keeps the old figures under `database_order` in "
             "`results.json`.", ""]
    if dataset == "cifar10":
        parts += ["Data: CIFAR-10 as JPEG (`../shared/data/cifar10-jpg.zip`, a lossy conversion of the "
                  "official arrays), the paper's protocol: 60,000 images pooled, 100 queries per "
                  "class, the other 59,000 the database, 500 labeled per class drawn from it, the "
                  "rest unlabeled. 50 of the 500 labeled per class are held out for validation.", ""]
    for table, title in titles.items():
        md = table_markdown(runs, table, paper)
        if md:
            parts += [f"## {title}", "", budget_line(runs, table), "", md, ""]
    analysis = out / "analysis.md"
    if analysis.is_file():
        parts += [analysis.read_text(), ""]
    parts += _plots(results, out)
    (out / "README.md").write_text("\n".join(parts) + "\n")
    return out / "README.md"


def _plots(results, out: Path) -> list[str]:
    from .. import plots
    from .paper import file_safe
    lines = ["## Plots", ""]
    by_bits = defaultdict(dict)
    for r in results.runs:
        if r["table"] in ("headline", "shallow") and r["seed"] == 0 and r["split_seed"] == 0:
            by_bits[r["bits"]][r["name"]] = results.curves.get(r["key"])
    for bits, curves in sorted(by_bits.items()):
        curves = {k: v for k, v in curves.items() if v}
        if not curves:
            continue
        pr = plots.plot_pr_curves({k: (v["precision"], v["recall"]) for k, v in curves.items()},
                                  out / f"pr_{bits}b.png", f"Precision-recall, {bits} bits")
        pn = plots.plot_precision_at_n({k: (v["ns"], v["p_at_n"]) for k, v in curves.items()},
                                       out / f"p_at_n_{bits}b.png", f"Precision@N, {bits} bits")
        lines += [f"![PR {bits} bits]({pr.name}) ![P@N {bits} bits]({pn.name})", ""]
    for r in results.runs:
        if r["table"] == "headline" and r["variant"] == "full" and r["seed"] == 0:
            run_dir = Path(r["config"]["run_dir"])
            log = run_dir / "log.jsonl"
            # the config's own backbone keeps the plain file names; another backbone, or another
            # headline row of the full model (--row), is named after what sets it apart
            extra = r["name"].removeprefix("full").strip()
            if extra.startswith("(") and extra.endswith(")") and extra.count("(") == 1:
                extra = extra[1:-1]         # "full (sampled band)" -> "sampled band"
            tag = file_safe(f"_{extra}") if extra else ""
            what = f"{r['bits']} bits" + (f", {extra}" if extra else "")
            # the recorded history redraws the curves; a record older than that uses the run
            # dir's log and checkpoint only where they reached the recorded epoch (a --force
            # re-run in progress must not redraw them), and otherwise keeps its committed plots
            png = out / f"training_full_{r['bits']}b{tag}.png"
            source = r.get("history") or (log if _last_epoch(log) == r.get("epochs") else None)
            if source:
                png = plots.plot_training_curves(source, png, f"Full SSAH training, {what}")
            if png.is_file():
                lines += [f"![training {what}]({png.name})", ""]
            grid = out / f"generated_{r['bits']}b{tag}.png"
            grid = generated_grid(run_dir, grid, epoch=r.get("epochs")) or (grid if grid.is_file() else None)
            if grid is not None:
                lines += [f"Hard images generated by the trained A-Net ({what}): each row is a "
                          "training image, then its three MARN rotation bands with MSMN masks applied, "
                          "then the image masks.", "", f"![generated]({grid.name})", ""]
    return lines


def _last_epoch(log: Path) -> int | None:
    """The ``epoch`` of the last record of a ``log.jsonl``; None if it is missing, empty or unreadable."""
    from ..plots import read_log
    try:
        records = read_log(log)
    except DataError:
        return None
    return records[-1].get("epoch") if records else None


def generated_grid(run_dir: Path, path: Path, n_images: int = 6, epoch: int | None = None):
    """Run the trained A-Net of ``run_dir`` on a few labeled training images and plot them
    (None where there is no checkpoint with an A-Net, or, given ``epoch``, none from that epoch)."""
    from .. import plots
    from ..config import Config
    from ..train import build_anet, prepare_data
    from ..train.build import to_tensor
    from ..train.checkpoint import latest_checkpoint
    found = latest_checkpoint(run_dir / "checkpoints")
    if found is None or not found[1].get("anet") or (epoch is not None and found[1].get("epoch") != epoch):
        return None
    state = found[1]
    cfg = Config.from_dict(state["config"])
    data = prepare_data(cfg.data, run_dir, progress=False)
    anet = build_anet(cfg, data.channels)
    anet.load_state_dict(state["anet"])
    anet.eval()
    anet.sample_band = False   # show every band
    rows = data.train_labeled[np.linspace(0, len(data.train_labeled) - 1, n_images).astype(int)]  # several classes
    x = to_tensor(data.images[rows], torch.device("cpu"), False)
    with torch.no_grad():
        gen = anet(x)
    imgs = gen.images.clamp(0, 1).permute(0, 2, 3, 1).numpy()
    bands = [imgs[i * len(rows):(i + 1) * len(rows)] for i in range(gen.n)]
    masks = None
    if gen.image_mask is not None:
        am, pm = gen.image_mask
        masks = {"additive tanh(AM)": torch.tanh(am)[:len(rows), 0].numpy(),
                 "multiplicative sigmoid(PM)": torch.sigmoid(pm)[:len(rows), 0].numpy()}
    return plots.plot_generated_grid(x.permute(0, 2, 3, 1).numpy(), bands, masks, path,
                                     f"A-Net generations ({cfg.train.variant}, {cfg.model.bits} bits)")
