"""The CLI contract: commands, flags, exit codes and error messages users script against."""

import json
import subprocess
import sys

import numpy as np

from xtstream.cli import main
from xtstream.data.store import open_store, read_status


def test_synth_then_ingest_through_the_cli(tmp_path, capsys):
    scene = tmp_path / "cli_scene"
    assert main(["synth", str(scene), "--height", "600", "--width", "520", "--seed", "3", "--quiet"]) == 0
    assert (scene / "VV_dB.tif").is_file() and (scene / "labels.csv").is_file()
    store = tmp_path / "cli.zarr"
    assert main(["ingest", str(scene), "--out", str(store), "--spec", "xview3", "--tile", "256",
                 "--bands", "VV,VH", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "cli.zarr  (complete)" in out and "'VV', 'VH'" in out
    ds = open_store(store)
    assert ds["image"].shape == (2, 600, 520) and np.isfinite(ds["image"].values).all()


def test_archive_through_the_cli(tmp_path, capsys):
    root = tmp_path / "arch"
    assert main(["synth", str(root), "--height", "520", "--width", "520", "--scenes", "2", "--quiet"]) == 0
    assert (root / "labels.csv").is_file()
    assert main(["ingest", str(root), "--out", str(tmp_path / "stores"), "--spec", "xview3", "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "stores").iterdir()) == ["synth_0.zarr", "synth_1.zarr"]


def test_errors_exit_2_with_the_file_named(tmp_path, capsys, shared_data):
    code = main(["ingest", str(shared_data / "rasterio" / "corrupt.tif"), "--out", str(tmp_path / "c.zarr")])
    assert code == 2
    assert "corrupt.tif" in capsys.readouterr().err
    code = main(["ingest", str(tmp_path / "missing_dir"), "--out", str(tmp_path / "m.zarr")])
    assert code == 2 and "missing_dir: no such file" in capsys.readouterr().err


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "xtstream.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("synth", "ingest", "demo"):
        assert command in out.stdout


def test_demo_runs_every_stage_end_to_end(tmp_path, capsys):
    # the README's first command, quick: synth -> ingest -> shards -> train xT and the baseline ->
    # predict the held-out scene -> the xView3 metric side by side -> a PNG
    assert main(["demo", "--workdir", str(tmp_path), "--quick", "--scheduler", "threads"]) == 0
    out = capsys.readouterr().out
    for step in ("[1/6] synth: 2 training scene(s) + 1 held-out", "[2/6] ingest", "[3/6] shard: 18 labelled regions",
                 "[4/6] train", "[5/6] predict the held-out scene", "[6/6] xView3 metric", "region-only"):
        assert step in out, out
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert set(scores) == {"xT (XL context)", "region-only"}
    assert all(0.0 <= s["aggregate"] <= 1.0 for s in scores.values())
    assert (tmp_path / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert read_status(tmp_path / "stores" / "demo_0.zarr").complete
    assert (tmp_path / "runs" / "xt_convnext_atto_xl" / "model.pt").is_file()
    # `make demo` a second time: the scenes are generated again (new files), and the stores, shards
    # and runs of the first run are replaced, not refused as another run's
    assert main(["demo", "--workdir", str(tmp_path), "--quick", "--scheduler", "threads"]) == 0
    assert "[6/6] xView3 metric" in capsys.readouterr().out


def test_zero_sizes_are_refused_not_taken_for_defaults(tmp_path, capsys):
    """``--tile 0`` and ``--max-count 0`` once went through as "not given" (the default)."""
    import pytest

    from xtstream.data.ingest import ingest
    from xtstream.data.shards import shard_stores
    from xtstream.data.sources import ArraySource
    from xtstream.errors import ShardError, StoreError

    data = np.zeros((1, 40, 40), "f4")
    with pytest.raises(StoreError, match="tile must be positive, got 0"):
        ingest(ArraySource(data, scene_id="z"), tmp_path / "z0.zarr", tile=0, progress=False)
    store = ingest(ArraySource(data, scene_id="z"), tmp_path / "z.zarr", tile=16, progress=False)
    with pytest.raises(ShardError, match="max_count must be at least 1, got 0"):
        shard_stores([store], tmp_path / "s0", region=8, max_count=0, progress=False)
    for argv in (["ingest", "x.tif", "--out", str(tmp_path / "o.zarr"), "--tile", "0"],
                 ["ingest", "x.tif", "--out", str(tmp_path / "o.zarr"), "--chunk", "0"],
                 ["shard", str(store), "--out", str(tmp_path / "s"), "--region", "8", "--max-count", "0"],
                 ["shard", str(store), "--out", str(tmp_path / "s"), "--region", "0"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        assert "must be at least 1, got '0'" in capsys.readouterr().err
    assert not (tmp_path / "o.zarr").exists() and not (tmp_path / "s").exists()
