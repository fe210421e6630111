"""Checkpoints: the config and the state_dict in one file, loaded with ``weights_only=True``."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xtstream.errors import ModelConfigError
from xtstream.models.config import XTConfig
from xtstream.models.xt import XTModel

FORMAT = "xtstream-model"
VERSION = 1


def save_checkpoint(model: XTModel, path: str | Path, **extra: Any) -> Path:
    """Write ``{format, version, config, state_dict, **extra}``; ``extra`` must be plain values
    (numbers, strings, lists, dicts, tensors) so that it loads with ``weights_only=True``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, "config": model.config.to_dict(),
               "state_dict": model.state_dict(), **extra}
    write_atomic(payload, path)
    return path


def write_atomic(payload: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, fsync, rename over ``path``, fsync the directory: a crash
    (or SIGKILL) at any moment leaves either the old file or the new one, never a truncated one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:  # the rename itself is durable only once the directory is synced (POSIX)
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. a platform without directory handles
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's payload, config as :class:`XTConfig`; no code is unpickled."""
    path = Path(path)
    if not path.is_file():
        raise ModelConfigError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a foreign/corrupt file
        raise ModelConfigError(f"checkpoint {path} cannot be read as a weights-only file: {e}") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelConfigError(f"{path} is not an xtstream model checkpoint (no format={FORMAT!r})")
    payload["config"] = XTConfig.from_dict(payload["config"])
    return payload


def load_checkpoint(model: XTModel | None, path: str | Path | None = None) -> XTModel:
    """Load the weights at ``path`` into ``model`` (timm's and :func:`save_checkpoint`'s order), or
    into a new model built from the saved config when ``model`` is ``None``.

    When ``model`` is given, its config must match the saved one (fields that only change how a
    model runs, like ``grad_ratio``, may differ); otherwise a :class:`ModelConfigError` names every
    differing field with both values. The old order ``load_checkpoint(path, model=None)`` still
    works, with a warning.
    """
    if isinstance(model, (str, Path)) and (path is None or isinstance(path, nn.Module)):
        warnings.warn("load_checkpoint(path, model) is deprecated: use load_checkpoint(model, path) "
                      "or load_model(path)", DeprecationWarning, stacklevel=2)
        model, path = path, model
    payload = read_checkpoint(path)
    saved: XTConfig = payload["config"]
    if model is None:
        model = XTModel(saved)
    else:
        diff = saved.differences(model.config)
        if diff:
            lines = "; ".join(f"{k}: checkpoint {a!r} vs model {b!r}" for k, (a, b) in diff.items())
            raise ModelConfigError(f"checkpoint {path} was saved from another config: {lines}")
    missing, unexpected = model.load_state_dict(payload["state_dict"], strict=False)
    if missing or unexpected:
        raise ModelConfigError(f"checkpoint {path} does not fit the model built from its config: "
                               f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model


def load_model(path: str | Path) -> XTModel:
    """A new model built from the config saved at ``path``, with its weights."""
    return load_checkpoint(None, path)
