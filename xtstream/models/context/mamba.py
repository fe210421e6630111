"""Mamba context encoder: Mamba-1 blocks over the tokens in row-major scene order, state carried.

The sequence is causal in row-major order (a token sees the tokens before it in this chunk and,
through the carried state, in every earlier chunk of the scene), so a scene streams chunk by chunk
and chunked processing equals one pass over the whole scene. The state per layer is the SSM state
``h (B, E, N)`` and the conv's last ``d_conv - 1`` inputs ``(B, E, d_conv - 1)``.

Why not Mamba's own initialisation (``Δ`` in ``[0.001, 0.1]``, ``A_n = -n``): it is made for
language models, whose useful context is spread over thousands of tokens. What a token writes
into the state is ``Δ · B · x`` and what is left of it ``L`` tokens on is ``exp(-Δ |A_n| L)``;
with that init, a marker region changed the context output of the regions one chunk (16 tokens)
later by ~1e-6 of its size, and the across-chunk context probe (:mod:`xtstream.bench.probe`)
stayed at AUC 0.53 after 4,000 training scenes. Here ``Δ`` starts in ``[0.1, 1]`` (writes ~30x
larger), ``A_n = -0.1 · n / N`` (decay times from 10 to 160 tokens at ``Δ = 1``, ten times that at
``Δ = 0.1``: a scene's context is hundreds of region tokens) and ``B``, ``C`` 4x larger: the same
change is ~5e-3 one chunk on and ~3e-3 two chunks on (XL's attention: ~2e-3; with ``A_n = -n / N``
it was ~9e-4 and ~5e-4, and 3 seeds had not learnt the probe after 4,000 scenes).
The knobs are :class:`ContextConfig`'s ``dt_min``, ``dt_max``, ``a_max``, ``bc_scale``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xtstream.errors import ModelConfigError
from xtstream.models.context.base import ContextEncoder, check_batch
from xtstream.models.context.config import ContextConfig
from xtstream.models.context.registry import register_context
from xtstream.models.context.layers import RMSNorm
from xtstream.models.context.positions import add_positions
from xtstream.models.context.scan import cuda_scan_available, selective_scan, selective_scan_cuda


class MambaLayerState(NamedTuple):
    """One layer's carried state: SSM ``h (B, E, N)`` and conv inputs ``(B, E, d_conv - 1)``."""

    h: Tensor
    conv: Tensor


class MambaState(NamedTuple):
    layers: tuple[MambaLayerState, ...]


class MambaMixer(nn.Module):
    """The Mamba-1 block: ``in_proj`` to ``(x, z)``, causal depthwise conv1d + SiLU on ``x``,
    selective SSM with input-dependent ``delta, B, C`` and ``D`` skip, gate ``* silu(z)``,
    ``out_proj``. ``forward(u (B, L, D), state) -> ((B, L, D), MambaLayerState)``."""

    def __init__(self, config: ContextConfig) -> None:
        super().__init__()
        c = config
        e, n, r = c.d_inner, c.d_state, c.mamba_dt_rank
        self.d_state, self.d_conv, self.dt_rank = n, c.d_conv, r
        self.backend, self.scan_block = c.backend, c.scan_block
        # read at call time: the training engine lifts the stop-gradient for truncated BPTT
        self.config = c
        self.in_proj = nn.Linear(c.dim, 2 * e, bias=False)
        self.conv1d = nn.Conv1d(e, e, kernel_size=c.d_conv, groups=e, bias=True)
        self.x_proj = nn.Linear(e, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, e, bias=True)
        # A_n = -a_max * n / N (Mamba's own: a_max = N); see the module docstring for why
        a = torch.arange(1, n + 1, dtype=torch.float32) * (c.a_max / n)
        self.A_log = nn.Parameter(torch.log(a).repeat(e, 1))
        self.D = nn.Parameter(torch.ones(e))
        self.out_proj = nn.Linear(e, c.dim, bias=False)
        self._init_dt(r, c.dt_min, c.dt_max)
        with torch.no_grad():
            self.x_proj.weight[r:] *= c.bc_scale

    @torch.no_grad()
    def _init_dt(self, rank: int, dt_min: float, dt_max: float) -> None:
        # delta = softplus(bias) starts log-uniform in [dt_min, dt_max], as in Mamba
        std = rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(self.dt_proj.out_features) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp_min(1e-4)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(self, u: Tensor, state: MambaLayerState | None = None) -> tuple[Tensor, MambaLayerState]:
        b, n, _ = u.shape
        x, z = self.in_proj(u).chunk(2, dim=-1)  # (B, L, E) each
        x = x.transpose(1, 2)  # (B, E, L)
        past = x.new_zeros(b, x.shape[1], self.d_conv - 1) if state is None else state.conv
        conv_in = torch.cat([past, x], dim=2)  # zeros at a scene's start = causal zero padding
        conv_state = conv_in[:, :, conv_in.shape[2] - (self.d_conv - 1):]
        x = F.silu(self.conv1d(conv_in)).transpose(1, 2)  # (B, L, E)
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt))  # (B, L, E)
        # the scan runs in at least float32: bf16/fp16 states lose the long-range decay
        wt = torch.promote_types(x.dtype, torch.float32)
        A, D = -torch.exp(self.A_log.to(wt)), self.D.to(wt)
        args = (x.to(wt), delta.to(wt), A, B.to(wt), C.to(wt), D, None if state is None else state.h.to(wt))
        if self._use_cuda(x):
            y, h = selective_scan_cuda(*args)
        else:
            y, h = selective_scan(*args, chunk=self.scan_block)
        y = y.to(z.dtype)
        return self.out_proj(y * F.silu(z)), MambaLayerState(h, conv_state)

    def _use_cuda(self, x: Tensor) -> bool:
        # the Mamba-1 kernel drops the gradient of its last state: with detach_state=False that
        # would silently cut back-propagation between chunks, so the torch scan runs instead
        needs_state_grad = not self.config.detach_state and torch.is_grad_enabled()
        if self.backend == "torch":
            return False
        if self.backend == "cuda":
            if needs_state_grad:
                raise ModelConfigError("backend='cuda' cannot back-propagate through the carried state "
                                       "(mamba-ssm's kernel ignores the last state's gradient); use "
                                       "detach_state=True or backend='torch'/'auto'")
            return True  # selective_scan_cuda raises a clear error if it cannot run
        return (x.is_cuda and x.dtype != torch.float64 and not needs_state_grad
                and cuda_scan_available())


class MambaLayer(nn.Module):
    """Residual pre-norm layer: ``u + mixer(norm(u))``."""

    def __init__(self, config: ContextConfig) -> None:
        super().__init__()
        self.norm = RMSNorm(config.dim)
        self.mixer = MambaMixer(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, u: Tensor, state: MambaLayerState | None = None) -> tuple[Tensor, MambaLayerState]:
        y, state = self.mixer(self.norm(u), state)
        return u + self.drop(y), state


@register_context("mamba")
class MambaContext(ContextEncoder):
    """``kind="mamba"``: 2D sin-cos positions, ``depth`` Mamba layers, a final RMSNorm, over the
    chunk's tokens in row-major scene order, with the state of every layer carried to the next
    chunk (detached when ``detach_state``). See the module docstring."""

    def __init__(self, config: ContextConfig) -> None:
        super().__init__(config)
        self.layers = nn.ModuleList(MambaLayer(config) for _ in range(config.depth))
        self.norm = RMSNorm(config.dim)

    def forward(self, x: Tensor, pos: Tensor, state: MambaState | None = None) -> tuple[Tensor, MambaState]:
        """``x (B, L, D)``, ``pos (B, L, 2)``, previous :class:`MambaState` or ``None``
        -> ``((B, L, D), MambaState)``."""
        self.check_inputs(x, pos)
        states = self._check_state(state, x)
        h = add_positions(x, pos)
        new = []
        for layer, st in zip(self.layers, states):
            h, st = layer(h, st)
            new.append(MambaLayerState(self.hand_on(st.h), self.hand_on(st.conv)))
        return self.norm(h), MambaState(tuple(new))

    def _check_state(self, state: MambaState | None, x: Tensor) -> list[MambaLayerState | None]:
        if state is None:
            return [None] * self.config.depth
        if not isinstance(state, MambaState) or len(state.layers) != self.config.depth:
            raise ModelConfigError(f"MambaContext: state must be the MambaState of a {self.config.depth}-layer "
                                   f"Mamba encoder (what the previous chunk returned), got {type(state).__name__}")
        check_batch("MambaContext", state.layers[0].h.shape[0], x)
        return list(state.layers)

    def extra_repr(self) -> str:
        c = self.config
        return (f"dim={c.dim}, depth={c.depth}, d_state={c.d_state}, d_conv={c.d_conv}, "
                f"expand={c.expand}, backend={c.backend!r}")
