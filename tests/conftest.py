"""Shared fixtures. Real rasters come from ../shared/data beside the checkout; tests skip without it."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present (real test rasters live beside the checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def small_scene(tmp_path_factory):
    """A 700 x 900 synthetic xView3-like scene directory (made once per session)."""
    from xtstream.tasks.xview3.synth import synth_scene

    return synth_scene(tmp_path_factory.mktemp("scenes") / "scene_a", 700, 900, seed=11, progress=False)


try:  # the CI machine is small and shared: judge properties, not per-example speed
    from hypothesis import settings

    settings.register_profile("xtstream", deadline=None, max_examples=60)
    settings.load_profile("xtstream")
except ImportError:  # pragma: no cover
    pass


# -- tiny models: the fast tier. Each builds in ~0.1-0.2 s (convnext_atto proper takes ~0.8 s) ----
TINY_BACKBONES = {
    "convnext": ("convnext_atto", dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))),
    "swinv2": ("swinv2_tiny_window8_256", dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2),
                                               window_size=4, drop_path_rate=0.0)),
    "hiera": ("hiera_tiny_224", dict(embed_dim=16, num_heads=1, stages=(1, 1, 1, 1))),
}
TINY_REGION = 64


def tiny_model(family: str = "convnext", context: str = "none", head: str = "xview3", **kw):
    """An xT model around a tiny backbone: 64-px regions of 2 bands, chunks of 2, one context layer
    of width 32; ``kw`` overrides any of it."""
    import xtstream

    name, tiny = TINY_BACKBONES[family]
    opts = dict(region=TINY_REGION, chunk=2, context=context, dim=32, depth=1, heads=2, head=head,
                in_chans=2, num_classes=5,
                head_kwargs={"decoder_channels": [16, 8, 8]} if head == "xview3" else {})
    opts.update(tiny)
    opts.update(kw)
    return xtstream.create_model(name, **opts)


def scene_regions(scene_id: str, rows: int, cols: int, seed: int = 0, region: int = TINY_REGION,
                  bands: int = 2):
    """A scene of ``rows x cols`` regions (zero padding on both edges) as RegionSamples with a
    centre and a vessel target."""
    import numpy as np

    from xtstream.data.grid import RegionGrid, extract_region
    from xtstream.data.sample import RegionSample

    grid = RegionGrid(rows * region - 7, cols * region - 3, region)
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((bands, grid.height, grid.width)).astype(np.float32)
    centre = np.zeros((grid.height, grid.width), np.float32)
    centre[10, 10] = 1.0
    return [RegionSample(scene_id, i, grid, extract_region(image, grid, i),
                         targets={"centre": extract_region(centre, grid, i),
                                  "vessel": extract_region(centre > 0, grid, i).astype(np.float32)})
            for i in range(len(grid))]


def scene_chunks(scene_id: str, rows: int, cols: int, chunk: int = 2, seed: int = 0, **kw):
    """The same scene as RegionChunks of ``chunk`` regions."""
    from xtstream.data.chunk import chunked

    return list(chunked(scene_regions(scene_id, rows, cols, seed, **kw), chunk))


# -- plug-ins, registered from outside the package (in every model test matrix) -------------------
import torch  # noqa: E402
from torch import nn  # noqa: E402

from xtstream.models.context import ContextEncoder, register_context  # noqa: E402
from xtstream.models.heads import Head, register_head  # noqa: E402


@register_context("toy_running_mean")
class RunningMeanContext(ContextEncoder):
    """Adds the running mean of every token seen so far in the scene (a plug-in with state)."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self.scale = nn.Parameter(torch.tensor(float(config.options.get("scale", 1.0))))

    def forward(self, x, pos, state=None):
        self.check_inputs(x, pos)
        total, count = (x.sum(1), x.shape[1]) if state is None else (state[0] + x.sum(1), state[1] + x.shape[1])
        return x + self.scale * (total / count).unsqueeze(1), (self.hand_on(total), count)


class CountHead(Head):
    """One number per region: the mean of its deepest map (a plug-in head)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, 1)

    def forward(self, features, scenes, state=None, context=None):
        return self.fc(features[-1].mean((2, 3))), None


@register_head("toy_count")
def toy_count(channels, reductions, config):
    return CountHead(channels[-1])
