"""Context encoders: mix information across a scene's regions, one chunk of regions at a time.

>>> import torch
>>> from xtstream.context import ContextStream, create_context
>>> enc = create_context(kind="xl", dim=32, depth=2, heads=4)
>>> stream = ContextStream(enc)
>>> for _ in range(3):  # three chunks of one scene
...     y = stream(torch.randn(1, 16, 32), torch.rand(1, 16, 2) * 8)
>>> y.shape
torch.Size([1, 16, 32])

Kinds: ``"xl"`` (:class:`TransformerXLContext`, per-layer recurrent memory), ``"mamba"``
(:class:`MambaContext`, carried SSM state), ``"full"`` (:class:`FullContext`, one chunk, no
state), ``"none"`` (identity).
"""

from .attention import Attention, exact_attention
from .base import ContextEncoder, ContextStream, IdentityContext, detach_all
from .config import ContextConfig
from .full import FullContext
from .hyper import HyperAttention
from .mamba import MambaContext, MambaLayerState, MambaState
from .positions import sincos_2d
from .registry import CONTEXT_ENCODERS, create_context
from .scan import linear_scan, selective_scan, selective_scan_sequential
from .xl import TransformerXLContext, XLState, xl_attention_mask

__all__ = [
    "Attention", "CONTEXT_ENCODERS", "ContextConfig", "ContextEncoder", "ContextStream", "FullContext",
    "HyperAttention", "IdentityContext", "MambaContext", "MambaLayerState", "MambaState",
    "TransformerXLContext", "XLState", "create_context", "detach_all", "exact_attention", "linear_scan",
    "selective_scan", "selective_scan_sequential", "sincos_2d", "xl_attention_mask",
]
