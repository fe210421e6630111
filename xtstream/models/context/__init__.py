"""Context encoders: mix information across a scene's regions, one chunk of regions at a time.

>>> import torch
>>> from xtstream.models.context import ContextStream, create_context
>>> enc = create_context(kind="xl", dim=32, depth=2, heads=4)
>>> stream = ContextStream(enc)
>>> for _ in range(3):  # three chunks of one scene
...     y = stream(torch.randn(1, 16, 32), torch.rand(1, 16, 2) * 8)
>>> y.shape
torch.Size([1, 16, 32])

Kinds, from a registry (:func:`register_context` adds one; :func:`list_contexts` lists them):
``"xl"`` (:class:`TransformerXLContext`, per-layer recurrent memory), ``"mamba"``
(:class:`MambaContext`, carried SSM state), ``"full"`` (:class:`FullContext`, the whole scene at
once: the non-streaming reference), ``"none"`` (identity).
"""

from xtstream.models.context.attention import Attention, exact_attention
from xtstream.models.context.base import ContextEncoder, ContextStream, IdentityContext, detach_all
from xtstream.models.context.config import ContextConfig
from xtstream.models.context.full import FullContext
from xtstream.models.context.hyper import HyperAttention
from xtstream.models.context.mamba import MambaContext, MambaLayerState, MambaState
from xtstream.models.context.positions import sincos_2d
from xtstream.models.context.registry import CONTEXT_ENCODERS, create_context, list_contexts, register_context
register_context("none")(IdentityContext)

from xtstream.models.context.scan import linear_scan, selective_scan, selective_scan_sequential
from xtstream.models.context.xl import TransformerXLContext, XLState, xl_attention_mask

__all__ = [
    "Attention", "CONTEXT_ENCODERS", "ContextConfig", "ContextEncoder", "ContextStream", "FullContext",
    "HyperAttention", "IdentityContext", "MambaContext", "MambaLayerState", "MambaState",
    "TransformerXLContext", "XLState", "create_context", "list_contexts", "register_context", "detach_all", "exact_attention", "linear_scan",
    "selective_scan", "selective_scan_sequential", "sincos_2d", "xl_attention_mask",
]
