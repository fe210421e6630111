"""Training configs (``pipelines/*.yaml``): one dataclass per section, validated on load.

A config is a YAML mapping of sections — ``model``, ``data``, ``optimiser``, ``schedule``,
``step``, ``checkpoint``, ``validation``, ``runtime`` — plus a few top-level keys (``out``,
``task``, ``seed``, ``epochs``). :func:`load_train_config` reads it, applies ``key=value``
overrides (``optimiser.lr=3e-4``, values parsed as YAML) and checks every key and type: an unknown
key raises :class:`~xtstream.errors.TrainConfigError` naming the file, the place and the closest
key (``optimiser: unknown key 'lrr' (did you mean 'lr'?)``), as dataset specs do.

Relative paths (``out``, ``data.*``, ``model.init``) are relative to the working directory, like
any command-line path, so a pipeline config runs from the repository root.
"""

from __future__ import annotations

import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml

from xtstream.data.specs import check_keys
from xtstream.errors import TrainConfigError

POLICIES = ("per_chunk", "per_scene")


@dataclass
class ModelSection:
    """``name``: a preset (``xtstream.list_models()``) or a timm backbone; ``options``: keyword
    arguments of :func:`xtstream.create_model` (``region``, ``chunk``, ``context``, …); ``init``: a
    checkpoint to start from (it must be of the same architecture)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    init: str | None = None


@dataclass
class DataSection:
    """Where scenes come from: ``shards`` (a shard directory, its ``manifest.json`` or a glob of
    tars: :func:`xtstream.read_scenes`) or ``stores`` (Zarr scene stores or raster sources, globs
    allowed: :func:`xtstream.stream_scenes`, with ``labels`` read by the task and described by
    ``spec``). ``workers``: DataLoader worker processes; ``shuffle``: scene order per epoch (regions
    stay in order); ``prefetch``: regions decoded ahead per scene; ``skip_bad``: skip and count
    corrupt shard samples instead of stopping."""

    shards: str | None = None
    stores: list[str] = field(default_factory=list)
    labels: str | None = None
    spec: str | None = None
    workers: int = 2
    shuffle: bool = True
    prefetch: int = 0
    skip_bad: bool = False


@dataclass
class OptimiserSection:
    """AdamW; weight decay applies to weight matrices and kernels only (not to biases, norms,
    positions). ``clip_grad_norm``: the largest total gradient norm (``null``: no clipping).
    ``context_lr_scale``: the context encoder's learning rate over ``lr`` (why:
    :func:`xtstream.engine.optim.context_param_groups`)."""

    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    clip_grad_norm: float | None = 1.0
    context_lr_scale: float = 1.0


@dataclass
class ScheduleSection:
    """Linear warm-up over ``warmup_steps`` optimiser steps, then a cosine decay to ``min_lr`` at
    ``total_steps`` (``null``: the steps the run will take, counted from the data)."""

    warmup_steps: int = 0
    min_lr: float = 0.0
    total_steps: int | None = None


@dataclass
class StepSection:
    """When the optimiser steps (see :mod:`xtstream.engine.policy`): ``per_chunk`` — after every
    chunk (or group of ``scenes_per_step`` chunks of different scenes at the same grid positions);
    ``per_scene`` — after every ``scenes_per_step`` scenes, their chunks' gradients accumulated.
    ``grad_ratio``: the share of regions encoded with gradient (``null``: the model's).
    ``bptt_chunks``: chunk groups per truncated-BPTT window — the context state carries its
    gradient through that many chunks before it is cut (1: stop-gradient between chunks; memory
    grows with it, not with the scene)."""

    policy: Literal["per_chunk", "per_scene"] = "per_chunk"
    scenes_per_step: int = 1
    grad_ratio: float | None = None
    bptt_chunks: int = 1


@dataclass
class CheckpointSection:
    """A resumable checkpoint every ``every`` optimiser steps (and at each epoch's end and the end)."""

    every: int = 100


@dataclass
class ValidationSection:
    """Held-out ``scenes`` (stores, sources or shard directories) predicted every ``every`` steps
    (0: never) with :func:`xtstream.predict` (``options``: its task options, e.g. ``threshold``)
    and scored against ``labels`` by the task's metric (:meth:`Task.score`); ``metric``: the score
    whose best value keeps ``best.pt`` (higher is better; default the task's primary metric)."""

    every: int = 0
    scenes: list[str] = field(default_factory=list)
    labels: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    metric: str | None = None


@dataclass
class RuntimeSection:
    """``device``: ``auto`` (CUDA when there is one), ``cpu``, ``cuda``, ``cuda:N``; ``amp``: bf16
    autocast (``auto``: on CUDA; ``true`` requires CUDA); ``channels_last``: the same rule;
    ``compile``: ``torch.compile`` the region encoder; ``threads``: torch CPU threads."""

    device: str = "auto"
    amp: bool | Literal["auto"] = "auto"
    channels_last: bool | Literal["auto"] = "auto"
    compile: bool = False
    threads: int | None = None


@dataclass
class TrainConfig:
    """A whole training run. ``out``: the run directory (config, checkpoints, log, loss plot);
    ``task``: the task whose loss trains the head (default: the one training the model's head),
    made with ``task_options``; ``seed``: weights, data order and every random draw."""

    out: str
    model: ModelSection
    data: DataSection
    task: str | None = None
    task_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    epochs: int = 1
    optimiser: OptimiserSection = field(default_factory=OptimiserSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    step: StepSection = field(default_factory=StepSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    validation: ValidationSection = field(default_factory=ValidationSection)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)
    #: where the config came from (for messages); not a config key
    source: str = field(default="<memory>", compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain values (what ``config.yaml`` in the run directory holds)."""
        d = asdict(self)
        d.pop("source")
        return d

    def differences(self, other: "TrainConfig") -> dict[str, tuple[Any, Any]]:
        """``{dotted key: (self's value, other's value)}`` where the two configs differ."""
        return _diff(self.to_dict(), other.to_dict(), "")


SECTIONS = {f.name: f.type for f in fields(TrainConfig)}


def load_train_config(config: "str | Path | dict | TrainConfig", overrides: Sequence[str] = ()
                      ) -> TrainConfig:
    """A validated :class:`TrainConfig` from a YAML path, a mapping, or a config (passed through
    when there are no ``overrides``). ``overrides``: ``"section.key=value"`` strings, the value
    parsed as YAML (``optimiser.lr=3e-4``, ``data.stores=[a.zarr,b.zarr]``)."""
    if isinstance(config, TrainConfig):
        if not overrides:
            return config
        doc, source = config.to_dict(), config.source
    elif isinstance(config, dict):
        doc, source = dict(config), "<memory>"
    else:
        path = Path(config)
        if not path.is_file():
            raise TrainConfigError(f"{path}: no such training config")
        try:
            doc = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise TrainConfigError(f"{path}: not valid YAML: {err}") from err
        source = str(path)
    doc = _mapping(doc, source, "config")
    for text in overrides:
        _apply_override(doc, text, source)
    return parse_train_config(doc, source)


def parse_train_config(doc: Any, source: str = "<memory>") -> TrainConfig:
    """Validate a config given as a mapping (what the YAML holds)."""
    return _build(TrainConfig, _mapping(doc, source, "config"), source, "config")


def _build(cls: type, doc: dict, source: str, where: str) -> Any:
    """``cls(**doc)`` with every key known, every type checked and sections built recursively."""
    names = [f.name for f in fields(cls) if f.name != "source"]
    check_keys(doc, names, source, where, error=TrainConfigError)
    hints = typing.get_type_hints(cls)
    kw: dict[str, Any] = {}
    for f in fields(cls):
        if f.name == "source":
            continue
        key = f"{where}.{f.name}" if where != "config" else f.name
        if f.name not in doc:
            if f.default is MISSING and f.default_factory is MISSING:
                raise TrainConfigError(f"{source}: {where}: missing required key '{f.name}'")
            continue
        hint = hints[f.name]
        if isinstance(hint, type) and hasattr(hint, "__dataclass_fields__"):
            value = doc[f.name] if doc[f.name] is not None else {}
            kw[f.name] = _build(hint, _mapping(value, source, key), source, key)
        else:
            kw[f.name] = _coerce(doc[f.name], hint, source, key)
    if cls is TrainConfig:
        kw["source"] = source
    obj = cls(**kw)
    _check_values(obj, source, where)
    return obj


def _coerce(value: Any, hint: Any, source: str, where: str) -> Any:
    """``value`` checked against the type ``hint`` (ints accepted for floats; lists for tuples)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, source, where)
            except TrainConfigError:
                pass
        raise _type_error(value, hint, source, where)
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):  # True is not 1
            return value
        raise TrainConfigError(f"{source}: {where}: expected one of {list(args)}, got {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise _type_error(value, hint, source, where)
        return [_coerce(v, args[0], source, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(value, hint, source, where)
        return {str(k): v for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a field type this module does not know
        raise TypeError(f"config field {where} has an unsupported type {hint!r}")
    raise _type_error(value, hint, source, where)


def _type_error(value: Any, hint: Any, source: str, where: str) -> TrainConfigError:
    return TrainConfigError(f"{source}: {where}: expected {_describe(hint)}, got {value!r} "
                            f"({type(value).__name__})")


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if origin is list:
        return f"a list of {_describe(args[0])}"
    if origin is dict:
        return "a mapping"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string",
            type(None): "null"}.get(hint, str(hint))


def _check_values(obj: Any, source: str, where: str) -> None:
    """Ranges and combinations the types alone do not say."""
    def bad(key: str, what: str) -> TrainConfigError:
        return TrainConfigError(f"{source}: {where}.{key}: {what}, got {getattr(obj, key)!r}")

    if isinstance(obj, TrainConfig):
        if obj.epochs < 1:
            raise TrainConfigError(f"{source}: config.epochs: must be >= 1, got {obj.epochs}")
        if not obj.out:
            raise TrainConfigError(f"{source}: config.out: the run directory must be named")
        if obj.schedule.min_lr > obj.optimiser.lr:
            raise TrainConfigError(f"{source}: schedule.min_lr ({obj.schedule.min_lr}) is above "
                                   f"optimiser.lr ({obj.optimiser.lr})")
    elif isinstance(obj, DataSection):
        if (obj.shards is None) == (not obj.stores):
            raise TrainConfigError(f"{source}: {where}: give exactly one of 'shards' (a shard "
                                   f"directory) or 'stores' (scene stores or sources)")
        if obj.labels is not None and obj.shards is not None:
            raise TrainConfigError(f"{source}: {where}.labels: shards carry their labels; 'labels' "
                                   "goes with 'stores'")
        if obj.workers < 0:
            raise bad("workers", "must be >= 0")
        if obj.prefetch < 0:
            raise bad("prefetch", "must be >= 0")
    elif isinstance(obj, OptimiserSection):
        if obj.lr <= 0:
            raise bad("lr", "must be > 0")
        if obj.weight_decay < 0:
            raise bad("weight_decay", "must be >= 0")
        if obj.context_lr_scale <= 0:
            raise bad("context_lr_scale", "must be > 0")
        if len(obj.betas) != 2 or not all(0 <= b < 1 for b in obj.betas):
            raise bad("betas", "expected [beta1, beta2], each in [0, 1)")
        if obj.eps <= 0:
            raise bad("eps", "must be > 0")
        if obj.clip_grad_norm is not None and obj.clip_grad_norm <= 0:
            raise bad("clip_grad_norm", "must be > 0 (or null: no clipping)")
    elif isinstance(obj, ScheduleSection):
        if obj.warmup_steps < 0:
            raise bad("warmup_steps", "must be >= 0")
        if obj.min_lr < 0:
            raise bad("min_lr", "must be >= 0")
        if obj.total_steps is not None and obj.total_steps < 1:
            raise bad("total_steps", "must be >= 1 (or null: counted from the data)")
    elif isinstance(obj, StepSection):
        if obj.scenes_per_step < 1:
            raise bad("scenes_per_step", "must be >= 1")
        if obj.bptt_chunks < 1:
            raise bad("bptt_chunks", "must be >= 1 (chunk groups per truncated-BPTT window)")
        if obj.grad_ratio is not None and not 0.0 <= obj.grad_ratio <= 1.0:
            raise bad("grad_ratio", "must be in [0, 1]")
    elif isinstance(obj, CheckpointSection):
        if obj.every < 1:
            raise bad("every", "must be >= 1 (optimiser steps between checkpoints)")
    elif isinstance(obj, ValidationSection):
        if obj.every < 0:
            raise bad("every", "must be >= 0 (0: no validation)")
        if obj.every and not obj.scenes:
            raise TrainConfigError(f"{source}: {where}: every={obj.every} but no held-out 'scenes'")
    elif isinstance(obj, RuntimeSection):
        if obj.threads is not None and obj.threads < 1:
            raise bad("threads", "must be >= 1")
        if not (obj.device in ("auto", "cpu", "cuda") or obj.device.startswith("cuda:")):
            raise bad("device", "expected auto, cpu, cuda or cuda:N")


def _apply_override(doc: dict, text: str, source: str) -> None:
    """``section.key=value`` into ``doc`` (the value parsed as YAML), keys checked on the way."""
    key, sep, raw = text.partition("=")
    where = f"{source} (override {text!r})"
    if not sep or not key.strip():
        raise TrainConfigError(f"{where}: expected key=value, e.g. optimiser.lr=3e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise TrainConfigError(f"{where}: the value is not valid YAML: {err}") from err
    parts = key.strip().split(".")
    cls: Any = TrainConfig
    node = doc
    for depth, part in enumerate(parts):
        names = [f.name for f in fields(cls) if f.name != "source"]
        check_keys({part: None}, names, where, ".".join(parts[:depth]) or "config", error=TrainConfigError)
        hint = typing.get_type_hints(cls)[part]
        last = depth == len(parts) - 1
        if last:
            node[part] = value
        elif isinstance(hint, type) and hasattr(hint, "__dataclass_fields__"):
            child = node.get(part)
            node[part] = child = dict(child) if isinstance(child, dict) else {}
            node, cls = child, hint
        elif typing.get_origin(hint) is dict or hint is Any:  # free-form: model.options.region=…
            child = node.get(part)
            node[part] = child = dict(child) if isinstance(child, dict) else {}
            _set_path(child, parts[depth + 1:], value)
            return
        else:
            raise TrainConfigError(f"{where}: '{'.'.join(parts[:depth + 1])}' is a value, not a section")


def _set_path(node: dict, parts: list[str], value: Any) -> None:
    for part in parts[:-1]:
        child = node.get(part)
        node[part] = child = dict(child) if isinstance(child, dict) else {}
        node = child
    node[parts[-1]] = value


def _mapping(doc: Any, source: str, where: str) -> dict:
    if not isinstance(doc, dict):
        raise TrainConfigError(f"{source}: {where}: expected a mapping, got {type(doc).__name__}")
    return dict(doc)


def _diff(a: Any, b: Any, prefix: str) -> dict[str, tuple[Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: dict[str, tuple[Any, Any]] = {}
        for k in sorted(set(a) | set(b)):
            out.update(_diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k))
        return out
    return {} if a == b else {prefix: (a, b)}
