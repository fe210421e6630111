"""HyperAttention (Han et al., 2023) in plain PyTorch: sortLSH blocks plus sampled columns.

Non-causal softmax attention ``softmax(q k^T / sqrt(d)) v`` approximated in near-linear time:

1. *sortLSH*: queries and keys are hashed with the same ``bits`` random hyperplanes (angular LSH;
   buckets numbered in Gray-code order so neighbouring buckets differ by one hyperplane), and
   each is sorted by bucket. Ties inside a bucket are broken by the angle to one more random
   direction, so a query and a key pointing the same way land at the same rank.
2. The sorted queries are cut into blocks of ``block_size``; the sorted keys into as many blocks
   (``ceil(Lk / n_blocks)`` each). Attention is exact inside each diagonal block pair.
3. ``samples`` key columns are drawn uniformly (with replacement, per batch and head); each
   stands for ``Lk / samples`` keys (an unbiased estimate of the softmax mass outside the block).
   A sampled column that lies in the query's own block is dropped (it is already counted).
4. The two parts are merged by their log-sum-exp, i.e. as one softmax over both.

Exact when ``Lk <= min_seq_len`` (torch SDPA) and when one block holds every query and key with
``samples=0``. Masks (boolean or additive) are honoured in both parts by looking up the entries
of the pairs that are scored. Sampling draws from torch's global RNG in training; in ``eval()``
it draws from a generator seeded by ``eval_seed`` on every call, so inference is repeatable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xtstream.errors import ModelConfigError


def _gray_rank(bits: int) -> Tensor:
    """``rank[code]``: the position of ``code`` in the ``bits``-bit Gray-code sequence."""
    codes = torch.arange(2**bits)
    rank = codes.clone()
    shift = 1
    while shift < bits:  # inverse Gray code: prefix XOR of the bits
        rank ^= rank >> shift
        shift *= 2
    return rank


def _lookup(mask: Tensor, shape4: tuple[int, int, int, int], qi: Tensor, kj: Tensor) -> Tensor:
    """Entries ``mask[b, h, qi, kj]`` of a mask broadcastable to ``shape4``; ``qi``/``kj`` are
    ``(B, H, ..., P, 1)`` / ``(B, H, ..., 1, Q)`` (or broadcastable) index tensors."""
    full = mask.expand(shape4)  # a view: nothing (B, H, Lq, Lk)-sized is allocated
    extra = qi.ndim - 2
    bi = torch.arange(shape4[0], device=qi.device).view(-1, *([1] * (extra + 1)))
    hi = torch.arange(shape4[1], device=qi.device).view(1, -1, *([1] * extra))
    return full[bi, hi, qi, kj]


def _apply(scores: Tensor, m: Tensor) -> Tensor:
    return scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m


def _softmax_parts(scores: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """``(softmax(scores) @ v, logsumexp(scores))``; an all-masked row gives ``(0, -inf)`` with
    finite gradients (``torch.logsumexp`` would back-propagate NaN through such a row)."""
    top = scores.amax(dim=-1, keepdim=True)
    top = top.masked_fill(torch.isinf(top), 0.0)
    e = torch.exp(scores - top)
    total = e.sum(dim=-1, keepdim=True)
    tiny = torch.finfo(scores.dtype).tiny
    lse = torch.where(total > 0, total.clamp_min(tiny).log() + top, float("-inf"))
    return (e @ v) / total.clamp_min(tiny), lse


def merge(out1: Tensor, lse1: Tensor, out2: Tensor, lse2: Tensor) -> Tensor:
    """Two partial softmax attentions over disjoint key sets, merged into one by their
    log-sum-exps ``lse1``/``lse2`` (``(..., Lq, 1)``); rows empty in both give 0."""
    top = torch.maximum(lse1, lse2)
    top = top.masked_fill(torch.isinf(top), 0.0)
    w1, w2 = torch.exp(lse1 - top), torch.exp(lse2 - top)
    return (out1 * w1 + out2 * w2) / (w1 + w2).clamp_min(torch.finfo(w1.dtype).tiny)


class HyperAttention(nn.Module):
    """``forward(q (B, H, Lq, d), k (B, H, Lk, d), v (B, H, Lk, d), mask=None) -> (B, H, Lq, d)``.

    See the module docstring for the algorithm. The hyperplanes are drawn once (from torch's RNG
    at construction) and kept as buffers, so a saved model hashes the same after loading.
    """

    def __init__(self, head_dim: int, *, block_size: int = 256, samples: int = 256,
                 min_seq_len: int = 2048, bits: int = 7, eval_seed: int = 0) -> None:
        super().__init__()
        if block_size < 1 or samples < 0 or min_seq_len < 1 or not 1 <= bits <= 16:
            raise ModelConfigError(f"HyperAttention: need block_size >= 1, samples >= 0, min_seq_len >= 1, "
                                   f"1 <= bits <= 16; got {block_size}, {samples}, {min_seq_len}, {bits}")
        self.block_size, self.samples, self.min_seq_len, self.eval_seed = block_size, samples, min_seq_len, eval_seed
        self.register_buffer("planes", torch.randn(head_dim, bits))
        self.register_buffer("tie", torch.randn(head_dim))
        self.register_buffer("gray_rank", _gray_rank(bits), persistent=False)

    def extra_repr(self) -> str:
        return (f"block_size={self.block_size}, samples={self.samples}, "
                f"min_seq_len={self.min_seq_len}, bits={self.planes.shape[1]}")

    def sort_order(self, t: Tensor) -> Tensor:
        """Permutation ``(B, H, L)`` sorting ``t (B, H, L, d)`` by LSH bucket, ties by angle."""
        planes, tie = self.planes.to(t.dtype), self.tie.to(t.dtype)
        bits = (t @ planes > 0).long()  # (B, H, L, bits)
        code = (bits << torch.arange(bits.shape[-1], device=t.device)).sum(-1)
        bucket = self.gray_rank[code]
        angle = (t @ tie) / t.norm(dim=-1).clamp_min(torch.finfo(t.dtype).tiny)
        order = angle.argsort(dim=-1)
        return order.gather(-1, bucket.gather(-1, order).argsort(dim=-1, stable=True))

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
        b, h, lq, d = q.shape
        lk = k.shape[2]
        if lk <= self.min_seq_len:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        scale = d**-0.5
        shape4 = (b, h, lq, lk)
        nb = math.ceil(lq / self.block_size)
        bq, bk = self.block_size, math.ceil(lk / nb)
        q_order, k_order = self.sort_order(q), self.sort_order(k)
        # pad the sorted orders to whole blocks; padded keys are masked, padded queries dropped
        q_idx = F.pad(q_order, (0, nb * bq - lq))
        k_idx = F.pad(k_order, (0, nb * bk - lk))
        k_pad = torch.arange(nb * bk, device=q.device) >= lk  # (nb * bk,)

        def take(t: Tensor, idx: Tensor) -> Tensor:
            return t.gather(2, idx.unsqueeze(-1).expand(-1, -1, -1, t.shape[-1]))

        qb = take(q, q_idx).view(b, h, nb, bq, d)
        kb = take(k, k_idx).view(b, h, nb, bk, d)
        vb = take(v, k_idx).view(b, h, nb, bk, v.shape[-1])
        scores = (qb @ kb.transpose(-1, -2)) * scale  # (B, H, nb, bq, bk)
        scores = scores.masked_fill(k_pad.view(nb, 1, bk), float("-inf"))
        if mask is not None:
            qi, kj = q_idx.view(b, h, nb, bq, 1), k_idx.view(b, h, nb, 1, bk)
            scores = _apply(scores, _lookup(mask, shape4, qi, kj))
        out_s, lse_s = _softmax_parts(scores, vb)
        q_rank = q_order.argsort(dim=-1)  # (B, H, Lq): sorted position of each query
        back = q_rank.unsqueeze(-1)
        out = out_s.view(b, h, nb * bq, -1).gather(2, back.expand(-1, -1, -1, out_s.shape[-1]))
        lse = lse_s.view(b, h, nb * bq, 1).gather(2, back)
        if self.samples == 0:
            return out
        cols = self._draw(b, h, lk, q.device)  # (B, H, m)
        ks, vs = take(k, cols), take(v, cols)
        s2 = (q @ ks.transpose(-1, -2)) * scale + math.log(lk / self.samples)  # (B, H, Lq, m)
        k_block = k_order.argsort(dim=-1).gather(-1, cols) // bk  # (B, H, m)
        same = (q_rank // bq).unsqueeze(-1) == k_block.unsqueeze(-2)
        s2 = s2.masked_fill(same, float("-inf"))
        if mask is not None:
            qi = torch.arange(lq, device=q.device).view(1, 1, lq, 1)
            s2 = _apply(s2, _lookup(mask, shape4, qi, cols.unsqueeze(-2)))
        out2, lse2 = _softmax_parts(s2, vs)
        return merge(out, lse, out2, lse2)

    def _draw(self, b: int, h: int, lk: int, device: torch.device) -> Tensor:
        if self.training:
            return torch.randint(lk, (b, h, self.samples), device=device)
        gen = torch.Generator(device=device).manual_seed(self.eval_seed)
        return torch.randint(lk, (b, h, self.samples), device=device, generator=gen)
