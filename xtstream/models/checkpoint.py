"""Checkpoints: the config and the state_dict in one file, loaded with ``weights_only=True``.

Integrity: torch's zip container does not check its records on load, so a flipped bit in a
tensor loads as a wrong weight. Checkpoints carry ``integrity: {"crc32c": …}``, a checksum of the
whole payload (every tensor's dtype, shape and bytes, every other value, in a fixed order),
checked by :func:`read_checkpoint`: a damaged file is refused, naming it. Checkpoints written
before it still load.
"""

from __future__ import annotations

import os
import re
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
    payload["integrity"] = {"crc32c": payload_digest(payload)}
    write_atomic(payload, path)
    return path


def write_atomic(payload: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, fsync, rename over ``path``, fsync the directory: a crash
    (or SIGKILL) at any moment leaves either the old file or the new one, never a truncated one."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            sink = _KeepWriteError(f)
            try:
                torch.save(payload, sink)
            except RuntimeError:
                # torch's writer reports a failed write (a full disk) as its own RuntimeError
                # ("unexpected pos …"): raise the OSError that caused it, which names the problem
                if sink.error is not None:
                    raise sink.error from None
                raise
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a half-written checkpoint must not stay filling a full disk
        raise
    try:  # the rename itself is durable only once the directory is synced (POSIX)
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. a platform without directory handles
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _KeepWriteError:
    """A binary file for ``torch.save`` that remembers the ``OSError`` a write raised."""

    def __init__(self, f: Any):
        self.f, self.error = f, None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.f.flush()


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's payload, config as :class:`XTConfig`; no code is unpickled."""
    path = Path(path)
    if not path.is_file():
        raise ModelConfigError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a foreign/corrupt file
        raise ModelConfigError(f"checkpoint {path} cannot be read as a weights-only file (damaged, not a "
                               f"checkpoint, or holding pickled code, which is never run): {_first_line(e)}") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelConfigError(f"{path} is not an xtstream model checkpoint (no format={FORMAT!r})")
    stored = payload.pop("integrity", None)
    if stored is not None and (not isinstance(stored, dict) or stored.get("crc32c") != payload_digest(payload)):
        raise ModelConfigError(f"checkpoint {path} fails its crc32c checksum (a damaged byte: the file is "
                               "corrupt); use another copy (a training run: delete it to start over)")
    try:
        payload["config"] = XTConfig.from_dict(payload["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise ModelConfigError(f"checkpoint {path} holds an unreadable model config: {_first_line(e)}") from e
    return payload


def payload_digest(payload: dict[str, Any]) -> str:
    """crc32c (8 hex digits) of a checkpoint payload: tensors by dtype, shape and bytes, other
    values by type and ``repr``, mappings in key order, so that a load reproduces a save's."""
    import google_crc32c

    crc = google_crc32c.Checksum()

    def feed(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            crc.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            if t.numel():
                crc.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(obj, dict):
            crc.update(b"{")
            for key in sorted(obj, key=str):
                crc.update(repr(key).encode())
                feed(obj[key])
            crc.update(b"}")
        elif isinstance(obj, (list, tuple)):
            crc.update(b"[" if isinstance(obj, list) else b"(")
            for value in obj:
                feed(value)
            crc.update(b"]")
        else:
            crc.update(repr((type(obj).__name__, obj)).encode())

    feed(payload)
    return crc.digest().hex()


def _first_line(err: BaseException) -> str:
    """The informative line of an exception's (possibly long, coloured) message."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(err).splitlines()]
    lines = [line for line in lines if line]
    detail = next((line for line in lines if "WeightsUnpickler error" in line), lines[0] if lines else "")
    return detail or type(err).__name__


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
