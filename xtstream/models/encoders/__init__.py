"""Region encoders: timm backbones per region, and the batching generator that feeds them.

>>> from xtstream.models.encoders import create_region_encoder, encode_regions
>>> enc = create_region_encoder("convnext_atto", region=256, in_chans=2)   # doctest: +SKIP
>>> for batch in encode_regions(samples, enc):                            # doctest: +SKIP
...     batch.scene_id, batch.indices, [f.shape for f in batch.features]
"""

from xtstream.models.encoders.backbone import RegionEncoder, create_region_encoder, suggest_backbones
from xtstream.models.encoders.budget import batch_size_for, default_budget, region_cost
from xtstream.models.encoders.stream import EncodedBatch, encode_regions, forward_with_grad_ratio, group_regions, stack_targets

__all__ = [
    "EncodedBatch",
    "RegionEncoder",
    "batch_size_for",
    "create_region_encoder",
    "default_budget",
    "encode_regions",
    "forward_with_grad_ratio",
    "group_regions",
    "region_cost",
    "stack_targets",
    "suggest_backbones",
]
