"""The context encoder's configuration: one dataclass of plain values, validated on creation."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field, fields
from typing import Any

from xtstream.errors import ModelConfigError

ATTENTIONS = ("exact", "hyper")
MAMBA_BACKENDS = ("auto", "torch", "cuda")


@dataclass
class ContextConfig:
    """What a context encoder is: ``kind`` plus the knobs that kind reads.

    Common: ``dim`` (token width, input = output), ``depth`` (layers), ``heads``, ``mlp_ratio``,
    ``dropout`` (on the residual branches), ``detach_state`` (stop-gradient on the state handed to
    the next chunk: the bounded-memory default; ``False`` back-propagates through every chunk of a
    scene).

    ``xl``: ``mem_len`` tokens of memory per layer (``None``: exactly the previous chunk, ``0``:
    no memory); ``region_mem`` regions of *region memory* per layer (``0``: none): each earlier
    region's mean layer input, one key per region, so that a memory as long as a scene's row of
    regions (``region_mem >= cols``) reaches the region directly above at ``1 / (h w)`` of the
    cost of token memory that long; ``region_tokens`` (``h * w`` tokens per region) is set by
    the xT model from its region encoder's token grid. ``xl``/``full``: ``attention`` is ``"exact"`` (torch SDPA) or ``"hyper"``
    (HyperAttention, tuned by ``hyper_block_size`` query rows per sorted block, ``hyper_samples``
    uniformly sampled key columns, ``hyper_bits`` LSH hyperplanes, and ``hyper_min_seq_len``: at or
    below this many keys attention is exact).

    Plug-in kinds read their own knobs from ``options`` (a dict of plain values).

    ``mamba``: ``d_state`` (N), ``d_conv`` (causal conv width), ``expand`` (inner width =
    ``expand * dim``), ``dt_rank`` (``None``: ``ceil(dim / 16)``), ``backend`` (``"auto"``: the
    mamba-ssm CUDA kernels when importable and the tensors are on CUDA, else the torch scan;
    ``"torch"``; ``"cuda"``: the kernels or an error) and ``scan_block`` (time steps per piece of
    the torch scan; bounds its temporaries, not its result). Its initialisation: ``Δ`` log-uniform
    in ``[dt_min, dt_max]``, ``A_n = -a_max · n / N`` (``n = 1..N``), the ``B``/``C`` rows of
    ``x_proj`` scaled by ``bc_scale``. The defaults (0.1, 1, 0.1, 4) keep what a token writes into
    the state alive across chunks of region tokens; Mamba's language-model init (0.001, 0.1,
    ``N``, 1) carries ~1e-6 of a token 16 tokens on, and the across-chunk context probe was not
    learnt with it (see :mod:`xtstream.models.context.mamba`).

    >>> ContextConfig(kind="xl", dim=64, heads=4, mem_len=128).head_dim
    16
    """

    kind: str = "xl"
    dim: int = 256
    depth: int = 2
    heads: int = 8
    mem_len: int | None = None
    region_mem: int = 0
    region_tokens: int | None = None
    attention: str = "exact"
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    detach_state: bool = True
    hyper_block_size: int = 256
    hyper_samples: int = 256
    hyper_min_seq_len: int = 2048
    hyper_bits: int = 7
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None
    backend: str = "auto"
    scan_block: int = 256
    dt_min: float = 0.1
    dt_max: float = 1.0
    a_max: float = 0.1
    bc_scale: float = 4.0
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from xtstream.models.context.registry import list_contexts

        kinds = list_contexts()
        if self.kind not in kinds:
            raise ModelConfigError(f"ContextConfig: kind {self.kind!r} is not a registered context "
                                   f"encoder; known: {kinds}")
        if not isinstance(self.options, dict):
            raise ModelConfigError(f"ContextConfig: options must be a dict, got {type(self.options).__name__}")
        if self.attention not in ATTENTIONS:
            raise ModelConfigError(f"ContextConfig: attention {self.attention!r} is not one of {ATTENTIONS}")
        if self.backend not in MAMBA_BACKENDS:
            raise ModelConfigError(f"ContextConfig: backend {self.backend!r} is not one of {MAMBA_BACKENDS}")
        for name in ("dim", "depth", "heads", "hyper_block_size", "hyper_min_seq_len", "hyper_bits",
                     "d_state", "d_conv", "expand", "scan_block"):
            _positive_int(name, getattr(self, name))
        _positive_int("hyper_samples", self.hyper_samples, allow_zero=True)
        if self.mem_len is not None:
            _positive_int("mem_len", self.mem_len, allow_zero=True)
        if self.dt_rank is not None:
            _positive_int("dt_rank", self.dt_rank)
        _positive_int("region_mem", self.region_mem, allow_zero=True)
        if self.region_tokens is not None:
            _positive_int("region_tokens", self.region_tokens)
        if self.region_mem and self.kind != "xl":
            raise ModelConfigError(f"ContextConfig: region_mem is a Transformer-XL memory; kind {self.kind!r} "
                                   "does not read it")
        for name in ("dt_min", "dt_max", "a_max", "bc_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ModelConfigError(f"ContextConfig: {name} must be a positive number, got {value!r}")
        if self.dt_min > self.dt_max:
            raise ModelConfigError(f"ContextConfig: dt_min={self.dt_min} is above dt_max={self.dt_max}")
        if self.hyper_bits > 16:
            raise ModelConfigError(f"ContextConfig: hyper_bits must be <= 16 (2**bits buckets), got {self.hyper_bits}")
        if not (isinstance(self.mlp_ratio, (int, float)) and self.mlp_ratio > 0):
            raise ModelConfigError(f"ContextConfig: mlp_ratio must be a positive number, got {self.mlp_ratio!r}")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ModelConfigError(f"ContextConfig: dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.detach_state, bool):
            raise ModelConfigError(f"ContextConfig: detach_state must be True or False, got {self.detach_state!r}")
        if self.kind != "none" and self.dim < 4:
            raise ModelConfigError(f"ContextConfig: kind {self.kind!r} adds 2D sin-cos positions and needs "
                                   f"dim >= 4, got dim={self.dim}")
        if self.kind in ("xl", "full") and self.dim % self.heads:
            raise ModelConfigError(f"ContextConfig: dim={self.dim} is not divisible by heads={self.heads} "
                                   f"(kind {self.kind!r} splits the width across heads)")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def d_inner(self) -> int:
        """Mamba's inner width ``expand * dim``."""
        return self.expand * self.dim

    @property
    def mamba_dt_rank(self) -> int:
        return self.dt_rank if self.dt_rank is not None else -(-self.dim // 16)

    def replace(self, **overrides: Any) -> "ContextConfig":
        """A copy with some fields changed; unknown names raise :class:`ModelConfigError`."""
        known = [f.name for f in fields(self)]
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise ModelConfigError(f"ContextConfig has no field(s) {unknown}; known fields: {known}")
        values = {name: getattr(self, name) for name in known}
        values.update(overrides)
        return ContextConfig(**values)


def _positive_int(name: str, value: Any, *, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ModelConfigError(f"ContextConfig: {name} must be an integer >= {low}, got {value!r}")
