"""Classification end to end (the paper's iNaturalist setting): plain images of any size and shape,
listed by a directory or a CSV with class labels → ingest / shard / stream / train → predict → top-k.

Images here are small, non-square PNG and JPEG files (RGB and grey); class 1 is bright and red,
class 0 dark and blue, so a tiny model separates them in a few dozen steps.
"""

from __future__ import annotations

import csv
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import xtstream
from conftest import tiny_model
from xtstream.cli import main
from xtstream.data.grid import Window
from xtstream.data.sources import ImageSource, expand_sources, is_image_dir, list_images, open_source
from xtstream.errors import LabelError, SourceError
from xtstream.tasks import get_task
from xtstream.tasks.classification.metric import topk

# plain images have no CRS: rasterio's NotGeoreferencedWarning must never reach the user
pytestmark = pytest.mark.filterwarnings("error::rasterio.errors.NotGeoreferencedWarning")

#: (name, height, width, class, file type, grey)
IMAGES = [("owl", 90, 150, 1, "png", False), ("fern", 200, 70, 0, "jpg", False),
          ("moth", 64, 120, 1, "jpg", False), ("moss", 110, 70, 0, "png", True),
          ("lichen", 100, 100, 0, "png", False), ("wren", 75, 130, 1, "png", False)]


def _pixels(h: int, w: int, cls: int, grey: bool, rng: np.random.Generator) -> np.ndarray:
    base = np.array([210, 70, 40]) if cls == 1 else np.array([30, 50, 120])
    rgb = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    return rgb.mean(axis=2).astype(np.uint8) if grey else rgb


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """``tmp/imgs/`` of the images above, ``tmp/list.csv`` (``path,label``, rows not in name
    order) and ``tmp/labels.csv`` (``scene_id,label``)."""
    rng = np.random.default_rng(0)
    d = tmp_path / "imgs"
    d.mkdir()
    for name, h, w, cls, ext, grey in IMAGES:
        options = {"quality": 95} if ext == "jpg" else {}
        Image.fromarray(_pixels(h, w, cls, grey, rng)).save(d / f"{name}.{ext}", **options)
    (tmp_path / "list.csv").write_text("path,label\n" + "".join(f"imgs/{n}.{e},{c}\n" for n, _, _, c, e, _ in IMAGES))
    (tmp_path / "labels.csv").write_text("scene_id,label\n" + "".join(f"{n},{c}\n" for n, _, _, c, _, _ in IMAGES))
    return tmp_path


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _checkpoint(tmp_path: Path, **kw) -> Path:
    torch.manual_seed(0)
    model = tiny_model(context="xl", in_chans=3, head="classification", num_classes=5, **kw)
    return xtstream.save_checkpoint(model, tmp_path / "cls.pt")


# -- images as sources ------------------------------------------------------------------------

def test_png_and_jpeg_open_as_non_georeferenced_sources_without_warnings(images):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rasterio's NotGeoreferencedWarning included
        owl, fern, moss = (open_source(images / "imgs" / f) for f in ("owl.png", "fern.jpg", "moss.png"))
        pixels = owl.read_window(Window(10, 20, 80, 150))
        fern.read_window(Window(0, 0, 200, 70))
        moss_rgb = open_source(images / "imgs" / "moss.png", channels=3).read_window(Window(0, 0, 110, 70))
    assert isinstance(owl, ImageSource) and owl.scene_id == "owl"
    assert (owl.shape, fern.shape, moss.shape) == ((3, 90, 150), (3, 200, 70), (1, 110, 70))
    assert owl.band_names == ["red", "green", "blue"] and moss.band_names == ["grey"]
    assert owl.crs is None and owl.transform is None and owl.dtype == np.uint8
    expected = np.asarray(Image.open(images / "imgs" / "owl.png")).transpose(2, 0, 1)[:, 10:80, 20:150]
    np.testing.assert_array_equal(pixels, expected)
    grey = np.asarray(Image.open(images / "imgs" / "moss.png"))
    np.testing.assert_array_equal(moss_rgb, np.stack([grey] * 3))
    reader = xtstream.open_scene(images / "imgs" / "fern.jpg", region=64)
    assert reader.scene_id == "fern" and (reader.grid.rows, reader.grid.cols) == (4, 2)


def test_alpha_palette_and_luma(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "a.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.gif")
    Image.fromarray(rgb).save(tmp_path / "c.png")
    window = Window(0, 0, 40, 30)
    np.testing.assert_array_equal(open_source(tmp_path / "a.png").read_window(window), rgb.transpose(2, 0, 1))
    palette = np.asarray(Image.open(tmp_path / "p.gif").convert("RGB")).transpose(2, 0, 1)
    np.testing.assert_array_equal(open_source(tmp_path / "p.gif").read_window(window), palette)
    luma = open_source(tmp_path / "c.png", channels=1).read_window(window)[0].astype(int)
    assert np.abs(luma - np.asarray(Image.fromarray(rgb).convert("L"), dtype=int)).max() <= 1


def test_an_image_is_opened_once_while_its_regions_are_read_in_order(images, monkeypatch):
    import xtstream.data.sources.images as module

    opened = []
    real = module._open
    monkeypatch.setattr(module, "_open", lambda path: opened.append(path) or real(path))
    module._forget()
    scene = xtstream.open_scene(images / "imgs" / "fern.jpg", region=32)  # 7 x 3 regions
    first = [r.pixels for r in scene]
    assert len(first) == 21 and len(opened) == 2  # the header when listed, then one for all reads
    Image.fromarray(np.zeros((200, 70, 3), np.uint8)).save(images / "imgs" / "fern.jpg")  # rewritten
    assert all(not r.pixels.any() for r in xtstream.open_scene(images / "imgs" / "fern.jpg", region=32))
    module._forget()


def test_directory_and_csv_rules(images):
    by_dir = expand_sources(images / "imgs")
    assert [r.scene_id for r in by_dir] == sorted(n for n, *_ in IMAGES)  # sorted by file name
    by_list = expand_sources(images / "list.csv", channels=3)
    assert [r.scene_id for r in by_list] == [n for n, *_ in IMAGES]  # row order
    assert all(r.channels == 3 and Path(r.path).is_file() for r in by_list)
    (images / "ids.csv").write_text(f"scene_id,path,label\nfirst,{images / 'imgs' / 'owl.png'},1\n,imgs/fern.jpg,0\n")
    assert [r.scene_id for r in list_images(images / "ids.csv")] == ["first", "fern"]
    with pytest.raises(SourceError, match="imgs: a directory of 6 image files, each one scene"):
        open_source(images / "imgs")
    with pytest.raises(SourceError, match="list.csv: a CSV is a list of images"):
        open_source(images / "list.csv")
    # a directory with a GeoTIFF stays one scene of band files (a quick-look PNG beside it is ignored)
    import rasterio
    from rasterio.transform import from_origin

    scene = images / "scene"
    scene.mkdir()
    with rasterio.open(scene / "VV.tif", "w", driver="GTiff", height=8, width=8, count=1, dtype="uint8",
                       crs="EPSG:32631", transform=from_origin(500000, 0, 10, 10)) as ds:
        ds.write(np.zeros((1, 8, 8), np.uint8))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(scene / "preview.png")
    assert not is_image_dir(scene) and open_source(scene).band_names == ["VV"]


def test_bad_lists_name_the_file_and_line(images):
    bad = images / "bad.csv"
    bad.write_text("file,label\nimgs/owl.png,1\n")
    with pytest.raises(SourceError, match="bad.csv: an image list needs a 'path' column"):
        list_images(bad)
    bad.write_text("path,label\nimgs/owl.png,1\nimgs/nope.png,0\n")
    with pytest.raises(SourceError, match="bad.csv line 3: .*nope.png: no such image file"):
        list_images(bad)
    bad.write_text("path,label\nimgs/owl.png,1\nother/owl.png,0\n")
    (images / "other").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(images / "other" / "owl.png")
    with pytest.raises(SourceError, match="bad.csv line 3: scene 'owl' is listed again"):
        list_images(bad)
    with pytest.raises(LabelError, match="bad.csv line 3: a second label for scene 'owl'"):
        get_task("classification").read_labels(bad)


def test_labels_read_from_the_image_list(images):
    task = get_task("classification")
    from_list = task.read_labels(images / "list.csv")
    assert {k: v.index for k, v in from_list.items()} == {n: c for n, _, _, c, _, _ in IMAGES}
    assert from_list == task.read_labels(images / "labels.csv")


# -- predict and evaluate through the CLI -----------------------------------------------------

def test_predict_a_directory_and_a_list_then_evaluate(images, capsys):
    ckpt = _checkpoint(images)
    assert main(["predict", str(ckpt), str(images / "imgs"), "--out", str(images / "p_dir"), "--quiet"]) == 0
    assert main(["predict", str(ckpt), str(images / "list.csv"), "--out", str(images / "p_list"),
                 "--quiet", "--top-k", "5"]) == 0
    by_dir, by_list = _rows(images / "p_dir" / "predictions.csv"), _rows(images / "p_list" / "predictions.csv")
    assert [r["scene_id"] for r in by_dir] == sorted(n for n, *_ in IMAGES)  # one row per image
    assert [r["scene_id"] for r in by_list] == [n for n, *_ in IMAGES]
    assert list(by_list[0]) == ["scene_id"] + [f"top{i}" for i in range(1, 6)] + [f"prob{i}" for i in range(1, 6)]
    # the same model and images: the same classes whichever way they were listed
    assert {r["scene_id"]: r["top1"] for r in by_dir} == {r["scene_id"]: r["top1"] for r in by_list}
    capsys.readouterr()
    assert main(["evaluate", "--task", "classification", str(images / "p_list" / "predictions.csv"),
                 str(images / "list.csv")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^top1 +[01]\.\d{6}$", out, re.M) and re.search(r"^scenes +6$", out, re.M)
    assert re.search(r"^top5 +1\.000000$", out, re.M)  # 5 of 5 classes: top-5 is 1
    assert main(["evaluate", "--task", "classification", str(images / "p_dir" / "predictions.csv"),
                 str(images / "labels.csv")]) == 0


def test_a_corrupt_image_fails_naming_it(images, capsys):
    ckpt = _checkpoint(images)
    (images / "imgs" / "broken.png").write_bytes(b"not a png at all" * 8)
    assert main(["predict", str(ckpt), str(images / "imgs"), "--out", str(images / "p1"), "--quiet"]) == 2
    assert "broken.png: not an image GDAL can read" in capsys.readouterr().err
    (images / "imgs" / "broken.png").unlink()
    whole = (images / "imgs" / "fern.jpg").read_bytes()
    (images / "imgs" / "fern.jpg").write_bytes(whole[: len(whole) // 3])  # truncated: opens, fails to decode
    assert main(["predict", str(ckpt), str(images / "imgs"), "--out", str(images / "p2"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "fern.jpg: cannot decode window" in err
    assert not (images / "p2" / "predictions.csv").exists()


def test_ingest_and_shard_images_for_training(images, capsys):
    stores = images / "stores"
    assert main(["ingest", str(images / "list.csv"), "--out", str(stores), "--channels", "3", "--quiet"]) == 0
    made = sorted(stores.glob("*.zarr"))
    assert [p.name for p in made] == sorted(f"{n}.zarr" for n, *_ in IMAGES)
    assert xtstream.open_store(stores / "moss.zarr")["image"].shape == (3, 110, 70)  # grey → 3 bands
    assert main(["shard", *map(str, made), "--out", str(images / "shards"), "--region", "64",
                 "--task", "classification", "--labels", str(images / "list.csv"), "--quiet"]) == 0
    doc = json.loads((images / "shards" / "manifest.json").read_text())
    assert doc["totals"]["scenes"] == len(IMAGES)
    labels = {n: c for n, _, _, c, _, _ in IMAGES}
    for chunk in xtstream.read_scenes(images / "shards", chunk=2):
        assert set(chunk.targets["label"].tolist()) == {labels[chunk.scene_id]}


# -- train, then predict ----------------------------------------------------------------------

def test_trained_on_the_list_a_tiny_model_predicts_every_image(images):
    task = get_task("classification")
    labels = task.read_labels(images / "list.csv")
    torch.manual_seed(0)
    model = tiny_model(context="xl", in_chans=3, head="classification", num_classes=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    steps = 0
    for epoch in range(3):  # 15 chunks an epoch
        chunks = xtstream.stream_scenes(images / "list.csv", region=64, chunk=2, labels=labels, channels=3,
                                        shuffle=True, seed=epoch)
        steps += len(list(xtstream.train_chunks(model, chunks, opt)))
    assert steps == 45
    res = xtstream.predict(model, images / "list.csv", images / "pred", progress=False, top_k=2)
    assert len(_rows(res.csv)) == len(IMAGES)
    assert topk(res.csv, images / "list.csv")["top1"] == 1.0
