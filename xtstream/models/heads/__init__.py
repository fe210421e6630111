"""Task heads on (contextualised) region features: scene classification and xView3 dense maps."""

from xtstream.models.heads.classification import ClassificationHead, PoolState
from xtstream.tasks.xview3.decode import decode_xview3, find_peaks, to_scene
from xtstream.tasks.xview3.head import OUTPUTS as XVIEW3_OUTPUTS
from xtstream.tasks.xview3.head import XView3Head, gaussian_heatmap, xview3_loss

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
