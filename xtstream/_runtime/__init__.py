"""Private runtime plumbing: where dask graphs run, the allocator cap, background prefetch."""
