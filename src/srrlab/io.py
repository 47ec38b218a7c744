"""Atomic file writes: a file is either absent, its old version, or complete — never half-written."""
from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

_UMASK = os.umask(0)
os.umask(_UMASK)

__all__ = ["atomic_write", "error_line", "to_json", "write_json", "read_json", "write_jsonl", "read_jsonl", "save_weights", "load_weights"]


def error_line(exc: BaseException, limit: int | None = None) -> str:
    """``Type: first line of the message`` (at most ``limit`` characters of it): how an error met
    while reading or setting something up is quoted inside srrlab's own one-line messages."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first if limit is None else first[:limit]}"


def atomic_write(path: str | os.PathLike, writer: Callable[[str], None]) -> Path:
    """Call ``writer(tmp_path)`` to produce the file, then move it over ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        # mkstemp creates 0600, and some writers (safetensors) replace the file with their own 0600
        # one: give the result the usual permissions, like every other file of a run
        os.chmod(tmp, 0o666 & ~_UMASK)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _write_text(path: str | os.PathLike, text: str) -> Path:
    def writer(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    return atomic_write(path, writer)


def _finite(obj: Any) -> Any:
    """``obj`` with every NaN/±inf float replaced by ``None`` (JSON has no such numbers)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (Path, torch.Tensor)) or hasattr(obj, "item"):
        return _finite(_jsonable(obj))
    return obj


def to_json(obj: Any, indent: int | None = None) -> str:
    """Strict JSON text of ``obj``: a NaN or infinite number (a diverged run's loss) is written as
    ``null``, never as the bare ``NaN`` that strict parsers reject; tensors and numpy scalars as numbers."""
    return json.dumps(_finite(obj), indent=indent, allow_nan=False, default=_jsonable)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return _write_text(path, to_json(obj, indent=2) + "\n")


def _damaged(path: str | os.PathLike, exc: json.JSONDecodeError) -> ValueError:
    return ValueError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno} column {exc.colno}): the file is "
                      "damaged; restore it, or delete its folder and run again")


def read_json(path: str | os.PathLike) -> Any:
    """The JSON file ``path``; a damaged file raises one ``ValueError`` naming it."""
    with open(path, encoding="utf-8") as fh:
        try:
            return json.load(fh)
        except json.JSONDecodeError as exc:
            raise _damaged(path, exc) from None


def write_jsonl(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> Path:
    return _write_text(path, "".join(to_json(dict(r)) + "\n" for r in rows))


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of the JSON-lines file ``path`` (none if it is absent); a damaged line raises one
    ``ValueError`` naming the file."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as fh:
        try:
            return [json.loads(line) for line in fh if line.strip()]
        except json.JSONDecodeError as exc:
            raise _damaged(path, exc) from None


def save_weights(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> Path:
    """Save a state dict as safetensors (contiguous CPU copies), atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=dict(metadata or {})))


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return load_file(os.fspath(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for a damaged file
        raise ValueError(f"{path} is damaged or not a safetensors file ({error_line(exc, 160)}); restore "
                         "it, or delete its run folder and train again") from None


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
