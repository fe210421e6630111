"""Region encoders: timm backbones per region, and the batching generator that feeds them.

>>> from xtstream.models.encoders import create_region_encoder, encode_regions
>>> enc = create_region_encoder("convnext_atto", region=256, in_chans=2)   # doctest: +SKIP
>>> for chunk in encode_regions(chunks, enc):                             # doctest: +SKIP
...     chunk.scene_id, chunk.indices, [f.shape for f in chunk.features]
"""

from xtstream.models.encoders.backbone import RegionEncoder, create_region_encoder, suggest_backbones
from xtstream.models.encoders.budget import batch_size_for, default_budget, region_cost
from xtstream.models.encoders.stream import (assign_features, budget_batch_size, encode_regions, forward_with_grad_ratio,
                                             stack_pixels, stack_targets, windows)

__all__ = [
    "RegionEncoder",
    "assign_features",
    "batch_size_for",
    "budget_batch_size",
    "create_region_encoder",
    "default_budget",
    "encode_regions",
    "forward_with_grad_ratio",
    "region_cost",
    "stack_pixels",
    "stack_targets",
    "suggest_backbones",
    "windows",
]
