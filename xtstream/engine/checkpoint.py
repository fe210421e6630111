"""Resumable training checkpoints: a model checkpoint plus what a run needs to go on exactly.

The file is a :func:`xtstream.save_checkpoint` file — ``xtstream.load_model(path)`` reads its
model — with one more key, ``train``: the optimiser and scheduler states, the data position
(epoch, the global step), the run's config, and per rank the chunks it has trained this epoch,
its random states (torch, CUDA, numpy, python, the grad-ratio generator) and the context states of
the scenes open at that moment, so a run resumes mid-scene. Everything is plain values and
tensors: it loads with ``weights_only=True``. Writes are atomic (temporary file, fsync, rename).

Context states are NamedTuples and dataclasses (``XLState``, ``PoolState``, …): they are stored as
``{"__type__": "module:Name", …}`` and rebuilt only from classes of modules already imported — a
checkpoint never makes Python import (run) anything.
"""

from __future__ import annotations

import random
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from xtstream.errors import TrainingError
from xtstream.models.checkpoint import read_checkpoint, save_checkpoint

#: the version of the ``train`` entry's layout
TRAIN_VERSION = 1


def save_training(path: str | Path, model: Any, *, optimizer: torch.optim.Optimizer, scheduler: Any,
                  position: dict[str, Any], config: dict[str, Any], ranks: list[dict[str, Any]]) -> Path:
    """Write a resumable checkpoint (atomically). ``ranks``: each rank's :func:`rank_state`."""
    train = {"version": TRAIN_VERSION, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "position": dict(position), "config": config, "ranks": ranks}
    return save_checkpoint(model, path, train=train)


def read_training(path: str | Path) -> dict[str, Any]:
    """The checkpoint's payload (``config`` an :class:`~xtstream.models.XTConfig`), checked to hold
    a training state."""
    payload = read_checkpoint(path)
    train = payload.get("train")
    if not isinstance(train, dict) or train.get("version") != TRAIN_VERSION:
        raise TrainingError(f"{path} is a model checkpoint without a training state (version "
                            f"{TRAIN_VERSION}); it can start a run (model.init) but not resume one")
    return payload


def rank_state(states: list[dict[str, Any]], generator: torch.Generator | None) -> dict[str, Any]:
    """This process's random states and open scenes (:meth:`SceneStates.export` entries)."""
    np_kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    rng = {"torch": torch.get_rng_state(),
           "numpy": {"kind": np_kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                     "has_gauss": int(has_gauss), "gauss": float(gauss)},
           "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    if generator is not None:
        rng["generator"] = generator.get_state()
    return {"rng": rng, "states": [{**e, "state": pack_state(e["state"])} for e in states]}


def restore_rank_state(entry: dict[str, Any], generator: torch.Generator | None,
                       device: torch.device) -> list[dict[str, Any]]:
    """Set the random states of :func:`rank_state`; return its open scenes, states on ``device``."""
    rng = entry["rng"]
    torch.set_rng_state(rng["torch"])
    n = rng["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = rng["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    if generator is not None and "generator" in rng:
        generator.set_state(rng["generator"])
    return [{**e, "state": unpack_state(e["state"], device)} for e in entry["states"]]


def pack_state(obj: Any) -> Any:
    """A context state as plain values and CPU tensors (see the module doc)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return {"__type__": _type_name(type(obj)), "values": [pack_state(v) for v in obj]}
    if is_dataclass(obj) and not isinstance(obj, type):
        return {"__type__": _type_name(type(obj)),
                "fields": {f.name: pack_state(getattr(obj, f.name)) for f in fields(obj)}}
    if isinstance(obj, tuple):
        return {"__tuple__": [pack_state(v) for v in obj]}
    if isinstance(obj, list):
        return [pack_state(v) for v in obj]
    if isinstance(obj, dict):
        return {"__dict__": {str(k): pack_state(v) for k, v in obj.items()}}
    raise TrainingError(f"a context state holds a {type(obj).__name__}, which a checkpoint cannot keep "
                        "(states may hold tensors, numbers, strings, None, tuples, lists, dicts, "
                        "NamedTuples and dataclasses)")


def unpack_state(obj: Any, device: torch.device | str = "cpu") -> Any:
    """The inverse of :func:`pack_state`, tensors moved to ``device``."""
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, list):
        return [unpack_state(v, device) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tuple__" in obj:
        return tuple(unpack_state(v, device) for v in obj["__tuple__"])
    if "__dict__" in obj:
        return {k: unpack_state(v, device) for k, v in obj["__dict__"].items()}
    cls = _state_type(obj["__type__"])
    if "values" in obj:
        return cls(*(unpack_state(v, device) for v in obj["values"]))
    return cls(**{k: unpack_state(v, device) for k, v in obj["fields"].items()})


def _type_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _state_type(name: str) -> type:
    module, _, qualname = name.partition(":")
    mod = sys.modules.get(module)
    if mod is None:
        raise TrainingError(f"the checkpoint's context state is a {name}, from a module this process "
                            "has not imported (is the model the same?)")
    obj: Any = mod
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    is_tuple = isinstance(obj, type) and issubclass(obj, tuple) and hasattr(obj, "_fields")
    if not (is_tuple or (isinstance(obj, type) and is_dataclass(obj))):
        raise TrainingError(f"the checkpoint's context state names {name}, which is not a NamedTuple "
                            "or dataclass of this process")
    return obj
