"""Plain image files as scenes: one PNG / JPEG / … is one scene, and directories or lists of them.

Which path is what (:func:`~xtstream.data.sources.open_source`, :func:`expand_sources`):

* a ``.tif`` / ``.tiff`` file is a GeoTIFF (:class:`GeoTIFFSource`); **any other file** is an
  image (:class:`ImageSource`): whatever GDAL reads — PNG, JPEG, GIF, BMP, WebP, JPEG 2000, PNM…
  — georeferenced or not, of any size and shape; its scene id is the file stem.
* a directory holding GeoTIFFs is one scene of band files (as before); a directory holding **no
  GeoTIFFs but image files** (suffixes :data:`IMAGE_SUFFIXES`, not recursive) is an **image
  directory**: each image is one scene.
* a ``.csv`` file is an **image list**: one scene per row, columns ``path`` (relative to the
  CSV's directory, or absolute), optional ``scene_id`` (default: the path's file stem) and
  optional ``label`` (read by the classification task: the same file is the source list and the
  labels). Other columns are ignored.

Colour: alpha bands are dropped and palette images expanded to RGB, so an image is 1 (grey) or 3
(RGB) bands; ``channels=3`` repeats a grey image into three equal bands and ``channels=1`` turns
RGB into luma (ITU-R 601, as PIL's ``convert("L")``), so that mixed folders feed one model. Pixel
values are the file's (0–255 for 8-bit images); EXIF orientation is not applied. Reads keep the
image open (one handle per thread) while their windows go down it: PNG and JPEG decode
sequentially, so a scene read in row order is decoded about once. Still, ingest a very large
image (≫ 100 MP) into a tiled Zarr store once before reading it many times.

>>> refs = list_images("photos/")                     # doctest: +SKIP
>>> refs[0].scene_id, ImageSource(refs[0].path).shape # ('IMG_0001', (3, 3024, 4032))  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import rasterio
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window as RioWindow

from xtstream.data.grid import Window
from xtstream.data.sources.base import WindowedSource
from xtstream.data.sources.geotiff import _ENV, TIFF_SUFFIXES
from xtstream.errors import SourceError

#: suffixes that make a directory an image directory (a single file of any other non-TIFF suffix
#: is still opened as an image)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".jp2", ".j2k", ".ppm", ".pgm", ".pnm")
#: luma weights of ITU-R BT.601 (PIL's ``convert("L")``)
_LUMA = np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class ImageRef:
    """One listed image, not yet opened: its ``path``, ``scene_id`` and ``channels`` conversion.
    :func:`~xtstream.data.sources.open_source` opens it as an :class:`ImageSource`; it is what a
    directory or list expands to, so that listing 100,000 images opens none of them."""

    path: str
    scene_id: str
    channels: int | None = None

    def open(self) -> "ImageSource":
        return ImageSource(self.path, scene_id=self.scene_id, channels=self.channels)


#: ``catch_warnings`` swaps process-wide state: two threads inside it at once can restore each
#: other's filters (and let the warning through); the lock serialises only the ~1 ms opens
_QUIET = threading.Lock()


def _open(path: str) -> Any:
    """``rasterio.open`` without the NotGeoreferencedWarning every plain image would raise (the
    warning is silenced here only, not for the rest of the process)."""
    with _QUIET, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path, sharing=False)


#: this thread's last image handle ``(pid, path, mtime, size, dataset)``; see :func:`_reader`
_LAST = threading.local()
#: handles inherited through a fork: kept, never closed from the child
_INHERITED: list[Any] = []


def _reader(path: str) -> Any:
    """This thread's open dataset of ``path``. PNG and JPEG decode sequentially, so a fresh handle
    per window decodes the image from its top every time (3-4x one decode for a 24 MP JPEG read
    in 256-px regions); reusing the handle while windows go down the image decodes it about
    once. One handle per thread, never shared between threads; the previous image's is closed
    when another is opened, and a file changed since (mtime, size) is reopened."""
    st = os.stat(path)
    key = (os.getpid(), path, st.st_mtime_ns, st.st_size)
    last = getattr(_LAST, "value", None)
    if last is not None and last[:4] == key and not last[4].closed:
        return last[4]
    _forget()
    ds = _open(path)
    _LAST.value = (*key, ds)
    return ds


def _forget() -> None:
    """Close this thread's cached handle (a parent's, after a fork, is only let go of)."""
    last = getattr(_LAST, "value", None)
    _LAST.value = None
    if last is not None:
        if last[0] == os.getpid():
            last[4].close()
        else:
            _INHERITED.append(last[4])


class ImageSource(WindowedSource):
    """One image file (any raster GDAL reads) as a ``(band, y, x)`` source.

    Parameters
    ----------
    path
        The file.
    scene_id
        Default: the file stem (``photos/IMG_0001.jpg`` → ``IMG_0001``).
    channels
        ``None`` keeps the image's colour bands (alpha dropped, palettes expanded); ``3`` or ``1``
        converts grey ↔ RGB (see the module docstring).
    band_names
        One per band (default ``grey`` or ``red, green, blue``, else ``band_1``…).
    """

    def __init__(self, path: str | os.PathLike, *, scene_id: str | None = None, channels: int | None = None,
                 band_names: Sequence[str] | None = None):
        self.path = os.path.abspath(path)
        self.paths = [self.path]
        self.name = self.path
        self.scene_id = scene_id or Path(path).stem
        if channels not in (None, 1, 3):
            raise SourceError(f"{self.path}: channels must be 1, 3 or None, got {channels!r}")
        if not os.path.isfile(self.path):
            raise SourceError(f"{self.path}: no such image file")
        try:
            with rasterio.Env(**_ENV), _open(self.path) as ds:
                interp, count = list(ds.colorinterp), ds.count
                dtypes = set(ds.dtypes)
                height, width = ds.height, ds.width
                crs, transform, nodata = ds.crs, ds.transform, ds.nodata
                palette = ds.colormap(1) if interp and interp[0] == ColorInterp.palette else None
        except RasterioError as err:
            raise SourceError(f"{self.path}: not an image GDAL can read (corrupt, or not an image?): {err}") from err
        if len(dtypes) != 1:
            raise SourceError(f"{self.path}: bands of different dtypes {sorted(dtypes)}")
        self._read = [i + 1 for i, ci in enumerate(interp) if ci != ColorInterp.alpha] or list(range(1, count + 1))
        self._lut = None
        dtype = np.dtype(dtypes.pop())
        if palette is not None:  # indices → RGB, the palette's alpha dropped like an alpha band
            self._lut = np.zeros((max(palette) + 1, 3), dtype=np.uint8)
            for k, rgba in palette.items():
                self._lut[k] = rgba[:3]
            self._read, dtype = [1], np.dtype(np.uint8)
        colour = 3 if palette is not None else len(self._read)
        if channels is not None and channels != colour and colour not in (1, 3):
            raise SourceError(f"{self.path}: {colour} bands cannot be converted to {channels} channel(s)")
        self._convert = None if channels in (None, colour) else channels
        bands = channels or colour
        self.shape = (bands, height, width)
        self.dtype = dtype
        default = ["grey"] if bands == 1 else ["red", "green", "blue"] if bands == 3 else \
            [f"band_{i + 1}" for i in range(bands)]
        self.band_names = list(band_names) if band_names is not None else default
        if len(self.band_names) != bands:
            raise SourceError(f"{self.path}: {bands} bands but {len(self.band_names)} names {self.band_names}")
        self.nodata = [None if nodata is None else float(nodata)] * bands
        # a plain image has no CRS and GDAL's identity transform: no georeferencing at all
        self.crs = crs
        self.transform = transform if crs is not None else None

    def read_window(self, window: Window) -> np.ndarray:
        """``(bands, h, w)`` pixels of ``window``; a file that cannot be decoded raises naming it."""
        try:
            with rasterio.Env(**_ENV):
                data = _reader(self.path).read(self._read, window=RioWindow(window.x0, window.y0, window.width,
                                                                            window.height))
        except (RasterioError, OSError) as err:
            _forget()
            raise SourceError(f"{self.path}: cannot decode window {tuple(window)} (corrupt or truncated "
                              f"image?): {err}") from err
        if self._lut is not None:
            data = np.moveaxis(self._lut[np.minimum(data[0], len(self._lut) - 1)], -1, 0)
        if self._convert == 3:
            data = np.repeat(data, 3, axis=0)
        elif self._convert == 1:
            luma = np.tensordot(_LUMA, data.astype(np.float64), axes=1)[None]
            data = np.rint(luma) if np.issubdtype(self.dtype, np.integer) else luma
        return np.ascontiguousarray(data, dtype=self.dtype)

    def __repr__(self) -> str:
        return f"ImageSource({self.path!r}, scene_id={self.scene_id!r}, shape={self.shape})"


# -- directories and lists of images ----------------------------------------------------------

def image_files(directory: str | Path) -> list[Path]:
    """The image files of a directory (suffixes :data:`IMAGE_SUFFIXES`, any case), sorted; hidden
    files and subdirectories are not looked at."""
    return sorted(p for p in Path(directory).iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def is_image_dir(path: str | Path) -> bool:
    """True for a directory of image files with no GeoTIFF (a scene directory) and no Zarr store."""
    p = Path(path)
    if not p.is_dir() or (p / "zarr.json").is_file() or (p / ".zgroup").is_file():
        return False
    if any(f.suffix.lower() in TIFF_SUFFIXES for f in p.iterdir()):
        return False
    return bool(image_files(p))


def is_image_list(path: Any) -> bool:
    """True for a path to a ``.csv`` file (read as an image list)."""
    return isinstance(path, (str, Path)) and Path(path).suffix.lower() == ".csv" and Path(path).is_file()


def listing_scene_id(row: dict[str, str | None]) -> str:
    """The scene id of an image-list row: its ``scene_id`` cell, else the file stem of ``path``.
    (The classification task reads labels from the same rows with the same ids.)"""
    sid = (row.get("scene_id") or "").strip()
    return sid or Path((row.get("path") or "").strip()).stem


def read_image_list(path: str | Path) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line number, row)`` of an image-list CSV (stripped header with a ``path`` column)."""
    path = Path(path)
    try:
        f = open(path, newline="")
    except OSError as err:
        raise SourceError(f"{path}: cannot open image list: {err}") from err
    with f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        if "path" not in header:
            raise SourceError(f"{path}: an image list needs a 'path' column (has {header}); columns: "
                              "path[,scene_id][,label]")
        reader.fieldnames = header
        for row in reader:
            yield reader.line_num, row


def list_images(src: str | Path, channels: int | None = None) -> list[ImageRef]:
    """The images of an image directory or an image-list CSV, in order (directory: sorted by name;
    list: row order), as unopened :class:`ImageRef`. Scene ids must be unique; listed files must
    exist. Errors name the directory, or the CSV and line."""
    src = Path(src)
    refs: list[ImageRef] = []
    where: dict[str, str] = {}
    if src.is_dir():
        files = image_files(src)
        if not files:
            raise SourceError(f"{src}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this directory")
        for p in files:
            refs.append(ImageRef(str(p.resolve()), p.stem, channels))
            if p.stem in where:
                raise SourceError(f"{src}: {where[p.stem]} and {p.name} are both scene {p.stem!r}; "
                                  "scene ids (file stems) must be unique")
            where[p.stem] = p.name
        return refs
    if not is_image_list(src):
        raise SourceError(f"{src}: neither a directory of images nor an image-list CSV")
    for line, row in read_image_list(src):
        cell = (row.get("path") or "").strip()
        if not cell:
            raise SourceError(f"{src} line {line}: empty path")
        p = Path(cell) if Path(cell).is_absolute() else src.parent / cell
        if not p.is_file():
            raise SourceError(f"{src} line {line}: {p}: no such image file")
        sid = listing_scene_id(row)
        if sid in where:
            raise SourceError(f"{src} line {line}: scene {sid!r} is listed again (first at {where[sid]}); "
                              "scene ids must be unique (add a scene_id column)")
        where[sid] = f"line {line}"
        refs.append(ImageRef(str(p.resolve()), sid, channels))
    if not refs:
        raise SourceError(f"{src}: an image list with no rows")
    return refs


def expand_sources(sources: Any, channels: int | None = None) -> list[Any]:
    """``sources`` (one or a list) with every image directory and image list replaced by its
    images (:func:`list_images`) and every image file by its :class:`ImageRef` (so ``channels``
    applies); anything else passes through unchanged."""
    if isinstance(sources, (str, Path)) or not isinstance(sources, Sequence):
        sources = [sources]
    out: list[Any] = []
    for src in sources:
        if isinstance(src, ImageRef):
            out.append(src if channels is None else ImageRef(src.path, src.scene_id, channels))
        elif isinstance(src, (str, Path)) and (is_image_dir(src) or is_image_list(src)):
            out.extend(list_images(src, channels))
        elif isinstance(src, (str, Path)) and is_image_path(src):
            out.append(ImageRef(str(Path(src).resolve()), Path(src).stem, channels))
        else:
            out.append(src)
    return out


def is_image_path(path: str | Path) -> bool:
    """True for an existing file that is not a GeoTIFF, a CSV or JSON: it is opened as an image."""
    p = Path(path)
    return p.is_file() and p.suffix.lower() not in TIFF_SUFFIXES + (".csv", ".json", ".tar")
