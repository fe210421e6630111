"""``local:N`` workers forked from a server started while the caller plans (xtstream._runtime.fork_server)."""

import json
import subprocess
import sys
import textwrap

import pytest

from xtstream._runtime import cluster, fork_server

pytestmark = pytest.mark.skipif(not fork_server.available(), reason="no fork server on this platform")

# in a fresh interpreter: the fork server is one per process, and the suite's other tests
# change the environment it would be compared with
SCRIPT = textwrap.dedent("""
    import json, os, sys
    from xtstream._runtime import cluster, fork_server

    def workers(scheduler="local:2"):
        with cluster.dask_client(scheduler, preload=["xtstream.data.tile_writer"]) as client:
            return list(client.run(lambda: (os.getppid(), os.environ.get("GLIBC_TUNABLES"),
                                            os.environ.get("XT_TEST_VAR"),
                                            "xtstream.data.tile_writer" in sys.modules)).values())

    if __name__ == "__main__":
        os.environ.pop("GLIBC_TUNABLES", None)
        early = cluster.prestart("local:2", ["xtstream.data.tile_writer"])
        forked = workers()
        os.environ["XT_TEST_VAR"] = "changed"  # the server did not start with it
        changed = workers("local:1")
        print(json.dumps({"early": early, "main": os.getpid(), "server": fork_server._started[0],
                          "forked": forked, "changed": changed}))
""")


def test_local_workers_are_forked_from_a_server_with_their_environment(tmp_path):
    """Each spawned worker imported distributed, xarray, zarr and rasterio before it was up (1.1 s
    for two here, 0.3 s more to close them); forked from the server, it has them already."""
    script = tmp_path / "fork_check.py"
    script.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["early"] is True
    assert seen["server"] != seen["main"]
    # forked from the server, with the environment a spawned worker gets, the preload imported
    assert seen["forked"] == [[seen["server"], "glibc.malloc.hugetlb=1", None, True]] * 2
    # once the environment differs from the server's, workers are spawned again and see it
    assert seen["changed"] == [[seen["main"], "glibc.malloc.hugetlb=1", "changed", True]]


@pytest.mark.parametrize("scheduler", [None, "threads", "sync", "tcp://127.0.0.1:1"])
def test_only_a_local_cluster_starts_a_fork_server(scheduler, monkeypatch):
    monkeypatch.setattr(fork_server, "start", lambda *a, **k: pytest.fail("fork server started"))
    assert cluster.prestart(scheduler) is False


def test_a_chosen_start_method_is_kept(monkeypatch):
    """Whoever set dask's ``distributed.worker.multiprocessing-method`` chose how workers start."""
    import dask

    monkeypatch.setattr(fork_server, "start", lambda *a, **k: pytest.fail("fork server started"))
    with dask.config.set({"distributed.worker.multiprocessing-method": "fork"}):
        assert cluster.prestart("local:2") is False


def test_an_ingest_starts_the_server_before_it_plans(tmp_path, monkeypatch):
    """The server's imports (~1 s) overlap the planning instead of following it."""
    import numpy as np

    from xtstream.data import ingest as ingest_mod
    from xtstream.data.sources import ArraySource

    calls = []
    monkeypatch.setattr(ingest_mod, "prestart", lambda scheduler, preload=(): calls.append(("prestart", scheduler)))
    real_plan = ingest_mod.plan_ingest
    monkeypatch.setattr(ingest_mod, "plan_ingest", lambda *a, **k: (calls.append(("plan",)), real_plan(*a, **k))[1])
    src = ArraySource(np.arange(2 * 64 * 80, dtype="f4").reshape(2, 64, 80), scene_id="s")
    ingest_mod.ingest(src, tmp_path / "s.zarr", tile=32, scheduler="sync", progress=False)
    assert calls == [("prestart", "sync"), ("plan",)]
