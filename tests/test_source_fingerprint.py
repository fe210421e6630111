"""Custom sources resume: their identity is a stable fingerprint, not ``id()`` (issue 11, part B)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from xtstream.data.grid import Window
from xtstream.data.ingest import ingest
from xtstream.data.sources import WindowedSource
from xtstream.data.store import open_store, read_status
from xtstream.errors import SourceError

DATA = np.random.default_rng(4).random((2, 96, 160)).astype("f4")


class Computed(WindowedSource):
    """Pixels computed in memory: no file paths, so nothing on disk says what it is."""

    name, dtype, band_names, shape = "computed", np.dtype("f4"), ["a", "b"], DATA.shape

    def __init__(self, fail_at: Window | None = None):
        self.fail_at, self.reads = fail_at, []

    def read_window(self, window: Window) -> np.ndarray:
        if window == self.fail_at:
            raise RuntimeError(f"interrupted at {tuple(window)}")
        self.reads.append(tuple(window))
        return DATA[:, window.y0:window.y1, window.x0:window.x1].copy()


class Versioned(Computed):
    """The same, with a fingerprint: what makes its pixels (here, a version)."""

    def fingerprint(self) -> str:
        return "computed-v1"


def interrupted(src_class: type, out, **kw):
    """Ingest ``out`` from a fresh instance that fails on the first tile (the sync scheduler
    reaches it last): an unfinished store."""
    with pytest.raises(SourceError, match="interrupted"):
        ingest(src_class(fail_at=Window(0, 0, 32, 32)), out, tile=32, scheduler="sync", progress=False, **kw)
    assert read_status(out).ours and not read_status(out).complete


def test_a_custom_source_with_a_fingerprint_resumes_from_a_new_instance(tmp_path):
    """A second instance (a rerun: another process) once had another identity (``id()``), so the
    run was refused as "another ingest" and could never be resumed."""
    out = tmp_path / "v.zarr"
    interrupted(Versioned, out)
    again = Versioned()
    ingest(again, out, tile=32, scheduler="sync", progress=False)
    assert 0 < len(again.reads) < 15  # only the tiles left
    assert np.array_equal(open_store(out)["image"].values, DATA)


def test_resuming_from_a_source_without_a_stable_fingerprint_says_how_to_add_one(tmp_path):
    out = tmp_path / "c.zarr"
    interrupted(Computed, out)
    with pytest.raises(SourceError, match=r"c\.zarr: cannot resume .*'computed'.* no stable fingerprint.*"
                                          r"def fingerprint\(self\)"):
        ingest(Computed(), out, tile=32, scheduler="sync", progress=False)
    ingest(Computed(), out, tile=32, scheduler="sync", progress=False, overwrite=True)  # starting over works
    assert np.array_equal(open_store(out)["image"].values, DATA)


def test_a_complete_store_of_a_fingerprinted_source_is_recognised(tmp_path):
    out = ingest(Versioned(), tmp_path / "v.zarr", tile=32, scheduler="sync", progress=False)
    again = Versioned()
    ingest(again, out, tile=32, scheduler="sync", progress=False)
    assert again.reads == []  # complete: nothing read again


class OnDisk(WindowedSource):
    """A source reading a raw file: it has paths, so its default fingerprint follows the file."""

    name, dtype, band_names, shape = "raw", np.dtype("f4"), ["a", "b"], DATA.shape

    def __init__(self, path):
        self.paths = [str(path)]

    def read_window(self, window: Window) -> np.ndarray:
        data = np.fromfile(self.paths[0], dtype="f4").reshape(self.shape)
        return data[:, window.y0:window.y1, window.x0:window.x1].copy()


def test_the_default_fingerprint_follows_file_paths_sizes_and_mtimes(tmp_path):
    path = tmp_path / "raw.f4"
    DATA.tofile(path)
    a, b = OnDisk(path), OnDisk(path)
    before = a.fingerprint()
    assert before == b.fingerprint() is not None
    assert a.to_dataarray(32).data.name == b.to_dataarray(32).data.name  # same dask tasks, whatever the instance
    os.utime(path, ns=(1, 1))
    assert OnDisk(path).fingerprint() != before
    assert Computed().fingerprint() is None and Versioned().fingerprint() == "computed-v1"
