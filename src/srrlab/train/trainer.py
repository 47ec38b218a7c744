"""Training CRATE models: a config dataclass, a resumable run folder, deterministic seeds.

The run folder's layout is owned by :class:`srrlab.runs.RunFolder`; the trainer owns its
checkpoint inside it::

    checkpoint/latest.json      pointer to the newest complete checkpoint
    checkpoint/epoch-NNNN/      model.safetensors + optimizer.pt (for --resume)

Every file is written atomically; a checkpoint becomes visible only when ``latest.json`` is
replaced, after its files and the metrics are on disk, so an interrupted run resumes from the
last complete epoch and ends with the same numbers as an uninterrupted one.

Randomness is a pure function of ``(seed, epoch)``: the model is initialised after
``torch.manual_seed(seed)``, and each epoch re-seeds the shuffling, augmentation and dropout
generators from ``(seed, epoch)``. Resuming therefore needs no saved RNG state.
"""
from __future__ import annotations

import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import __version__
from ..data import ImageDataset, Splits, augment, load_dataset, rand_augment, random_resized_crop
from ..io import atomic_write, error_line, load_weights, read_json, save_weights, write_json
from ..models import CRATE, model_config
from ..options import EXECUTION_SETTINGS
from ..runs import RUN_STATUSES, RunFolder
from .config import AUGMENTATIONS, TrainConfig  # there: srrlab train --help builds its flags without torch

__all__ = ["TrainConfig", "RunResult", "train", "resume", "load_run", "read_layerwise", "select_device", "STATUSES",
           "EXECUTION_SETTINGS",
           "AUGMENTATIONS"]

#: States of a run (:data:`srrlab.runs.RUN_STATUSES`).
STATUSES = RUN_STATUSES
@dataclass
class RunResult:
    """What :func:`train` and :func:`resume` return."""

    run_dir: Path
    status: str
    epochs: int  # epochs completed
    metrics: list[dict[str, Any]]  # one dict per epoch, epoch 0 first
    model: CRATE
    summary: dict[str, Any] = field(default_factory=dict)  # what summary.json holds

    @property
    def final(self) -> dict[str, Any]:
        return self.metrics[-1]


def select_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use --device cpu or auto")
    return device


def _derived_seed(seed: int, epoch: int, stream: int) -> int:
    """A fixed 63-bit seed for (run seed, epoch, stream): reproducible and independent of history."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + stream * 0x94D049BB133111EB) & (2**64 - 1)
    x ^= x >> 31
    return x & (2**63 - 1)


def _lr_at(cfg: TrainConfig, step: int, total: int, steps_per_epoch: int) -> float:
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@torch.no_grad()
def evaluate(model: CRATE, data: ImageDataset, *, batch_size: int = 500, device: torch.device | None = None,
             amp: bool = False) -> dict[str, float]:
    """Cross-entropy (mean) and accuracy of ``model`` on the whole of ``data``, in eval mode."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(data), batch_size):
        x = data.images[start:start + batch_size].to(device, non_blocking=True)
        y = data.labels[start:start + batch_size].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        total_loss += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(-1) == y).sum().item()
    model.train(was_training)
    n = len(data)
    return {"ce": total_loss / n, "acc": correct / n}


class Trainer:
    """One training run in one run folder. Use :func:`train` / :func:`resume`."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, *, quiet: bool = False, splits: Splits | None = None,
                 on_epoch: Callable[[int], None] | None = None):
        self.cfg = cfg
        self.on_epoch = on_epoch
        self.run_dir = run_dir
        self.folder = RunFolder(run_dir)
        self.quiet = quiet
        self.device = select_device(cfg.device)
        if cfg.amp and self.device.type != "cuda":
            raise ValueError("amp (bf16 autocast) is for CUDA only; on CPU train in fp32 (drop --amp)")
        self.splits = splits if splits is not None else load_dataset(
            cfg.dataset, data_dir=cfg.data_dir, seed=cfg.data_seed, **cfg.data_options)
        train = self.splits.train
        options = dict(image_size=train.image_size, channels=train.channels, num_classes=train.num_classes)
        options.update(cfg.model_options)
        self.model_config = model_config(cfg.model, **options)
        torch.manual_seed(cfg.seed)
        self.model = CRATE(self.model_config).to(self.device)
        self.optimizer = _make_optimizer(cfg, self.model)
        self.steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.padding = 4 if train.image_size >= 16 else 1
        self.layerwise: list[dict[str, Any]] = []  # rows of layerwise.jsonl
        self.regularizer = None
        if cfg.srr_reg > 0:
            from .regularizer import SRRRegularizer

            self.regularizer = SRRRegularizer(self.model_config.depth, cfg.srr_reg, cfg.srr_layers, cfg.srr_eps,
                                              cfg.srr_lam, cfg.srr_l1)
        elif cfg.srr_layers != "last":
            from .regularizer import parse_layers

            parse_layers(cfg.srr_layers, self.model_config.depth)  # validate even when η = 0
        # The training forward: the plain module, or torch.compile'd views of it after _setup_compile().
        # Parameters are shared, so the optimizer, checkpoints and evaluation use ``self.model`` as is.
        self.forward = self.model
        self.forward_layers = self.model.forward_layers
        self.compile_s: float | None = None  # seconds spent compiling at setup (None: not compiled)

    # -- torch.compile -----------------------------------------------------------------
    def _setup_compile(self) -> None:
        """With ``cfg.compile``: wrap the training forward in ``torch.compile(dynamic=False)`` and compile it
        now (forward and backward, for a full batch and for the epoch's smaller last batch if there is
        one), so that a failure is a ``ValueError`` before anything is trained and no epoch's time
        includes compilation (``compile_s`` is added to the run's wall time instead).

        ``self.model`` stays the plain module (no ``_orig_mod.`` prefixes in checkpoints). With the SRR
        regulariser, ``forward_layers`` is compiled; the re-applied layer and μ^ℓ run eagerly. Idempotent."""
        if not self.cfg.compile or self.compile_s is not None:
            return
        if getattr(torch, "compile", None) is None:
            raise ValueError(f"compile: torch {torch.__version__} has no torch.compile; train without it (drop --compile)")
        t0 = time.perf_counter()
        try:
            if self.regularizer is None:
                self.forward = torch.compile(self.model, dynamic=False)
            else:
                self.forward_layers = torch.compile(self.model.forward_layers, dynamic=False)
            n = len(self.splits.train)
            # static shapes: one graph for full batches and one for a smaller last batch of the epoch
            sizes = sorted({min(self.cfg.batch_size, n), n % self.cfg.batch_size} - {0}, reverse=True)
            was_training = self.model.training
            self.model.train()
            # the warm-up steps must not move the RNG streams (dropout) or leave gradients behind
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                for size in sizes:
                    x = self.splits.train.images[:size].to(self.device)
                    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.amp):
                        logits = self.forward(x) if self.regularizer is None else self.forward_layers(x).logits
                    logits.float().sum().backward()
            self.model.train(was_training)
            self.model.zero_grad(set_to_none=True)
        except Exception as exc:  # noqa: BLE001 - any backend failure becomes one clear message
            self.forward, self.forward_layers = self.model, self.model.forward_layers
            self.model.zero_grad(set_to_none=True)
            raise ValueError(f"torch.compile failed to set up ({error_line(exc)}); "
                             "train without it (drop --compile)") from exc
        self.compile_s = time.perf_counter() - t0

    # -- files --------------------------------------------------------------------------
    @property
    def ckpt_dir(self) -> Path:
        return self.folder.checkpoint_dir

    def _save_checkpoint(self, epoch: int, metrics: list[dict[str, Any]]) -> None:
        folder = self.ckpt_dir / f"epoch-{epoch:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        save_weights(folder / "model.safetensors", self.model.state_dict(), {"epoch": str(epoch)})
        atomic_write(folder / "optimizer.pt", lambda tmp: torch.save(self.optimizer.state_dict(), tmp))
        self.folder.write_metrics(metrics)
        if self.cfg.srr_every:
            self.folder.write_layerwise(self.layerwise)
        write_json(self.ckpt_dir / RunFolder.LATEST, {"epoch": epoch, "folder": folder.name})
        # keep this checkpoint and the one before it: a damaged newest one falls back to it
        for old in sorted(self.ckpt_dir.glob("epoch-*"))[:-2]:
            shutil.rmtree(old, ignore_errors=True)

    def _checkpoint_candidates(self) -> list[tuple[int, Path]]:
        """(epoch, folder) of the checkpoints to try, newest first: the one ``latest.json`` names, then
        the earlier complete one kept beside it."""
        folders = sorted(self.ckpt_dir.glob("epoch-*"), reverse=True)
        try:
            latest = read_json(self.ckpt_dir / RunFolder.LATEST)
            first = self.ckpt_dir / latest["folder"]
            folders = [first] + [f for f in folders if f.name < first.name]
        except (ValueError, KeyError, TypeError, OSError):
            pass  # a damaged pointer: the folders themselves say which checkpoints exist
        return [(int(f.name.removeprefix("epoch-")), f) for f in folders]

    def _load_checkpoint(self) -> tuple[int, list[dict[str, Any]]]:
        damaged = []
        for epoch, folder in self._checkpoint_candidates():
            for name in ("model.safetensors", "optimizer.pt"):
                path = folder / name
                try:
                    if name == "model.safetensors":
                        self.model.load_state_dict(load_weights(path))
                    else:
                        # on the CPU: load_state_dict moves the moments to the parameters' device and
                        # leaves Adam's `step` on the CPU, as a fresh optimizer keeps it (a CUDA `step`
                        # makes every non-capturable Adam step read it back with .item(), per parameter)
                        state = torch.load(path, map_location="cpu", weights_only=True)
                        self.optimizer.load_state_dict(state)
                except Exception as exc:  # noqa: BLE001 - any failure to read a file means it is damaged
                    damaged.append(f"{path} ({error_line(exc, 160)})")
                    break
            else:
                if damaged:
                    print(f"srrlab: checkpoint file {damaged[0]} is damaged; resuming from the earlier checkpoint "
                          f"of epoch {epoch}", file=sys.stderr)
                return epoch, self._history_until(epoch)
        if damaged:
            raise ValueError(f"cannot resume {self.run_dir}: checkpoint file{'s' if len(damaged) > 1 else ''} "
                             f"{'; '.join(damaged)} {'are' if len(damaged) > 1 else 'is'} damaged and no earlier "
                             f"checkpoint is kept; delete {self.run_dir} and train again")
        raise ValueError(f"{self.run_dir} has no complete checkpoint to resume from; delete it and train again")

    def _history_until(self, epoch: int) -> list[dict[str, Any]]:
        """The metrics (and layer-wise records) of epochs 0..epoch; later ones are recomputed."""
        metrics = [m for m in self.folder.metrics() if m["epoch"] <= epoch]
        if len(metrics) != epoch + 1:
            raise ValueError(f"{self.run_dir}/{RunFolder.METRICS} has {len(metrics)} epochs up to {epoch}, expected "
                             f"{epoch + 1}: the file is damaged; delete {self.run_dir} and train again")
        self.layerwise = [r for r in self.folder.layerwise() if r["epoch"] <= epoch]
        return metrics

    def _record_srr(self, m: dict[str, Any], final: bool) -> None:
        """Append the per-layer SRR table to ``self.layerwise`` at init, every ``srr_every`` epochs and at the end."""
        cfg = self.cfg
        if not cfg.srr_every or not (m["epoch"] % cfg.srr_every == 0 or final):
            return
        if self.layerwise and self.layerwise[-1]["epoch"] == m["epoch"]:
            return
        from ..rate import measure_srr

        for i, protocol in enumerate(cfg.srr_protocols()):
            result = measure_srr(self.model, self.splits.train, layernorm=protocol.layernorm,
                                 sparsity=protocol.sparsity, rate=protocol.rate, eps=cfg.srr_eps, lam=cfg.srr_lam,
                                 max_images=cfg.srr_images, batch_size=cfg.eval_batch_size)
            for row in result.table.to_dict("records"):
                self.layerwise.append({"epoch": m["epoch"], **row, "eps": result.eps, "lam": result.lam,
                                       "images": result.images, "layernorm": protocol.layernorm,
                                       "protocol": protocol.name, "protocol_train_acc": result.train_acc})
            m["srr" if i == 0 else f"srr_{protocol.layernorm}"] = result.value

    def _summary(self, status: str, metrics: list[dict[str, Any]], wall: float) -> dict[str, Any]:
        last = metrics[-1]
        return {
            "status": status,
            "epochs": last["epoch"],
            "steps": last["step"],
            "train_ce": last["train_ce"], "train_acc": last["train_acc"],
            "test_ce": last["test_ce"], "test_acc": last["test_acc"],
            "gap_ce": last["test_ce"] - last["train_ce"],
            "gap_err": last["train_acc"] - last["test_acc"],
            "best_test_acc": max(m["test_acc"] for m in metrics),
            "parameters": self.model.num_parameters(),
            "wall_time_s": wall,
            "device": str(self.device),
        }

    # -- the loop -----------------------------------------------------------------------
    def _augment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The configured augmentation of one batch; all randomness from ``gen`` (seeded per epoch)."""
        cfg, train = self.cfg, self.splits.train
        x = x.cpu()
        if cfg.augment == "crop-flip":
            x = augment(x, generator=gen, crop_padding=self.padding)
        else:  # "randaugment": random resized crop, flip, then RandAugment in pixel space
            x = random_resized_crop(x, generator=gen)
            x = augment(x, generator=gen, crop_padding=0, flip=True)
            x = rand_augment(x, generator=gen, num_ops=cfg.randaugment_ops, magnitude=cfg.randaugment_magnitude,
                             mean=train.mean, std=train.std)
        return x.to(self.device)

    def _epoch_metrics(self, epoch: int, step: int, lr: float, train_loss: float | None, seconds: float) -> dict[str, Any]:
        """One metrics.jsonl line; ``train_loss`` is the running minibatch cross-entropy (without the SRR
        regulariser, logged as ``srr_reg_value``/``srr_reg_layers``; None at epoch 0: the full-set CE)."""
        tr = evaluate(self.model, self.splits.train, batch_size=self.cfg.eval_batch_size, device=self.device, amp=self.cfg.amp)
        te = evaluate(self.model, self.splits.test, batch_size=self.cfg.eval_batch_size, device=self.device, amp=self.cfg.amp)
        return {"epoch": epoch, "step": step, "lr": lr, "train_loss": tr["ce"] if train_loss is None else train_loss,
                "train_ce": tr["ce"], "train_acc": tr["acc"], "test_ce": te["ce"], "test_acc": te["acc"],
                "epoch_time_s": seconds}

    def _status(self, m: dict[str, Any]) -> str | None:
        if not (math.isfinite(m["train_loss"]) and math.isfinite(m["train_ce"])):
            return "diverged"
        if self.cfg.target_ce is not None and m["train_ce"] <= self.cfg.target_ce:
            return "converged"
        if m["epoch"] >= self.cfg.epochs:
            return "completed" if self.cfg.target_ce is None else "not-converged"
        return None

    def run(self, start_epoch: int, metrics: list[dict[str, Any]], elapsed: float = 0.0) -> RunResult:
        self._setup_compile()
        cfg, model, opt = self.cfg, self.model, self.optimizer
        train = self.splits.train
        x_all = train.images.to(self.device)
        y_all = train.labels.to(self.device)
        t_start = time.perf_counter() - elapsed
        status = self._status(metrics[-1]) if metrics[-1]["epoch"] > 0 else None
        disable = self.quiet or not sys.stderr.isatty()
        bar = tqdm(total=self.total_steps, initial=start_epoch * self.steps_per_epoch, disable=disable,
                   desc=f"{cfg.model} {cfg.dataset}", unit="step", dynamic_ncols=True, leave=False)
        epoch = start_epoch
        try:
            while status is None:
                epoch += 1
                t0 = time.perf_counter()
                torch.manual_seed(_derived_seed(cfg.seed, epoch, 0))  # dropout
                gen = torch.Generator().manual_seed(_derived_seed(cfg.seed, epoch, 1))
                layer_gen = torch.Generator().manual_seed(_derived_seed(cfg.seed, epoch, 2))  # srr_layers=random
                reg_sums: dict[int, list[float]] = {}
                order = torch.randperm(len(train), generator=gen).to(self.device)
                model.train()
                loss_sum, seen, step = 0.0, 0, (epoch - 1) * self.steps_per_epoch
                lr = cfg.lr
                for b in range(self.steps_per_epoch):
                    idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                    x, y = x_all[idx], y_all[idx]
                    if cfg.augment != "none":
                        x = self._augment(x, gen)
                    lr = _lr_at(cfg, step, self.total_steps, self.steps_per_epoch)
                    for group in opt.param_groups:
                        group["lr"] = lr
                    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.amp):
                        if self.regularizer is None:
                            logits = self.forward(x)
                        else:
                            logits, reg, values = self.regularizer(model, x, layer_gen,
                                                                   forward_layers=self.forward_layers)
                            for ell, v in values.items():
                                reg_sums.setdefault(ell, []).append(v)
                    ce = F.cross_entropy(logits.float(), y)
                    loss = ce if self.regularizer is None else ce + cfg.srr_reg * reg.float()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    step += 1
                    loss_value = loss.item()  # the objective: NaN/inf here marks the run diverged
                    loss_sum += (loss_value if self.regularizer is None else ce.item()) * len(idx)
                    seen += len(idx)
                    bar.update(1)
                    if not math.isfinite(loss_value):
                        loss_sum = float("nan")  # diverged (the CE alone may still be finite)
                        break
                status = self.end_epoch(epoch, step, lr, loss_sum / seen, time.perf_counter() - t0, metrics,
                                        t_start, reg_sums)
                bar.set_postfix(train_ce=f"{metrics[-1]['train_ce']:.3f}", test_acc=f"{metrics[-1]['test_acc']:.3f}")
        finally:
            bar.close()
        return self.finish(status, metrics, t_start)

    def start(self) -> tuple[list[dict[str, Any]], float]:
        """Create the run folder: config, initial weights, epoch 0 (the initialisation) evaluated and
        checkpointed. Returns the metrics so far and the seconds it took."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.folder.write_config(self.cfg.to_dict(), self.model_config.to_dict(), _provenance())
        self.folder.save_weights("init", self.model.state_dict(), 0)
        t0 = time.perf_counter()
        m0 = self._epoch_metrics(0, 0, 0.0, None, 0.0)
        self._record_srr(m0, final=False)
        self._save_checkpoint(0, [m0])
        return [m0], time.perf_counter() - t0

    def end_epoch(self, epoch: int, step: int, lr: float, train_loss: float, seconds: float,
                  metrics: list[dict[str, Any]], t_start: float, reg_sums: dict[int, list[float]] | None = None
                  ) -> str | None:
        """After epoch ``epoch``'s steps: the ``on_epoch`` hook, evaluation, the status, the layer-wise
        record, the checkpoint and the running summary (shared with grouped training). Returns the status
        (None: keep training)."""
        if self.on_epoch is not None:
            self.on_epoch(epoch)
        m = self._epoch_metrics(epoch, step, lr, train_loss, seconds)
        if reg_sums:  # mean μ^ℓ of the regularised layers over the epoch's steps
            m["srr_reg_layers"] = {str(ell): sum(v) / len(v) for ell, v in sorted(reg_sums.items())}
            m["srr_reg_value"] = sum(sum(v) for v in reg_sums.values()) / sum(len(v) for v in reg_sums.values())
        metrics.append(m)
        status = self._status(m)
        if status != "diverged":
            self._record_srr(m, final=status is not None)
        self._save_checkpoint(epoch, metrics)
        self.folder.write_summary(self._summary(status or "running", metrics, time.perf_counter() - t_start))
        return status

    def finish(self, status: str, metrics: list[dict[str, Any]], t_start: float) -> RunResult:
        """The final weights and summary of an ended run."""
        self.folder.save_weights("final", self.model.state_dict(), metrics[-1]["epoch"])
        summary = self._summary(status, metrics, time.perf_counter() - t_start)
        self.folder.write_summary(summary)
        return RunResult(self.run_dir, status, metrics[-1]["epoch"], metrics, self.model, summary)


def _provenance() -> dict[str, str]:
    return {"srrlab": __version__, "torch": torch.__version__, "python": platform.python_version()}


def train(config: TrainConfig | None = None, run_dir: str | os.PathLike | None = None, *, quiet: bool = False,
          splits: Splits | None = None, on_epoch: Callable[[int], None] | None = None, **options: Any) -> RunResult:
    """Train one model and write its run folder (see the module docstring).

    ``config`` is a :class:`TrainConfig`; keyword ``options`` build or override one, e.g.
    ``train(run_dir="runs/a", model="crate-t-digits", epochs=20)``. ``run_dir`` must not exist
    or be empty (use :func:`resume` to continue a run). ``splits`` lets callers pass already
    loaded data (it must be what ``config.dataset`` would load). ``on_epoch(epoch)`` is called after
    each epoch's training steps, before the epoch is evaluated and checkpointed: an exception raised
    there stops the run as a kill would (the folder resumes from the previous epoch).
    """
    cfg = config if config is not None else TrainConfig()
    if options:
        cfg = TrainConfig.from_dict({**cfg.to_dict(), **options})
    if run_dir is None:
        raise ValueError("run_dir is required: the folder the run writes its files to")
    run_dir = Path(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(
            f"run folder {run_dir} already exists and is not empty; resume it with "
            f"`srrlab train --resume {run_dir}` or choose another --out"
        )
    trainer = Trainer(cfg, run_dir, quiet=quiet, splits=splits, on_epoch=on_epoch)
    trainer._setup_compile()  # before the run folder exists: a refused --compile leaves nothing behind
    metrics, elapsed = trainer.start()
    return trainer.run(0, metrics, elapsed + (trainer.compile_s or 0.0))


def resume(run_dir: str | os.PathLike, *, quiet: bool = False, splits: Splits | None = None,
           on_epoch: Callable[[int], None] | None = None) -> RunResult:
    """Continue an interrupted run from its newest complete checkpoint.

    The result equals that of an uninterrupted run. A run that already ended is returned as is.
    ``on_epoch`` as in :func:`train`.
    """
    run_dir = Path(run_dir)
    folder = RunFolder(run_dir)
    cfg = TrainConfig.from_dict(folder.config()["train"])
    trainer = Trainer(cfg, run_dir, quiet=quiet, splits=splits, on_epoch=on_epoch)
    if not folder.has_checkpoint():
        raise FileNotFoundError(f"{run_dir} has no complete checkpoint to resume from; delete it and train again")
    epoch, metrics = trainer._load_checkpoint()
    summary = folder.summary() or {}
    if summary.get("status", "running") != "running" and summary.get("epochs") == epoch \
            and folder.has_weights("final"):
        return RunResult(run_dir, summary["status"], epoch, metrics, trainer.model, summary)
    trainer._setup_compile()
    return trainer.run(epoch, metrics, float(summary.get("wall_time_s", 0.0)) + (trainer.compile_s or 0.0))


def load_run(run_dir: str | os.PathLike, which: str = "final", device: str | torch.device = "cpu") -> CRATE:
    """The model of a run folder with its ``"final"`` or ``"init"`` weights (:meth:`RunFolder.load_model`)."""
    return RunFolder(run_dir).load_model(which, device)


def read_layerwise(run_dir: str | os.PathLike) -> "pd.DataFrame":
    """The per-layer SRR records of a run trained with ``srr_every > 0`` as a tidy table.

    Columns: ``epoch, layer, R, Rc, l0, fraction, mu, eps, lam, images, layernorm, protocol,
    protocol_train_acc`` (one row per recorded epoch, protocol and layer). Records written before
    the protocol was recorded (every LayerNorm removed, the count) get ``layernorm = "all"``.
    """
    import pandas as pd

    folder = RunFolder(run_dir).require()
    rows = folder.layerwise()
    if not rows:
        raise FileNotFoundError(
            f"{run_dir} has no per-layer SRR records ({RunFolder.LAYERWISE} is missing or empty): it was trained "
            "without --srr-every; train with --srr-every E (srr_every=E) to record them")
    table = pd.DataFrame(rows)
    if "layernorm" not in table:
        table["layernorm"] = "all"
        table["protocol"] = "layernorm=all sparsity=count rate=gamma1"
    return table
