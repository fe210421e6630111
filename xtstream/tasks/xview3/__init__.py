"""The xView3 task: SAR vessel detection — labels, synthetic scenes, the dense head and its loss,
and decoding detections back to scene pixels. The torch parts load on first use, so the data side
(labels, synthetic scenes) stays torch-free."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"decode_xview3": "decode", "find_peaks": "decode", "to_scene": "decode", "OUTPUTS": "head",
         "XView3Head": "head", "gaussian_heatmap": "head", "xview3_loss": "head"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
