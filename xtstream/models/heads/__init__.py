"""Heads on (contextualised) region features, created by name from a registry.

Built in: ``classification`` (here) and the tasks' heads (``xview3``, in
:mod:`xtstream.tasks.xview3`). A plug-in head is a :class:`Head` subclass plus a factory
registered with :func:`register_head`.
"""

from xtstream.models.heads.base import HEADS, Head, create_head, list_heads, register_head
from xtstream.models.heads.classification import ClassificationHead, PoolState

__all__ = ["HEADS", "ClassificationHead", "Head", "PoolState", "create_head", "list_heads", "register_head"]
