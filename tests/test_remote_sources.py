"""GDAL network paths and URLs as sources (issue 13): a COG served over HTTP on 127.0.0.1 ingests
and streams to the same values as the local file; a missing one is a clear error naming it."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from xtstream.data.sources import is_remote, open_source
from xtstream.errors import SourceError


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with HTTP range requests (GDAL's /vsicurl/ reads a COG by byte ranges)."""

    def log_message(self, *args):  # quiet
        pass

    def send_head(self):
        path = Path(self.translate_path(self.path))
        rng = self.headers.get("Range")
        if not path.is_file() or not rng:
            return super().send_head()
        size = path.stat().st_size
        start, _, end = rng.removeprefix("bytes=").partition("-")
        start, end = int(start), min(int(end) if end else size - 1, size - 1)
        f = open(path, "rb")
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "image/tiff")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self._left = end - start + 1
        return f

    def copyfile(self, source, outputfile):
        left = getattr(self, "_left", None)
        if left is None:
            return super().copyfile(source, outputfile)
        while left > 0:
            block = source.read(min(left, 1 << 16))
            if not block:
                break
            outputfile.write(block)
            left -= len(block)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``(url_root, local_path, data)``: a 2-band uint16 COG served from 127.0.0.1."""
    root = tmp_path_factory.mktemp("www")
    rng = np.random.default_rng(0)
    data = rng.integers(1, 4000, (2, 300, 260), dtype="uint16")
    with rasterio.open(root / "scene.tif", "w", driver="COG", height=300, width=260, count=2, dtype="uint16",
                       crs="EPSG:32618", transform=from_origin(500000, 4000000, 10, 10), blocksize=128) as dst:
        dst.write(data)
    handler = lambda *a, **k: RangeHandler(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root / "scene.tif", data
    server.shutdown()


def test_gdal_paths_and_urls_are_remote_and_local_paths_are_not(tmp_path):
    for p in ("/vsicurl/https://example.org/a.tif", "/vsis3/bucket/a.tif", "s3://bucket/a.tif",
              "https://example.org/a.tif", "gs://b/a.tif"):
        assert is_remote(p), p
    for p in (tmp_path / "a.tif", "a.tif", "file:///tmp/a.tif", "C:/data/a.tif"):
        assert not is_remote(p), p


@pytest.mark.parametrize("form", ["url", "vsicurl"])
def test_a_served_cog_ingests_to_the_local_file_s_values(served, tmp_path, form):
    import xarray as xr

    from xtstream.data.ingest import ingest

    root, local, data = served
    url = f"{root}/scene.tif" if form == "url" else f"/vsicurl/{root}/scene.tif"
    src = open_source(url)
    assert src.shape == (2, 300, 260) and src.name == url
    store = ingest(url, tmp_path / "remote.zarr", tile=128, progress=False)
    image = xr.open_zarr(store)["image"]
    np.testing.assert_array_equal(image.values, data)
    assert xr.open_zarr(store).attrs["xtstream"]["source_paths"] == [url]


def test_streaming_regions_from_a_url(served):
    import xtstream

    root, _, data = served
    scene = xtstream.open_scene(f"{root}/scene.tif", 128)
    regions = list(scene)
    assert len(regions) == 3 * 3
    np.testing.assert_array_equal(regions[4].pixels, data[:, 128:256, 128:256])


def test_a_missing_remote_file_is_named(served):
    root, _, _ = served
    with pytest.raises(SourceError, match=r"127\.0\.0\.1:\d+/nothing\.tif: not a readable raster"):
        open_source(f"{root}/nothing.tif")
