"""The ``local:N`` cluster an ingest or a sharding starts (xtstream._runtime.cluster.local_cluster)."""

import sys

import numpy as np

from xtstream._runtime import cluster


def test_local_workers_import_the_preloaded_modules_as_they_start():
    """A worker that imports the ingest's modules (0.5 s) only when it unpickles its first task
    starts the run that much late; preloaded, it has them before the cluster counts as up."""
    module = "xtstream.data.tile_writer"  # one the worker would not import otherwise
    with cluster.dask_client("local:1", preload=[module]) as client:
        seen = client.run(lambda: sorted(m for m in sys.modules if m.startswith("xtstream.data.")))
    assert module in list(seen.values())[0]


def test_ingest_and_sharding_preload_their_own_modules(tmp_path, monkeypatch):
    from xtstream.data import ingest as ingest_mod
    from xtstream.data.shards import writer

    asked = []
    real = cluster.dask_client

    def spy(scheduler=None, preload=()):
        asked.append(list(preload))
        return real("sync", preload)

    monkeypatch.setattr(ingest_mod, "dask_client", spy)
    monkeypatch.setattr(cluster, "dask_client", spy)  # the shard writer imports it when it runs
    from xtstream.data.sources import ArraySource

    src = ArraySource(np.arange(2 * 64 * 80, dtype="f4").reshape(2, 64, 80), scene_id="s")
    out = ingest_mod.ingest(src, tmp_path / "s.zarr", tile=32, scheduler="local:1", progress=False)
    writer.shard_stores([out], tmp_path / "shards", region=32, scheduler="local:1", progress=False)
    assert asked == [["xtstream.data.ingest"], ["xtstream.data.shards.writer"]]


def test_a_scheduler_without_a_dashboard_gets_no_link_to_one(capfd):
    """A scheduler without bokeh's dashboard still runs its HTTP server under the service name
    "dashboard": the command printed ``dask dashboard (tcp://…): http://…:8787/status``, a page
    that answers 404. It now says there is none; a served dashboard's link is still printed."""
    from distributed import LocalCluster

    for dashboard in (None, ":0"):
        with LocalCluster(n_workers=1, processes=False, protocol="tcp", dashboard_address=dashboard) as local, \
                cluster.dask_client(local.scheduler_address) as client:
            link = client.dashboard_link
        err = capfd.readouterr().err
        if dashboard is None:
            assert "dask dashboard" not in err, err
            assert f"dask scheduler {local.scheduler_address}: no dashboard" in err
        else:
            assert f"dask dashboard ({local.scheduler_address}): {link}" in err
