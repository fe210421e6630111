"""An xT model's configuration: one dataclass, plain values only (it is saved in checkpoints)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from xtstream.errors import ModelConfigError

#: fields that change how a model runs, not what its weights are: ignored when matching checkpoints
RUNTIME_FIELDS = ("backbone_weights", "grad_checkpointing", "grad_ratio", "input")
#: ContextConfig fields the config names itself (the rest go through ``context_kwargs``)
_OWN_CONTEXT_FIELDS = ("kind", "dim", "depth", "heads")
#: names older versions used, read from saved configs: old -> new
_RENAMED_CONTEXT_KNOBS = {"scan_chunk": "scan_block"}
#: Transformer-XL's region memory unless told otherwise (``context_kwargs["region_mem"]``): one
#: key per earlier region, as many as a scene row of up to 128 regions (32,768 px at 256-px
#: regions; an xView3 scene is ~96 wide), so the region directly above is in reach. It won the
#: context task on scenes wider than token memory reaches (near-shore F1 0.80 vs 0.52, 3 seeds,
#: README); configs saved before it existed load with 0, as they ran
DEFAULT_REGION_MEM = 128
#: how the pipeline reads a scene's regions: row-major once, or row-major twice with the first
#: pass only filling the context state (``two_pass``: every region's context then holds what the
#: state kept of the whole scene). Column-major and snake orders are measured on the context task
#: only (``xtstream bench context --order``): stores and shards stream region rows.
READ_ORDERS = ("row_major", "two_pass")


@dataclass
class XTConfig:
    """Region encoder → context encoder → head, processed ``chunk`` regions at a time.

    ``backbone`` is a timm name (``backbone_kwargs`` go to ``timm.create_model``); ``context`` a
    context kind (``"none"``: the plain backbone baseline, no projection, no context); ``dim``
    the context width (default: the backbone's last channel count); ``depth``/``heads`` the
    context layers; other :class:`~xtstream.models.context.ContextConfig` fields in ``context_kwargs``
    (for ``context="xl"``, ``region_mem`` defaults to :data:`DEFAULT_REGION_MEM`; 0 turns it off).
    ``residual`` adds the context output to the backbone's last map instead of replacing it.
    ``order`` (:data:`READ_ORDERS`): how scenes are read, in training and prediction alike.
    ``input`` is the nominal image side in pixels (the paper's "input size", e.g. 4096): the model
    streams images of any size, so it only sets what :meth:`XTModel.summary` reports per image
    (regions, chunks) and must be at least ``region``.
    """

    backbone: str
    region: int = 256
    in_chans: int = 3
    chunk: int = 4
    context: str = "none"
    dim: int | None = None
    depth: int = 2
    heads: int = 8
    project: bool = True
    residual: bool = True
    context_kwargs: dict[str, Any] = field(default_factory=dict)
    head: str = "classification"
    num_classes: int = 1000
    head_kwargs: dict[str, Any] = field(default_factory=dict)
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    backbone_weights: str | None = None
    grad_checkpointing: bool = False
    grad_ratio: float = 1.0
    input: int | None = None
    order: str = "row_major"

    def __post_init__(self) -> None:
        from xtstream.models.context import list_contexts
        from xtstream.models.heads import list_heads

        if self.context not in list_contexts():
            raise ModelConfigError(f"context {self.context!r} is not a registered context encoder; "
                                   f"known: {list_contexts()}")
        if self.head not in list_heads():
            raise ModelConfigError(f"head {self.head!r} is not a registered head; known: {list_heads()}")
        for name in ("region", "in_chans", "chunk", "depth", "heads", "num_classes"):
            if int(getattr(self, name)) < 1:
                raise ModelConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.input is not None and int(self.input) < self.region:
            raise ModelConfigError(f"input {self.input} px is smaller than one region of {self.region} px")
        if not 0.0 <= self.grad_ratio <= 1.0:
            raise ModelConfigError(f"grad_ratio must be in [0, 1], got {self.grad_ratio}")
        if self.order not in READ_ORDERS:
            raise ModelConfigError(
                f"order {self.order!r}: the pipeline reads {list(READ_ORDERS)} (stores and shards stream region "
                "rows; column_major and snake are measured by `xtstream bench context --order`)")
        if self.order == "two_pass" and self.context in ("none", "full"):
            raise ModelConfigError(f"order 'two_pass' with context {self.context!r}: a first pass has no state to "
                                   "fill (region-only keeps none; a whole-scene encoder sees the scene at once)")
        # tuples become lists so a saved config compares equal to the one it was made from
        self.backbone_kwargs = _plain(self.backbone_kwargs)
        self.context_kwargs = _plain(self.context_kwargs)
        self.head_kwargs = _plain(self.head_kwargs)
        if self.context == "xl":
            self.context_kwargs.setdefault("region_mem", DEFAULT_REGION_MEM)

    @property
    def passes(self) -> int:
        """How many times the model reads each scene: 2 for ``order="two_pass"``, else 1."""
        return 2 if self.order == "two_pass" else 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "XTConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelConfigError(f"config has fields this version does not know: {unknown}")
        data = dict(data)
        ctx = dict(data.get("context_kwargs") or {})
        for old, new in _RENAMED_CONTEXT_KNOBS.items():
            if old in ctx:
                ctx[new] = ctx.pop(old)
        if data.get("context") == "xl":
            ctx.setdefault("region_mem", 0)  # saved before region memory: it ran without one
        data["context_kwargs"] = ctx
        return cls(**data)

    def differences(self, other: "XTConfig", *, runtime: bool = False) -> dict[str, tuple[Any, Any]]:
        """``{field: (self's value, other's value)}`` where they differ (runtime fields skipped)."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a
                if a[k] != b[k] and (runtime or k not in RUNTIME_FIELDS)}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def context_knobs() -> tuple[str, ...]:
    """ContextConfig field names other than kind/dim/depth/heads (from the real class if present)."""
    from xtstream.models.context import ContextConfig

    return tuple(f.name for f in fields(ContextConfig) if f.name not in _OWN_CONTEXT_FIELDS)


def config_from_kwargs(backbone: str, **kwargs: Any) -> XTConfig:
    """Route timm-style keyword arguments: XTConfig fields to the config, ContextConfig knobs to
    ``context_kwargs``, everything else to the backbone (``embed_dim=``, ``depths=``, …)."""
    own = {f.name for f in fields(XTConfig)}
    knobs = set(context_knobs())
    cfg: dict[str, Any] = {}
    ctx = dict(kwargs.pop("context_kwargs", None) or {})
    bb = dict(kwargs.pop("backbone_kwargs", None) or {})
    for key, value in kwargs.items():
        if key in own:
            cfg[key] = value
        elif key in knobs:
            ctx[key] = value
        else:
            bb[key] = value
    return XTConfig(backbone=backbone, context_kwargs=ctx, backbone_kwargs=bb, **cfg)
