"""The data side, in the order data flows: sources → ingest (Zarr stores) → the region grid →
windows → shards → ordered scene streams of region chunks. Nothing here imports torch except the
DataLoader glue, which loads it only when used."""
