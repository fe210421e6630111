"""The top-level namespace: every advertised name resolves; data-side tools do not pay for torch."""

import subprocess
import sys

import xtstream


def test_every_public_name_resolves():
    for name in xtstream._LAZY:
        assert getattr(xtstream, name) is not None, name
    assert set(xtstream._LAZY) <= set(dir(xtstream))


def test_data_side_import_does_not_load_torch():
    code = ("import sys, xtstream; from xtstream import RegionGrid, open_store, ingest, read_scenes;"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
