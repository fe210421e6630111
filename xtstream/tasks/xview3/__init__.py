"""The xView3 task: SAR vessel detection — labels, synthetic scenes, the dense head and its loss,
decoding detections back to scene pixels, model presets. The torch parts load on first use, so the
data side (labels, synthetic scenes, the task's label parsing) stays torch-free."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"decode_xview3": "decode", "find_peaks": "decode", "to_scene": "decode", "OUTPUTS": "head",
         "XView3Head": "head", "gaussian_heatmap": "head", "xview3_loss": "loss",
         "xview3_chunk_loss": "loss", "downsample_targets": "loss", "DEFAULT_WEIGHTS": "loss",
         "LENGTH_REF_M": "head", "length_to_metres": "head", "metres_to_length": "head", "XView3Task": "task", "read_labels": "labels",
         "SceneLabels": "labels", "rasterise": "labels", "synth_scene": "synth"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
