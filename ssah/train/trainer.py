"""Algorithm 1: alternating, self-paced training of the A-Net (Eq 11) and the H-Net (Eq 12).

Scale of the terms (NOTES item 10): the paper sums l_sem and l_sp over all n^2 pairs and
l_con, l_quan over the n items. We divide every sum by the batch size n: pair terms are
summed over each item's partners and averaged over items (``loss.pair_reduction=row_sum``),
item terms are averaged over items. The ratios between the terms are then the paper's,
whatever the batch size, so lambda1, lambda2, alpha and beta keep the paper's values.
"""
from __future__ import annotations

import json
import math
import subprocess
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .. import __version__, metrics
from ..config import EXECUTION_KEYS, Config, config_differences, save_config
from ..errors import CheckpointError, ConfigError
from ..losses import (adversarial_loss, consistency_loss, quantization_loss, semantic_loss,
                      similarity_matrix)
from . import distributed as ddp
from .build import RunData, to_tensor, warm_start
from .checkpoint import latest_checkpoint, remove_stale_temp_files, save_checkpoint
from .encode import encode_images
from .schedules import lr_factor, omega_at


@dataclass
class StepPlan:
    """Index batches of one epoch: per step a labeled and an unlabeled batch, and the phase."""
    labeled: list
    unlabeled: list
    phases: list   # "both" (A-Net then H-Net), "anet" or "hnet"


class Trainer:
    """Trains ``hnet`` (and ``anet`` when it has parameters) on ``data`` as ``cfg`` says.

    Under ``torchrun`` (a process group is initialised) each rank trains on its slice of
    every global batch and the losses see the whole batch; see :mod:`ssah.train.distributed`.
    """

    def __init__(self, cfg: Config, hnet, anet, data: RunData, run_dir: str | Path,
                 device: torch.device):
        self.cfg, self.hnet, self.anet, self.data = cfg, hnet, anet, data
        self.run_dir = Path(run_dir)
        self.device = device
        self.rank, self.world = ddp.rank(), ddp.world_size()
        self.is_main = self.rank == 0
        t = cfg.train
        self.channels_last = t.channels_last and device.type == "cpu"
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.hnet.to(device, memory_format=fmt)
        if self.anet is not None:
            self.anet.to(device)
        if self.world > 1:
            for net in (self.hnet, self.anet):
                if net is not None:
                    ddp.use_global_batchnorm(net)   # statistics of the global batch
                    ddp.broadcast_module(net)       # every rank starts from rank 0's weights
        head = list(hnet.hash_layer.parameters())
        head_ids = {id(p) for p in head}
        body = [p for p in hnet.parameters() if id(p) not in head_ids]
        self.opt_h = torch.optim.SGD([{"params": body, "lr_mult": t.backbone_lr_mult},
                                      {"params": head, "lr_mult": 1.0}],
                                     lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
        self.learn_anet = self.anet is not None and self.anet.has_parameters()
        self.opt_a = None
        if self.learn_anet:
            params = [p for p in self.anet.parameters() if p.requires_grad]
            if t.anet_optimizer == "adam":
                self.opt_a = torch.optim.Adam(params, lr=t.anet_lr, betas=(0.5, 0.999))
            else:
                self.opt_a = torch.optim.SGD(params, lr=t.anet_lr, momentum=t.momentum,
                                             weight_decay=t.weight_decay)
        self.use_unlabeled = self.anet is not None and "con" in cfg.loss.hnet_losses \
            and len(data.split.unlabeled) > 0 and t.unlabeled_batch_size > 0
        n_lab = len(data.train_labeled)
        self.batch_size = min(t.batch_size, n_lab)
        self.steps_per_epoch = t.steps_per_epoch or max(1, math.ceil(n_lab / self.batch_size))
        self.total_steps = self.steps_per_epoch * t.epochs
        if self.world > 1:
            bu = min(t.unlabeled_batch_size, len(data.split.unlabeled)) if self.use_unlabeled else None
            for name, size in (("train.batch_size", self.batch_size), ("train.unlabeled_batch_size", bu)):
                if size is not None and size < self.world:
                    raise ConfigError(f"{name}={size} is smaller than the {self.world} processes: every "
                                      f"rank needs at least one item of each global batch")
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.history: list[dict] = []
        self._plan_epoch = None
        self._plan = None

    # ------------------------------------------------------------------ planning
    def plan(self, epoch: int) -> StepPlan:
        """Deterministic batches of ``epoch`` (numpy RNG seeded by (seed, epoch))."""
        if self._plan_epoch == epoch:
            return self._plan
        t = self.cfg.train
        rng = np.random.default_rng([t.seed, epoch])
        lab = self.data.train_labeled
        need = self.steps_per_epoch * self.batch_size
        perm = np.concatenate([rng.permutation(lab) for _ in range(math.ceil(need / len(lab)))])
        labeled = [np.sort(perm[i * self.batch_size:(i + 1) * self.batch_size])
                   for i in range(self.steps_per_epoch)]
        unlabeled = [np.empty(0, dtype=np.int64)] * self.steps_per_epoch
        if self.use_unlabeled:
            un = self.data.split.unlabeled
            bu = min(t.unlabeled_batch_size, len(un))
            need_u = self.steps_per_epoch * bu
            perm_u = np.concatenate([rng.permutation(un) for _ in range(math.ceil(need_u / len(un)))])
            unlabeled = [np.sort(perm_u[i * bu:(i + 1) * bu]) for i in range(self.steps_per_epoch)]
        if t.alternate == "epoch" and self.learn_anet:
            phases = ["anet"] * self.steps_per_epoch + ["hnet"] * self.steps_per_epoch
            labeled, unlabeled = labeled * 2, unlabeled * 2
        else:
            phases = ["both"] * self.steps_per_epoch
        self._plan_epoch, self._plan = epoch, StepPlan(labeled, unlabeled, phases)
        return self._plan

    # ------------------------------------------------------------------ losses
    def _pair(self, fn, *args, **kw):
        return fn(*args, reduction=self.cfg.loss.pair_reduction, **kw)

    def semantic_term(self, u, u_gen, S, include_xx: bool = True):
        """Eq 8: l_pair over (x, x), (x, y) and (y, y) pairs, averaged over the n generations."""
        kind = self.cfg.loss.semantic
        total = self._pair(semantic_loss, u, u, S, kind=kind) if include_xx else u.new_zeros(())
        if u_gen is not None:
            gen = [self._pair(semantic_loss, u, g, S, kind=kind) + self._pair(semantic_loss, g, g, S, kind=kind)
                   for g in u_gen]
            total = total + torch.stack(gen).mean()
        return total

    def sp_term(self, u, u_gen, S, omega, terms, weight: float = 1.0):
        """Eq 7: sum over n of l_adv(y, y, omega) (``sph``) + l_adv(x, y, omega / 2) (``spc``),
        times ``weight`` (n / generations kept, when one band per image is sampled)."""
        kw = {"self_paced": self.cfg.loss.self_paced, "hinge": self.cfg.loss.sp_hinge}
        total = u.new_zeros(())
        for g in u_gen:
            if "sph" in terms:
                total = total + self._pair(adversarial_loss, u, u, g, g, S, omega, **kw)
            if "spc" in terms:
                total = total + self._pair(adversarial_loss, u, u, u, g, S, omega / 2, **kw)
        return total * weight

    # ------------------------------------------------------------------ steps
    def _codes_of_generation(self, gen, batch):
        mu = self.hnet(gen.images, edit=gen.edit)
        return mu.view(gen.n, batch, -1)

    @staticmethod
    def _gather(t, sizes, dim: int = 0):
        """All ranks' rows of ``t`` (the global batch, in plan order); ``t`` itself in one process."""
        return t if sizes is None else ddp.gather_rows(t, sizes, dim)

    def anet_step(self, x, S, omega, sizes=None) -> dict:
        """Eq 11 with the H-Net fixed: alpha l_sp + lambda1 l_sem + beta l_quan on generated images.

        ``x`` is this rank's slice of the batch and ``sizes`` the slice sizes of all ranks
        (None in one process); ``S`` covers the global batch.
        """
        L, terms = self.cfg.loss, self.cfg.loss.anet_losses
        self.hnet.eval()
        self.hnet.requires_grad_(False)
        self.anet.train()
        try:
            with torch.no_grad():
                u = self._gather(self.hnet(x), sizes)
            gen = self.anet(x)
            u_gen = self._gather(self._codes_of_generation(gen, len(x)), sizes, dim=1)
            l_sp = self.sp_term(u, u_gen, S, omega, terms, gen.sum_weight)
            l_sem = self.semantic_term(u, u_gen, S, include_xx=False) if "sem" in terms else u.new_zeros(())
            l_quan = torch.stack([quantization_loss(g) for g in u_gen]).mean()
            loss = L.alpha * l_sp + L.lambda1 * l_sem + L.beta * l_quan
            self.opt_a.zero_grad(set_to_none=True)
            loss.backward()
            ddp.average_gradients(self.anet.parameters())
            self.opt_a.step()
        finally:
            self.hnet.requires_grad_(True)
            self.hnet.train()
        return {"a_loss": loss.item(), "a_sp": l_sp.item(), "a_sem": l_sem.item(), "a_quan": l_quan.item(),
                **self._generation_stats(gen)}

    def hnet_step(self, x, xu, S, omega, sizes=None, sizes_u=None) -> dict:
        """Eq 12: lambda1 l_sem + lambda2 l_con + beta l_quan, on originals and generated images.

        ``x``, ``xu`` are this rank's slices of the labeled and unlabeled batches, ``sizes``,
        ``sizes_u`` the slice sizes of all ranks (None in one process): the codes of every
        rank are gathered so that the loss is the single-process loss of the global batch.
        """
        L, terms = self.cfg.loss, self.cfg.loss.hnet_losses
        self.hnet.train()
        has_u = xu is not None and len(xu) > 0
        x_all = torch.cat([x, xu]) if has_u else x
        n_loc, n_all_loc = len(x), len(x_all)
        out = {}
        u_gen_all = None
        if self.anet is None:
            u_all = self.hnet(x_all)
        else:
            self.anet.eval()
            with torch.no_grad():
                gen = self.anet(x_all)
            u_all = self.hnet(x_all)
            with frozen_bn_stats(self.hnet):   # measured: mixing generated statistics hurts
                u_gen_all = self._codes_of_generation(gen, n_all_loc)
        if sizes is not None:   # [labeled of all ranks | unlabeled of all ranks], as in one process
            u_all = torch.cat([self._gather(u_all[:n_loc], sizes)]
                              + ([self._gather(u_all[n_loc:], sizes_u)] if has_u else []))
            if u_gen_all is not None:
                u_gen_all = torch.cat([self._gather(u_gen_all[:, :n_loc], sizes, dim=1)]
                                      + ([self._gather(u_gen_all[:, n_loc:], sizes_u, dim=1)]
                                         if has_u else []), dim=1)
        n_lab = n_loc if sizes is None else sum(sizes)
        u = u_all[:n_lab]
        u_gen = None if u_gen_all is None else u_gen_all[:, :n_lab]
        l_sem = self.semantic_term(u, u_gen, S) if "sem" in terms else u.new_zeros(())
        loss = L.lambda1 * l_sem
        l_quan = quantization_loss(u_all)
        if u_gen_all is not None:
            l_quan = l_quan + torch.stack([quantization_loss(g) for g in u_gen_all]).mean()
            if "con" in terms:
                l_con = torch.stack([consistency_loss(u_all, g) for g in u_gen_all]).mean()
                loss = loss + L.lambda2 * l_con
                out["h_con"] = l_con.item()
            if "sp" in terms:
                l_sp = self.sp_term(u, u_gen, S, omega, ("sph", "spc"), gen.sum_weight)
                loss = loss + L.alpha * l_sp
                out["h_sp"] = l_sp.item()
        loss = loss + L.beta * l_quan
        self.opt_h.zero_grad(set_to_none=True)
        loss.backward()
        ddp.average_gradients(self.hnet.parameters())
        self.opt_h.step()
        ddp.average_buffers(self.hnet)   # BN running statistics: the mean over ranks
        out.update({"h_loss": loss.item(), "h_sem": l_sem.item(), "h_quan": l_quan.item()})
        return out

    @staticmethod
    def _generation_stats(gen) -> dict:
        stats = {}
        if gen.angles is not None:
            for i, a in enumerate(gen.angles.detach().abs().mean(dim=1).tolist()):
                stats[f"angle_band{i + 1}"] = a
            stats["scale_mean"] = gen.scales.detach().mean().item()
        if gen.image_mask is not None:
            am, pm = gen.image_mask
            stats["mask_add_abs"] = torch.tanh(am.detach()).abs().mean().item()
            stats["mask_mul"] = torch.sigmoid(pm.detach()).mean().item()
        return stats

    # ------------------------------------------------------------------ loop
    def _set_lr(self):
        t = self.cfg.train
        f = lr_factor(self.global_step, self.total_steps, t.schedule,
                      int(t.warmup_epochs * self.steps_per_epoch))
        for g in self.opt_h.param_groups:
            g["lr"] = t.lr * g["lr_mult"] * f
        return t.lr * f

    def _batch(self, idx) -> torch.Tensor:
        x = to_tensor(self.data.images[idx], self.device, self.channels_last)
        if self.cfg.train.flip:
            flip = torch.rand(len(x)) < 0.5
            x[flip] = x[flip].flip(-1)
        return x

    def train_step(self, epoch: int, i: int) -> dict:
        plan = self.plan(epoch)
        lab, unl, phase = plan.labeled[i], plan.unlabeled[i], plan.phases[i]
        omega = omega_at(epoch, self.cfg.loss.omega, self.cfg.loss.omega_step, self.cfg.loss.omega_every)
        sizes = sizes_u = None
        lab_loc, unl_loc = lab, unl
        if self.world > 1:   # this rank's slice of the global batches; S covers the global batch
            sizes, sizes_u = ddp.shard_sizes(len(lab), self.world), ddp.shard_sizes(len(unl), self.world)
            lab_loc = ddp.local_slice(lab, self.world, self.rank)
            unl_loc = ddp.local_slice(unl, self.world, self.rank)
        x = self._batch(lab_loc)
        S = similarity_matrix(self.data.labels[lab], self.data.labels[lab]).to(self.device)
        logs = {"omega": omega, "lr": self._set_lr()}
        if self.learn_anet and phase in ("both", "anet") and self.cfg.loss.anet_losses:
            logs.update(self.anet_step(x, S, omega, sizes=sizes))
        if phase in ("both", "hnet"):
            xu = self._batch(unl_loc) if len(unl) else None
            logs.update(self.hnet_step(x, xu, S, omega, sizes=sizes, sizes_u=sizes_u))
        logs["images"] = len(lab) + len(unl)
        return logs

    def validate(self) -> float | None:
        """mAP of the validation items against the labeled training items (never the queries),
        tie-aware (``metrics.mean_average_precision(..., tie_aware=True)``).

        Under torchrun rank 0 computes it and every rank gets the value.
        """
        if self.world > 1:
            return ddp.broadcast_object(self._validate() if self.is_main else None)
        return self._validate()

    def _validate(self) -> float | None:
        if len(self.data.val) == 0:
            return None
        db = self.data.train_labeled
        codes_q = encode_images(self.hnet, self.data.images, self.device,
                                channels_last=self.channels_last, rows=self.data.val)
        codes_d = encode_images(self.hnet, self.data.images, self.device,
                                channels_last=self.channels_last, rows=db)
        return metrics.mean_average_precision(codes_q, self.data.labels[self.data.val],
                                              codes_d, self.data.labels[db], tie_aware=True)

    def fit(self, resume: bool = False) -> list[dict]:
        t = self.cfg.train
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temp_files(self.run_dir / "checkpoints")   # left by a killed writer
        restored = self.restore() if resume else False
        if not resume and self.is_main:
            self._write_run_info()
        if not restored and t.init_from:   # a resumed run continues from its own weights
            ddp.on_main(lambda: warm_start(self.hnet, self.cfg, self.data.channels))
            ddp.broadcast_module(self.hnet)
        ddp.barrier()
        while self.epoch < t.epochs:
            epoch = self.epoch
            plan = self.plan(epoch)
            n_steps = len(plan.phases)
            if self.step_in_epoch == 0:
                torch.manual_seed(ddp.rank_seed(t.seed * 100_003 + epoch, self.rank))
                self._acc = defaultdict(list)
                self._epoch_start = time.time()
                self._images = 0
            bar = tqdm(range(self.step_in_epoch, n_steps), initial=self.step_in_epoch, total=n_steps,
                       desc=f"epoch {epoch + 1}/{t.epochs}", unit="step", leave=False,
                       disable=True if t.quiet or not self.is_main else None)   # None: not on a terminal
            for i in bar:
                logs = self.train_step(epoch, i)
                self._images += logs.pop("images")
                for k, v in logs.items():
                    self._acc[k].append(v)
                bar.set_postfix({k: f"{logs[k]:.3f}" for k in ("h_loss", "a_loss", "h_sem") if k in logs})
                self.step_in_epoch = i + 1
                if self.phase_is_global_step(plan, i):
                    self.global_step += 1
                if t.checkpoint_every_steps and self.step_in_epoch % t.checkpoint_every_steps == 0 \
                        and self.step_in_epoch < n_steps:
                    self.save()
            bar.close()
            record = {"epoch": epoch + 1, **{k: float(np.mean(v)) for k, v in self._acc.items()}}
            elapsed = time.time() - self._epoch_start
            record["images_per_s"] = self._images / max(elapsed, 1e-9)
            record["epoch_seconds"] = elapsed
            if t.eval_every and ((epoch + 1) % t.eval_every == 0 or epoch + 1 == t.epochs):
                val = self.validate()
                if val is not None:
                    record["val_map"] = val
            self.history.append(record)
            if self.is_main:
                with open(self.run_dir / "log.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
            if not t.quiet and self.is_main:
                shown = " ".join(f"{k}={record[k]:.4f}" for k in ("h_loss", "h_sem", "h_con", "a_loss", "val_map")
                                 if k in record)
                tqdm.write(f"epoch {epoch + 1}/{t.epochs} {shown} ({record['images_per_s']:.0f} img/s)")
            self.epoch += 1
            self.step_in_epoch = 0
            self.save()
        return self.history

    @staticmethod
    def phase_is_global_step(plan: StepPlan, i: int) -> bool:
        """The learning-rate clock advances on H-Net steps."""
        return plan.phases[i] in ("both", "hnet")

    # ------------------------------------------------------------------ state
    def state(self) -> dict:
        m = self.cfg.model
        return {
            "hnet": self.hnet.state_dict(),
            "anet": self.anet.state_dict() if self.anet is not None else {},
            "opt_h": self.opt_h.state_dict(),
            "opt_a": self.opt_a.state_dict() if self.opt_a is not None else {},
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
            "torch_rng": torch.get_rng_state(),
            "torch_rng_ranks": ddp.all_gather_object(torch.get_rng_state()),   # one per rank
            "world_size": self.world,
            "config": self.cfg.to_dict(),
            "bits": m.bits, "backbone": m.backbone, "variant": self.cfg.train.variant,
            "in_channels": self.data.channels, "input_size": int(self.data.images.shape[1]),
            "history": json.dumps(self.history),
            "epoch_logs": json.dumps(dict(getattr(self, "_acc", {})) if self.step_in_epoch else {}),
            "epoch_images": int(getattr(self, "_images", 0)) if self.step_in_epoch else 0,
            "version": __version__,
        }

    def save(self) -> Path | None:
        """Rank 0 writes the checkpoint (every rank takes part in gathering the RNG states)."""
        state = self.state()   # collective under torchrun
        path = None
        if self.is_main:
            path = save_checkpoint(state, self.run_dir / "checkpoints",
                                   self.epoch * 1_000_000 + self.step_in_epoch,
                                   keep=self.cfg.train.keep_checkpoints)
        ddp.barrier()
        return path

    def restore(self) -> bool:
        """Continue from the newest loadable checkpoint; under torchrun rank 0 reads it and
        sends it to the others (no shared file system needed)."""
        def newest():
            found = latest_checkpoint(self.run_dir / "checkpoints")
            if found is not None:
                check_compatible(found[1], self.cfg, found[0])
            return found
        found = ddp.on_main(newest)
        if found is None:
            if self.is_main:
                self._write_run_info()
            return False
        path, state = found
        if self.is_main:   # the config it continues under (e.g. more epochs), not the first one
            save_config(self.cfg, self.run_dir / "config.yaml")
        self.hnet.load_state_dict(state["hnet"])
        if self.anet is not None and state["anet"]:
            self.anet.load_state_dict(state["anet"])
        self.opt_h.load_state_dict(state["opt_h"])
        if self.opt_a is not None and state["opt_a"]:
            self.opt_a.load_state_dict(state["opt_a"])
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step = state["global_step"]
        self.history = json.loads(state["history"])
        ranks = state.get("torch_rng_ranks") or [state["torch_rng"]]
        if len(ranks) == self.world:
            torch.set_rng_state(ranks[self.rank])
        elif self.is_main:
            torch.set_rng_state(state["torch_rng"])
        else:   # another number of processes than the checkpoint's: a fresh per-rank stream
            torch.manual_seed(ddp.rank_seed(self.cfg.train.seed * 100_003 + self.epoch, self.rank))
        if self.step_in_epoch > 0:  # mid-epoch: the epoch's running logs continue
            self._acc = defaultdict(list, json.loads(state.get("epoch_logs", "{}")))
            self._epoch_start = time.time()
            self._images = int(state.get("epoch_images", 0))
        if self.is_main:
            self._rewrite_log()
        return True

    def _rewrite_log(self):
        """``log.jsonl`` as the checkpoint's history says: epochs logged after the checkpoint
        by a run that then died are dropped, so resumed epochs are not logged twice."""
        log = self.run_dir / "log.jsonl"
        tmp = log.with_name(log.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in self.history))
        tmp.replace(log)

    def _write_run_info(self):
        save_config(self.cfg, self.run_dir / "config.yaml")
        info = {"version": __version__, "commit": git_commit(), "seed": self.cfg.train.seed,
                "device": str(self.device), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        (self.run_dir / "run.json").write_text(json.dumps(info, indent=2))
        log = self.run_dir / "log.jsonl"
        if log.exists():
            log.unlink()


@contextmanager
def frozen_bn_stats(module):
    """Batch statistics normalise, but running statistics stay those of the original images."""
    bns = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom


def check_compatible(state: dict, cfg: Config, path) -> None:
    """A checkpoint trained with another config is refused with a clear error. Only
    ``train.epochs`` (to extend a run) and how the run executes (``EXECUTION_KEYS``) may change."""
    for key, want in (("bits", cfg.model.bits), ("backbone", cfg.model.backbone),
                      ("variant", cfg.train.variant)):
        if state.get(key) != want:
            raise CheckpointError(f"{path} was trained with {key}={state.get(key)!r}, but the config "
                                  f"asks for {key}={want!r}; use another run_dir or match the config")
    if state.get("config"):
        diffs = config_differences(state["config"], cfg, EXECUTION_KEYS | {"train.epochs"})
        if diffs:
            more = f" and {len(diffs) - 5} more" if len(diffs) > 5 else ""
            raise CheckpointError(f"{path} was trained with another config ({'; '.join(diffs[:5])}{more}, "
                                  f"checkpoint -> config); use another run_dir or match the config")


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
