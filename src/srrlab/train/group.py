"""Grouped training: several runs of one architecture trained as one stacked program.

Runs whose configurations differ only in :data:`MEMBER_SETTINGS` (seed, learning rate, weight
decay, epoch limit, target) share every tensor shape, so their parameters can be stacked along a
leading *member* axis and their training steps computed as one batched program
(``torch.func.vmap`` over ``torch.func.functional_call`` of the model). Each member keeps what a
run owns: its initialisation (``torch.manual_seed(seed)`` as in :func:`~srrlab.train.train`), its
data order (its own ``(seed, epoch)`` permutation, gathered per member), its learning-rate
schedule, its Adam state, its stopping rule and divergence test, and its run folder, written by the
same :class:`~srrlab.train.trainer.Trainer` code as ``srrlab train`` after every epoch — a member's
folder is a run folder like any other (``srrlab train --resume`` continues it alone).

Equivalence: a member's steps are those of the run trained alone, computed in another order (the
batched matrix products and the sum of the members' losses reassociate floating-point sums), so
weights and losses agree to fp32 round-off per step (tests/test_group.py states the tolerance);
over a run, training amplifies that round-off as it amplifies a change of torch thread count
(docs/performance.md, "Grouped training", measures both).
Dropout is not grouped: a run alone draws its masks from the global generator seeded per epoch,
which a batched program cannot reproduce member by member; runs with dropout, augmentation, the
SRR regulariser or recording, ``compile`` or ``amp`` are trained alone (:func:`group_blocker`).

Whether grouping pays depends on the hardware: a batched program saves per-operation overhead,
which is expected to dominate a small model's step on a GPU (not measured yet: no GPU was lent) but
does not on a CPU core busy with the arithmetic (measured there: 0.87–1.01× the models per hour of
single runs; docs/performance.md, "Grouped training").
"""
from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from ..data import Splits
from ..runs import RunFolder
from .trainer import RunResult, Trainer, TrainConfig, _derived_seed, _lr_at

__all__ = ["MEMBER_SETTINGS", "group_key", "group_blocker", "train_group"]

#: TrainConfig fields that may differ between the members of a group.
MEMBER_SETTINGS = ("seed", "lr", "weight_decay", "epochs", "target_ce")


def group_blocker(cfg: TrainConfig) -> str | None:
    """Why ``cfg`` cannot be trained in a group (None: it can)."""
    from ..models import model_config

    model = model_config(cfg.model, **cfg.model_options)
    reasons = [
        (model.dropout > 0 or model.attention_dropout > 0 or model.embedding_dropout > 0, "dropout"),
        (cfg.augment != "none", "augmentation"),
        (cfg.srr_every > 0, "SRR recording (srr_every)"),
        (cfg.srr_reg > 0, "the SRR regulariser"),
        (cfg.compile, "compile"),
        (cfg.amp, "amp"),
    ]
    found = [why for bad, why in reasons if bad]
    return ", ".join(found) or None


def group_key(cfg: TrainConfig) -> str:
    """Runs with equal keys can be trained as one group: everything but :data:`MEMBER_SETTINGS`."""
    d = {k: v for k, v in cfg.to_dict().items() if k not in MEMBER_SETTINGS}
    return json.dumps(d, sort_keys=True, default=str)


class _StackedAdam:
    """Adam / AdamW over stacked parameters, one learning rate and step count per member: the
    arithmetic of ``torch.optim.Adam`` (single-tensor form) with the member's values broadcast along
    axis 0."""

    def __init__(self, params: list[torch.Tensor], betas: tuple[float, float], eps: float, decoupled: bool,
                 weight_decay: torch.Tensor):
        self.params, self.betas, self.eps, self.decoupled = params, betas, eps, decoupled
        self.weight_decay = weight_decay  # (G,)
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self.steps = [0] * len(weight_decay)

    @torch.no_grad()
    def update(self, grads: Sequence[torch.Tensor], lr: torch.Tensor, active: torch.Tensor) -> None:
        """One step with per-member rates ``lr`` (G,); members with ``active`` False are left as they are."""
        beta1, beta2 = self.betas
        self.steps = [s + int(a) for s, a in zip(self.steps, active.tolist())]
        t = torch.tensor([max(s, 1) for s in self.steps], dtype=torch.float64)
        bias1 = (1 - beta1 ** t).to(lr.dtype).to(lr.device)
        bias2_sqrt = ((1 - beta2 ** t) ** 0.5).to(lr.dtype).to(lr.device)
        for p, g, m, v in zip(self.params, grads, self.exp_avg, self.exp_avg_sq):
            shape = (-1,) + (1,) * (p.dim() - 1)
            wd, rate, keep = self.weight_decay.view(shape), lr.view(shape), active.view(shape)
            new_p = p * (1 - rate * wd) if self.decoupled else p
            if not self.decoupled:
                g = g + p * wd
            new_m = torch.lerp(m, g, 1 - beta1)
            new_v = v * beta2 + (1 - beta2) * g * g
            denom = new_v.sqrt() / bias2_sqrt.view(shape) + self.eps
            new_p = new_p - (rate / bias1.view(shape)) * (new_m / denom)
            p.copy_(torch.where(keep, new_p, p))
            m.copy_(torch.where(keep, new_m, m))
            v.copy_(torch.where(keep, new_v, v))


def train_group(configs: Sequence[TrainConfig], run_dirs: Sequence[str | Path], *, splits: Splits | None = None,
                on_epoch: Callable[[int], None] | None = None) -> list[RunResult]:
    """Train the runs ``configs`` (same :func:`group_key`, no :func:`group_blocker`) into ``run_dirs``
    as one stacked program; returns one :class:`RunResult` per run, in order.

    Run folders that hold a checkpoint are continued from it, so a killed group resumes by calling
    this again (members at different epochs, killed between two members' checkpoints, are resumed
    alone; ended members are returned as they are). ``on_epoch(epoch)`` is called after each
    epoch's steps, before any member's epoch is written, as :func:`~srrlab.train.train`'s hook.
    Times in the members' files (``epoch_time_s``, ``wall_time_s``) are the group's."""
    from .trainer import resume

    configs, run_dirs = list(configs), [Path(d) for d in run_dirs]
    if len(configs) != len(run_dirs) or not configs:
        raise ValueError(f"configs and run_dirs must be non-empty and of equal length, got {len(configs)} and "
                         f"{len(run_dirs)}")
    keys = {group_key(c) for c in configs}
    if len(keys) > 1:
        raise ValueError("the runs of a group may differ only in " + ", ".join(MEMBER_SETTINGS))
    blocked = group_blocker(configs[0])
    if blocked:
        raise ValueError(f"runs with {blocked} are trained alone, not in a group (see srrlab.train.group)")
    if splits is None:
        from ..data import load_dataset

        c = configs[0]
        splits = load_dataset(c.dataset, data_dir=c.data_dir, seed=c.data_seed, **c.data_options)

    for run_dir in run_dirs:  # before anything is written
        if run_dir.exists() and any(run_dir.iterdir()) and not RunFolder(run_dir).has_checkpoint():
            raise FileExistsError(f"run folder {run_dir} already exists, is not empty and holds no checkpoint to "
                                  "continue; choose another folder")
    results: dict[int, RunResult] = {}
    trainers: dict[int, Trainer] = {}
    history: dict[int, list[dict[str, Any]]] = {}
    elapsed: dict[int, float] = {}
    epochs_at: dict[int, int] = {}
    for i, (cfg, run_dir) in enumerate(zip(configs, run_dirs)):
        trainer = Trainer(cfg, run_dir, quiet=True, splits=splits)
        if trainer.folder.has_checkpoint():
            summary = trainer.folder.summary() or {}
            if summary.get("status", "running") != "running" and trainer.folder.has_weights("final"):
                results[i] = resume(run_dir, quiet=True, splits=splits)  # ended: returned as is
                continue
            epoch, metrics = trainer._load_checkpoint()
            elapsed[i] = float(summary.get("wall_time_s", 0.0))
        else:
            metrics, elapsed[i] = trainer.start()
            epoch = 0
        trainers[i], history[i], epochs_at[i] = trainer, metrics, epoch
    if len(set(epochs_at.values())) > 1:  # killed between two members' checkpoints: resume each alone
        for i in trainers:
            results[i] = resume(run_dirs[i], quiet=True, splits=splits)
        return [results[i] for i in range(len(configs))]
    if trainers:
        _run(trainers, history, elapsed, next(iter(epochs_at.values())), results, on_epoch)
    return [results[i] for i in range(len(configs))]


def _run(trainers: dict[int, Trainer], history: dict[int, list[dict[str, Any]]], elapsed: dict[int, float],
         epoch: int, results: dict[int, RunResult], on_epoch: Callable[[int], None] | None) -> None:
    """The grouped loop: stack the live members, step them together, write every member's epoch;
    restack when members end (an ended member costs nothing afterwards)."""
    t_start = {i: time.perf_counter() - elapsed[i] for i in trainers}
    live = list(trainers)
    while live:
        stack = _Stack([trainers[i] for i in live])
        ended: list[int] = []
        while not ended:
            epoch += 1
            t0 = time.perf_counter()
            steps, lrs, losses = stack.epoch(epoch)
            seconds = time.perf_counter() - t0
            if on_epoch is not None:
                on_epoch(epoch)
            stack.unstack(lrs)
            for g, i in enumerate(live):
                status = trainers[i].end_epoch(epoch, steps[g], lrs[g], losses[g], seconds, history[i], t_start[i])
                if status is not None:
                    results[i] = trainers[i].finish(status, history[i], t_start[i])
                    ended.append(i)
        live = [i for i in live if i not in ended]


class _Stack:
    """The live members of a group as one stacked model and optimizer."""

    def __init__(self, trainers: list[Trainer]):
        self.trainers = trainers
        first = trainers[0]
        self.device, self.spe, self.batch_size = first.device, first.steps_per_epoch, first.cfg.batch_size
        train = first.splits.train
        self.n = len(train)
        self.x_all, self.y_all = train.images.to(self.device), train.labels.to(self.device)
        self.models = [t.model for t in trainers]
        self.opts = [t.optimizer for t in trainers]
        own = [dict(m.named_parameters()) for m in self.models]
        self.names = [n for n, p in own[0].items() if p.requires_grad]
        with torch.no_grad():
            self.params = {n: torch.stack([o[n].detach() for o in own]).requires_grad_(True) for n in self.names}
            self.frozen = {n: torch.stack([o[n].detach() for o in own]) for n, p in own[0].items() if not p.requires_grad}
            self.buffers = {n: torch.stack([dict(m.named_buffers())[n] for m in self.models])
                            for n, _ in self.models[0].named_buffers()}
        group0 = self.opts[0].param_groups[0]
        self.adam = _StackedAdam([self.params[n] for n in self.names], tuple(group0["betas"]), group0["eps"],
                                 decoupled=isinstance(self.opts[0], torch.optim.AdamW),
                                 weight_decay=torch.tensor([t.cfg.weight_decay for t in trainers], device=self.device))
        _load_adam_state(self.adam, self.opts, self.models, self.names)
        template = copy.deepcopy(self.models[0]).to("meta").train()

        def forward(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return functional_call(template, (p, b), (x,))

        self.forward = vmap(forward, in_dims=(0, 0, 0))

    def epoch(self, epoch: int) -> tuple[list[int], list[float], list[float]]:
        """Train every member one epoch; returns each member's step count, last learning rate and mean
        minibatch cross-entropy (NaN for a member that diverged, which stops at that step as alone)."""
        G = len(self.trainers)
        orders = torch.stack([torch.randperm(self.n, generator=torch.Generator().manual_seed(
            _derived_seed(t.cfg.seed, epoch, 1))) for t in self.trainers]).to(self.device)
        active = torch.ones(G, dtype=torch.bool, device=self.device)
        live = [True] * G  # `active` on the host: reading a CUDA tensor's entries would sync per member and step
        loss_sum = [0.0] * G
        steps = [(epoch - 1) * self.spe] * G
        lrs, seen = [0.0] * G, 0
        for b in range(self.spe):
            idx = orders[:, b * self.batch_size:(b + 1) * self.batch_size]  # (G, B): each member's own batch
            x, y = self.x_all[idx], self.y_all[idx]
            for g, t in enumerate(self.trainers):
                if live[g]:
                    lrs[g] = _lr_at(t.cfg, steps[g], t.total_steps, self.spe)
            logits = self.forward({**self.params, **self.frozen}, self.buffers, x)  # (G, B, classes)
            ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1)
            grads = torch.autograd.grad(ce.sum(), [self.params[n] for n in self.names])
            self.adam.update(grads, torch.tensor(lrs, device=self.device), active)
            values = ce.detach().cpu().tolist()
            seen += idx.shape[1]
            for g in range(G):
                if live[g]:
                    steps[g] += 1
                    loss_sum[g] += values[g] * idx.shape[1]
                    if not math.isfinite(values[g]):  # diverged: stops its epoch after this step, as alone
                        loss_sum[g] = float("nan")
                        live[g] = False
                        active[g] = False
            if not any(live):
                break
        return steps, lrs, [s / seen for s in loss_sum]

    @torch.no_grad()
    def unstack(self, lrs: list[float]) -> None:
        """Copy each member's slice of the stacked parameters and Adam state (and its last learning
        rate ``lrs[g]``) into its own model and ``torch.optim`` optimizer, so that its checkpoint is
        exactly what a run alone writes."""
        for g, (model, opt) in enumerate(zip(self.models, self.opts)):
            for group in opt.param_groups:
                group["lr"] = lrs[g]
            own = dict(model.named_parameters())
            for n, m, v in zip(self.names, self.adam.exp_avg, self.adam.exp_avg_sq):
                p = own[n]
                p.copy_(self.params[n][g])
                opt.state[p] = {"step": torch.tensor(float(self.adam.steps[g])), "exp_avg": m[g].clone(),
                                "exp_avg_sq": v[g].clone()}


@torch.no_grad()
def _load_adam_state(adam: _StackedAdam, opts: list[torch.optim.Optimizer], models: list[torch.nn.Module],
                     names: list[str]) -> None:
    """Stack the members' optimizer states (fresh optimizers leave zeros at step 0)."""
    for g, (model, opt) in enumerate(zip(models, opts)):
        own = dict(model.named_parameters())
        for k, n in enumerate(names):
            state = opt.state.get(own[n])
            if state:
                adam.steps[g] = int(state["step"])
                adam.exp_avg[k][g].copy_(state["exp_avg"])
                adam.exp_avg_sq[k][g].copy_(state["exp_avg_sq"])
