"""Full-sequence (LLaMA-style) context encoder: every token of a chunk attends to every other."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from xtstream.models.context.base import ContextEncoder
from xtstream.models.context.config import ContextConfig
from xtstream.models.context.registry import register_context
from xtstream.models.context.layers import Block, RMSNorm
from xtstream.models.context.positions import add_positions


@register_context("full")
class FullContext(ContextEncoder):
    """``kind="full"``: 2D sin-cos positions, ``depth`` pre-norm blocks (RMSNorm, SwiGLU, exact
    or Hyper attention, no mask), a final RMSNorm — the paper's "(xT) Hyper" setting.

    Every token attends to every token of the **whole scene**: the model gathers all of a
    scene's chunks (their encoded features) before calling it once on the scene's full token
    sequence (``whole_scene = True``), so no region's output exists before the scene's last
    region has been read. Its memory therefore grows with the scene — linearly for the tokens
    and features held, quadratically for exact attention (``attention="hyper"`` keeps the
    attention near-linear) — which is this baseline's nature: it is the non-streaming reference
    that the streaming encoders (``xl``, ``mamba``) are compared against, not one of them.
    ``state`` is ignored (``None`` is returned).
    """

    whole_scene = True

    def __init__(self, config: ContextConfig) -> None:
        super().__init__(config)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = RMSNorm(config.dim)

    def forward(self, x: Tensor, pos: Tensor, state: Any = None) -> tuple[Tensor, None]:
        """``x (B, L, D)``, ``pos (B, L, 2)`` -> ``((B, L, D), None)``."""
        self.check_inputs(x, pos)
        h = add_positions(x, pos)
        for block in self.blocks:
            h = block(h)
        return self.norm(h), None

    def extra_repr(self) -> str:
        c = self.config
        return f"dim={c.dim}, depth={c.depth}, heads={c.heads}, attention={c.attention!r}"
