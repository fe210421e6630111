"""Mamba-1's selective scan: a parallel PyTorch scan with carried state, a sequential reference,
and the mamba-ssm CUDA kernels (optional, loaded lazily).

The recurrence, per batch ``b``, channel ``e`` and state ``n``, over time ``t``::

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * x_t        (zero-order hold, h_{-1} = h0)
    y_t = sum_n C_t[n] * h_t[n] + D * x_t

Shapes: ``x, delta (Bt, L, E)``, ``A (E, N)``, ``B, C (Bt, L, N)``, ``D (E,)``, ``h0 (Bt, E, N)``.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from xtstream.errors import ModelConfigError


def _scan(a: Tensor, b: Tensor) -> Tensor:
    """``h_t = a_t * h_{t-1} + b_t`` along axis 1 from ``h_{-1} = 0``, by recursive pairing:
    odd steps first solve the half-length recurrence of composed pairs, then even steps fill in.
    ``log2(L)`` levels, ``O(L)`` work in all, any ``L``."""
    n = a.shape[1]
    if n == 1:
        return b
    if n % 2:  # pad with the identity step (a = 1, b = 0)
        a = torch.cat([a, torch.ones_like(a[:, :1])], dim=1)
        b = torch.cat([b, torch.zeros_like(b[:, :1])], dim=1)
    a_even, a_odd, b_even, b_odd = a[:, 0::2], a[:, 1::2], b[:, 0::2], b[:, 1::2]
    h_odd = _scan(a_odd * a_even, a_odd * b_even + b_odd)  # h at steps 1, 3, 5, ...
    h_even = b_even.clone()
    h_even[:, 1:] += a_even[:, 1:] * h_odd[:, :-1]
    return torch.stack([h_even, h_odd], dim=2).flatten(1, 2)[:, :n]


class _LinearScan(torch.autograd.Function):
    """``h = linear_scan(a, b, h0)`` with a hand-written backward: the adjoint is the same scan
    run backwards in time, so only ``a`` and ``h`` are kept (not every level's temporaries)."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Tensor) -> Tensor:  # type: ignore[override]
        b = b.clone()
        b[:, 0] += a[:, 0] * h0
        h = _scan(a, b)
        ctx.save_for_backward(a, h, h0)
        return h

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        a, h, h0 = ctx.saved_tensors
        # lam_t = dLoss/dh_t in full: grad_t + a_{t+1} * lam_{t+1}, a reverse-time scan
        a_next = torch.cat([a[:, 1:], torch.zeros_like(a[:, :1])], dim=1)
        lam = _scan(a_next.flip(1), grad.flip(1)).flip(1)
        grad_a = grad_h0 = None
        if ctx.needs_input_grad[0]:
            grad_a = lam * torch.cat([h0.unsqueeze(1), h[:, :-1]], dim=1)
        if ctx.needs_input_grad[2]:
            grad_h0 = a[:, 0] * lam[:, 0]
        return grad_a, lam, grad_h0


def linear_scan(a: Tensor, b: Tensor, h0: Tensor | None = None) -> Tensor:
    """All states of ``h_t = a_t * h_{t-1} + b_t`` (``a, b (Bt, L, ...)``, ``h0 (Bt, ...)`` or
    ``None`` for zeros) -> ``(Bt, L, ...)``. Parallel over time; differentiable in all inputs."""
    if h0 is None:
        h0 = a.new_zeros(a.shape[:1] + a.shape[2:])
    return _LinearScan.apply(a, b, h0)


def _discretize(x: Tensor, delta: Tensor, A: Tensor, B: Tensor) -> tuple[Tensor, Tensor]:
    dA = torch.exp(delta.unsqueeze(-1) * A)  # (Bt, L, E, N)
    dBx = (delta * x).unsqueeze(-1) * B.unsqueeze(2)  # (Bt, L, E, N)
    return dA, dBx


def selective_scan(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
                   h0: Tensor | None = None, chunk: int | None = None) -> tuple[Tensor, Tensor]:
    """The selective scan in PyTorch: ``-> (y (Bt, L, E), h_last (Bt, E, N))``.

    Parallel inside pieces of ``chunk`` time steps (all of ``L`` when ``None``), the state carried
    from piece to piece, so the ``(Bt, chunk, E, N)`` temporaries stay bounded; the result does not
    depend on ``chunk``.
    """
    n = x.shape[1]
    step = n if chunk is None else max(1, int(chunk))
    h = h0 if h0 is not None else x.new_zeros(x.shape[0], A.shape[0], A.shape[1])
    ys = []
    for s in range(0, n, step):
        sl = slice(s, s + step)
        dA, dBx = _discretize(x[:, sl], delta[:, sl], A, B[:, sl])
        hs = linear_scan(dA, dBx, h)
        ys.append(torch.einsum("blen,bln->ble", hs, C[:, sl]))
        h = hs[:, -1]
    return torch.cat(ys, dim=1) + D * x, h


def selective_scan_sequential(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
                              h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The same scan one time step at a time: the slow, obviously-correct reference."""
    dA, dBx = _discretize(x, delta, A, B)
    h = h0 if h0 is not None else x.new_zeros(x.shape[0], A.shape[0], A.shape[1])
    ys = []
    for t in range(x.shape[1]):
        h = dA[:, t] * h + dBx[:, t]
        ys.append((h * C[:, t].unsqueeze(1)).sum(-1))
    return torch.stack(ys, dim=1) + D * x, h


@functools.lru_cache(maxsize=1)
def cuda_scan_available() -> bool:
    """Whether mamba-ssm's selective-scan kernel imports (needs mamba-ssm built with CUDA); the
    answer is cached, so a failed import is tried once per process, not once per chunk."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def selective_scan_cuda(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
                        h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """:func:`selective_scan` through mamba-ssm's CUDA kernel (same arguments and result).

    The Mamba-1 kernel starts from a zero state and cannot take ``h0``. The recurrence is linear
    in the state, so ``h0``'s share is added here: ``y_t += C_t . (exp(sum_{s<=t} delta_s A) h0)``
    and ``h_last += exp(sum_s delta_s A) h0`` (a ``(Bt, L, E, N)`` decay, only when ``h0`` is given).
    The kernel does not back-propagate into ``h_last`` (``h0``'s share does): carry it detached.
    """
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except (ImportError, OSError) as e:
        raise ModelConfigError(f"backend='cuda' needs the mamba-ssm CUDA kernels (pip install "
                               f"'xtstream[cuda]' on a CUDA machine), which failed to import: {e}") from e
    if not x.is_cuda:
        raise ModelConfigError(f"backend='cuda' needs CUDA tensors, got tokens on {x.device}")
    if x.dtype == torch.float64:
        raise ModelConfigError("backend='cuda': mamba-ssm's kernel has no float64 path; use backend='torch'")
    y, h_last = selective_scan_fn(x.transpose(1, 2).contiguous(), delta.transpose(1, 2).contiguous(),
                                  A.contiguous(), B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous(),
                                  D.float(), return_last_state=True)
    y = y.transpose(1, 2).to(x.dtype)
    if h0 is not None:
        decay = torch.exp(torch.cumsum(delta.unsqueeze(-1) * A, dim=1))  # (Bt, L, E, N)
        y = y + torch.einsum("blen,ben,bln->ble", decay, h0, C)
        h_last = h_last + decay[:, -1] * h0
    return y, h_last.to(x.dtype)


__all__ = ["linear_scan", "selective_scan", "selective_scan_sequential", "selective_scan_cuda",
           "cuda_scan_available"]
