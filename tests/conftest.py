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
