"""Import checkpoints of the official CRATE code (``model/crate.py``, docs/theory.md §8)."""
from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Any

import torch

from .crate import CRATE, CRATEConfig

__all__ = ["load_official_crate", "official_key_map", "read_state_dict"]

# heads of the official sizes, by width (CRATE_tiny / small / base / large)
_OFFICIAL_HEADS = {384: 6, 576: 12, 768: 12, 1024: 16}

_GLOBAL_KEYS = {
    "to_patch_embedding.1": "patch_norm_in",
    "to_patch_embedding.2": "patch_proj",
    "to_patch_embedding.3": "patch_norm_out",
    "mlp_head.0": "head_norm",
    "mlp_head.1": "head",
}
_LAYER_KEYS = {
    "0.norm": "norm1",
    "0.fn.qkv": "attn.qkv",
    "0.fn.to_out.0": "attn.to_out",
    "1.norm": "norm2",
    "1.fn": "ista",
}
_LAYER_RE = re.compile(r"^transformer\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def official_key_map(key: str) -> str | None:
    """srrlab's name for an official state-dict key, or ``None`` if the key is not recognised."""
    if key in ("pos_embedding", "cls_token"):
        return key
    m = _LAYER_RE.match(key)
    if m:
        layer, module, leaf = m.groups()
        ours = _LAYER_KEYS.get(module)
        return None if ours is None else f"layers.{layer}.{ours}.{leaf}"
    module, _, leaf = key.rpartition(".")
    ours = _GLOBAL_KEYS.get(module)
    return None if ours is None or leaf not in ("weight", "bias") else f"{ours}.{leaf}"


def _official_name(ours: str) -> str:
    """The official key for one of srrlab's keys (inverse of :func:`official_key_map`), for messages."""
    if ours in ("pos_embedding", "cls_token"):
        return ours
    module, _, leaf = ours.rpartition(".")
    if module.startswith("layers."):
        _, layer, rest = module.split(".", 2)
        inverse = {v: k for k, v in _LAYER_KEYS.items()}
        return f"transformer.layers.{layer}.{inverse.get(rest, rest)}.{leaf}"
    inverse = {v: k for k, v in _GLOBAL_KEYS.items()}
    return f"{inverse.get(module, module)}.{leaf}"


def read_state_dict(state_dict_or_path: Mapping[str, torch.Tensor] | str | os.PathLike) -> dict[str, torch.Tensor]:
    """A flat ``{key: tensor}`` from a state dict or a checkpoint file, never unpickling arbitrary objects.

    ``.safetensors`` files are read with safetensors; other files with
    ``torch.load(weights_only=True)``, which admits tensors and plain containers only.
    Wrappers ``{"model": …}`` / ``{"state_dict": …}`` and DDP's ``module.`` prefix are removed.
    """
    if isinstance(state_dict_or_path, (str, os.PathLike)):
        path = os.fspath(state_dict_or_path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint {path!r} does not exist")
        try:
            if path.endswith(".safetensors"):
                from safetensors.torch import load_file

                obj: Any = load_file(path)
            else:
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # unpickling refused or corrupt file
            raise ValueError(
                f"could not read checkpoint {path!r} as tensors only ({type(exc).__name__}: {exc}); "
                "srrlab never unpickles arbitrary objects: re-save the state dict with torch.save(model.state_dict()) "
                "or as .safetensors"
            ) from None
    else:
        obj = state_dict_or_path
    for wrapper in ("model", "state_dict", "model_state_dict"):
        if isinstance(obj, Mapping) and wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint holds a {type(obj).__name__}, expected a state dict (a mapping of names to tensors)")
    out = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        out[key[len("module."):] if key.startswith("module.") else key] = value
    return out


def _infer_config(sd: Mapping[str, torch.Tensor], overrides: dict[str, Any]) -> CRATEConfig:
    def need(key: str) -> torch.Tensor:
        if key not in sd:
            raise ValueError(f"not an official CRATE checkpoint: key {key!r} is missing (docs/theory.md §8 lists the keys)")
        return sd[key]

    qkv = need("transformer.layers.0.0.fn.qkv.weight")
    inner, dim = qkv.shape
    depth = 1 + max(int(m.group(1)) for k in sd if (m := _LAYER_RE.match(k)))
    num_classes = need("mlp_head.1.weight").shape[0]
    patch_dim = need("to_patch_embedding.2.weight").shape[1]
    num_patches = need("pos_embedding").shape[1] - 1
    channels = overrides.get("channels", 3)
    patch = overrides.get("patch_size", math.isqrt(patch_dim // channels))
    if channels * patch * patch != patch_dim:
        raise ValueError(
            f"patch embedding takes {patch_dim} inputs, which is not channels × patch_size² for "
            f"channels={channels}, patch_size={patch}; pass channels= and patch_size="
        )
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        raise ValueError(f"pos_embedding has {num_patches} patches, not a square grid; only square images are supported")
    heads = overrides.get("heads", _OFFICIAL_HEADS.get(dim))
    if heads is None:
        raise ValueError(f"cannot infer the number of heads for dim={dim} (not an official size); pass heads=")
    if inner % heads:
        raise ValueError(f"qkv has {inner} output rows, not divisible by heads={heads}")
    cfg = dict(
        variant="crate", image_size=grid * patch, patch_size=patch, channels=channels,
        num_classes=num_classes, dim=dim, depth=depth, heads=heads, dim_head=inner // heads,
    )
    cfg.update(overrides)
    return CRATEConfig(**cfg)


def load_official_crate(state_dict_or_path: Mapping[str, torch.Tensor] | str | os.PathLike, **config: Any) -> CRATE:
    """Build a ``crate`` model from a checkpoint of the official CRATE code (docs/theory.md §8).

    The architecture (width, depth, classes, patch size, image size, heads for the official
    widths) is inferred from the tensors; any :class:`CRATEConfig` field can be given to
    override or complete it (e.g. ``heads=`` for a non-official width, ``ista=`` for a
    non-default ISTA step, ``channels=1``). The returned model's logits equal the official
    forward's to fp32 precision. Every checkpoint tensor must be used and every model tensor
    provided; otherwise a ``ValueError`` lists the keys.
    """
    if config.get("variant", "crate") != "crate":
        raise ValueError("official checkpoints are of the 'crate' variant; do not pass variant=")
    sd = read_state_dict(state_dict_or_path)
    cfg = _infer_config(sd, config)
    model = CRATE(cfg)
    ours = model.state_dict()
    mapped, unknown = {}, []
    for key, value in sd.items():
        name = official_key_map(key)
        if name is None or name not in ours:
            unknown.append(key)
        else:
            mapped[name] = value
    missing = sorted(set(ours) - set(mapped))
    if unknown or missing:
        raise ValueError(
            "checkpoint does not match an official CRATE model"
            + (f"; unrecognised keys: {', '.join(sorted(unknown)[:8])}" if unknown else "")
            + (f"; missing keys: {', '.join(f'{_official_name(k)} (srrlab {k})' for k in missing[:8])}" if missing else "")
        )
    for name, value in mapped.items():
        if tuple(value.shape) != tuple(ours[name].shape):
            raise ValueError(
                f"checkpoint tensor {_official_name(name)} (srrlab {name}) has shape {tuple(value.shape)}, the model expects "
                f"{tuple(ours[name].shape)}; check the config overrides {config}"
            )
    model.load_state_dict(mapped)
    return model
