"""Scene classification that streams: a running mean of tokens over chunks, then a linear layer.

A scene arrives one chunk at a time, so the pooled feature is a running sum and count. After each
chunk the head gives the logits of the scene *so far*; after the last chunk, of the whole scene.
The carried sum is detached, so a per-chunk loss on these logits back-propagates into the current
chunk only (each chunk's gradient is its share of the scene mean) and memory stays bounded.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn


@dataclass
class PoolState:
    """Running pool of one scene: ``total`` ``(B, D)`` token sum (detached), ``count`` tokens seen."""

    total: Tensor
    count: int


class ClassificationHead(nn.Module):
    """``(B, L, D)`` tokens of one chunk (+ the scene's :class:`PoolState`) → ``(B, num_classes)``."""

    def __init__(self, dim: int, num_classes: int, drop: float = 0.0) -> None:
        super().__init__()
        self.dim, self.num_classes = dim, num_classes
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(drop)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, tokens: Tensor, state: PoolState | None = None) -> tuple[Tensor, PoolState]:
        """Logits of the scene so far, and the pool to hand to the scene's next chunk."""
        total = tokens.sum(dim=1)
        count = tokens.shape[1]
        if state is not None:
            total = total + state.total
            count += state.count
        logits = self.fc(self.drop(self.norm(total / count)))
        return logits, PoolState(total.detach(), count)
