"""The configuration of a training run: :class:`TrainConfig` (re-exported by :mod:`srrlab.train`).

A module of its own, importing nothing heavy: ``srrlab train --help`` builds one flag per field from
this class (:func:`srrlab.options.add_flags`) without torch; :mod:`srrlab.train.trainer` runs it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..names import DATASETS
from ..options import check_keys, check_types, option, srr_option

__all__ = ["TrainConfig", "AUGMENTATIONS"]

#: Training-set augmentations (``TrainConfig.augment``).
AUGMENTATIONS = ("none", "crop-flip", "randaugment")


@dataclass
class TrainConfig:
    """Everything that defines a training run. Saved as ``config.json`` in the run folder."""

    # Each field's help text is the `srrlab train --<field>` help (srrlab.options.add_flags).
    model: str = option("crate-t-digits", help="<variant>-<size>; see `srrlab models`")
    model_options: dict[str, Any] = option(default_factory=dict, flag=False,
                                           help="CRATEConfig overrides (`srrlab train --set KEY=VALUE`)")
    dataset: str = option("digits", help="the dataset", choices=tuple(DATASETS))
    data_dir: str | None = option(None, help="folder with the dataset's files (default: $SRRLAB_DATA, then the "
                                             "dataset's own search; see docs/data.md)")
    data_seed: int = option(0, help="split seed (digits) / generation seed (synthetic)")
    data_options: dict[str, Any] = option(default_factory=dict, flag=False,
                                          help="dataset options (`srrlab train --data-option KEY=VALUE`)")
    # True/False are accepted for "crop-flip"/"none".
    augment: str | bool = option("none", nargs="?", const="crop-flip", choices=AUGMENTATIONS,
                                 help="crop-flip (the value when the flag is given alone): random crop with "
                                      "padding (4 for 32×32, 1 for 8×8) + horizontal flip; randaugment: random "
                                      "resized crop + flip + RandAugment(N, M) (docs/theory.md §7)")
    randaugment_ops: int = option(2, help="N of RandAugment(N, M)")
    randaugment_magnitude: int = option(14, help="M of RandAugment(N, M), 0..30")
    optimizer: str = option("adam", choices=("adam", "adamw"), help="the optimizer")
    lr: float = option(1e-3, help="peak learning rate")
    weight_decay: float = option(0.0, help="weight decay")
    schedule: str = option("cosine", choices=("cosine", "constant"), help="learning-rate schedule")
    warmup_epochs: float = option(0.0, help="linear warm-up epochs")
    batch_size: int = option(64, help="training batch size")
    epochs: int = option(50, help="epoch limit")
    target_ce: float | None = option(0.01, help="stop when the full-train-set cross-entropy reaches it; none: "
                                                "train for --epochs")
    seed: int = option(0, help="seed of initialisation, data order, augmentation and dropout")
    device: str = option("auto", help="auto (CUDA if available, else CPU), cpu, cuda, cuda:N")
    amp: bool = option(False, help="bf16 autocast (CUDA only)")
    compile: bool = option(False, help="torch.compile (inductor) the training forward; the model, checkpoints, "
                                       "evaluation and measures stay on the plain module (opt-in; compilation "
                                       "takes ~30 s on first use; see docs/performance.md)")
    eval_batch_size: int = option(500, help="batch size of evaluation")
    srr_every: int = option(0, metavar="E", help="record the per-layer SRR table (train set, protocols of "
                                                 "--srr-layernorm) at init and every E epochs; 0: never")
    srr_images: int | None = srr_option("srr_images")
    srr_layernorm: str = option("pre,none", metavar="PROTOCOLS",
                                help="LayerNorms removed for the recording: pre, all, none, or several "
                                     "comma-separated (both, side by side in `srrlab layerwise`; the first is "
                                     "the epoch's logged `srr`; docs/measures.md)")
    srr_sparsity: str = srr_option("sparsity")
    srr_rate: str = srr_option("rate")
    srr_eps: float | None = srr_option("srr_eps")
    srr_lam: float = srr_option("srr_lam")
    srr_reg: float = option(0.0, metavar="ETA", help="add η·mean over the selected layers of "
                                                     "μ^ℓ(layer(StopGrad(Z^{ℓ-1}))) to the loss (docs/theory.md "
                                                     "§7); 0: plain cross-entropy")
    srr_layers: str = option("last", help="regularised layers: last, all, random, or 1-based indices 1,6,12")
    srr_l1: float = option(0.0, metavar="W", help="add W·‖Z^ℓ‖₁, a trainable surrogate of ‖Z‖₀, to the regulariser")

    def __post_init__(self) -> None:
        check_types(self)
        if isinstance(self.augment, bool):
            self.augment = "crop-flip" if self.augment else "none"
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid field."""
        from ..models import model_config  # here: the command line builds its flags from this class without torch

        try:
            model_config(self.model, **self.model_options)
        except TypeError as exc:  # an unknown model option
            raise ValueError(str(exc)) from None
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be 'adam' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        for name in ("batch_size", "epochs", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}")
        if not isinstance(self.randaugment_ops, int) or self.randaugment_ops < 0:
            raise ValueError(f"randaugment_ops must be a non-negative integer, got {self.randaugment_ops!r}")
        if not isinstance(self.randaugment_magnitude, int) or not 0 <= self.randaugment_magnitude <= 30:
            raise ValueError(f"randaugment_magnitude must be an integer in 0..30, got {self.randaugment_magnitude!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be non-negative, got {self.weight_decay!r}")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be non-negative, got {self.warmup_epochs!r}")
        if not isinstance(self.srr_every, int) or self.srr_every < 0:
            raise ValueError(f"srr_every must be a non-negative integer (0 = off), got {self.srr_every!r}")
        if self.srr_reg < 0 or self.srr_l1 < 0:
            raise ValueError(f"srr_reg and srr_l1 must be non-negative, got {self.srr_reg!r}, {self.srr_l1!r}")
        self.srr_protocols()  # one clear error for a bad protocol
        if self.srr_images is not None and self.srr_images < 1:
            raise ValueError(f"srr_images must be a positive integer or None (all), got {self.srr_images!r}")
        if self.target_ce is not None and self.target_ce < 0:
            raise ValueError(f"target_ce must be non-negative or None, got {self.target_ce!r}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile must be true or false, got {self.compile!r}")

    def srr_protocols(self) -> list["SRRProtocol"]:
        """The evaluation protocols of the ``srr_every`` recording, one per ``srr_layernorm`` entry."""
        from ..rate import SRRProtocol

        names = [n.strip() for n in str(self.srr_layernorm).split(",") if n.strip()]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"srr_layernorm must be one or more distinct comma-separated names of pre, all, none "
                             f"(e.g. \"pre,none\"), got {self.srr_layernorm!r}")
        try:
            return [SRRProtocol(n, self.srr_sparsity, self.srr_rate) for n in names]
        except ValueError as exc:
            raise ValueError(f"srr_layernorm/srr_sparsity/srr_rate: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        check_keys(d, (f.name for f in dataclasses.fields(cls)), "training option")
        return cls(**d)
