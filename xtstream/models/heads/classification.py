"""Scene classification that streams: a running mean of tokens over chunks, then a linear layer.

A scene arrives one chunk at a time, so the pooled feature is a running sum and count. After each
chunk the head gives the logits of the scene *so far*; after the last chunk, of the whole scene.
The carried sum is detached, so a per-chunk loss on these logits back-propagates into the current
chunk only (each chunk's gradient is its share of the scene mean) and memory stays bounded.

Why context reaches the logits: the pool is over the *contextualised* deepest map (each token plus
the context encoder's output at it), and nothing between the pool and the logits works per region
— the LayerNorm normalises the scene's pooled vector, so it cannot cancel what the context adds to
a region the way a per-region decoder's normalisation did (see the xView3 head). A region-only
model's pool is a function of the *set* of its regions; the classification context probes
(:func:`xtstream.bench.probe.make_order_scene`: the class is which of two regions comes first)
have the same set in both classes, and trained xT models separate them (README, context probes).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from xtstream.models.heads.base import Head, register_head


@dataclass
class PoolState:
    """Running pool of one scene: ``total`` ``(B, D)`` token sum (detached), ``count`` tokens seen."""

    total: Tensor
    count: int


class ClassificationHead(Head):
    """The deepest map of one chunk ``(B * C, D, h, w)`` (+ the scenes' :class:`PoolState`) →
    ``(B, num_classes)`` logits of each scene so far."""

    per_region = False

    def __init__(self, dim: int, num_classes: int, drop: float = 0.0) -> None:
        super().__init__()
        self.dim, self.num_classes = dim, num_classes
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(drop)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, features: list[Tensor], scenes: int, state: PoolState | None = None,
                context: Tensor | None = None) -> tuple[Tensor, PoolState]:
        """Logits of each scene so far, and the pool to hand to the scenes' next chunk."""
        last = features[-1]
        bc, d, h, w = last.shape
        # (B*C, D, h, w) -> (B, C*h*w, D): every token of a scene's chunk
        tokens = last.reshape(scenes, bc // scenes, d, h * w).permute(0, 1, 3, 2).reshape(scenes, -1, d)
        total = tokens.sum(dim=1)
        count = tokens.shape[1]
        if state is not None:
            total = total + state.total
            count += state.count
        logits = self.fc(self.drop(self.norm(total / count)))
        return logits, PoolState(total.detach(), count)


@register_head("classification")
def classification(channels: list[int], reductions: list[int], config) -> ClassificationHead:
    """Scene classification over the deepest map: ``num_classes`` from the model config."""
    return ClassificationHead(channels[-1], config.num_classes, **config.head_kwargs)
