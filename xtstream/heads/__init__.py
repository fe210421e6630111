"""Task heads on (contextualised) region features: scene classification and xView3 dense maps."""

from .classification import ClassificationHead, PoolState
from .peaks import decode_xview3, find_peaks, to_scene
from .xview3 import OUTPUTS as XVIEW3_OUTPUTS
from .xview3 import XView3Head, gaussian_heatmap, xview3_loss

__all__ = [
    "ClassificationHead",
    "PoolState",
    "XVIEW3_OUTPUTS",
    "XView3Head",
    "decode_xview3",
    "find_peaks",
    "gaussian_heatmap",
    "to_scene",
    "xview3_loss",
]
