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


def test_a_wheel_ships_the_dataset_specs(tmp_path):
    """A non-editable install (a wheel, unpacked outside the checkout) finds ``--spec xview3`` and
    reports its version; before, the specs lived only in the checkout's ``data_specs/``."""
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(root)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    wheel = next((tmp_path / "dist").glob("xtstream-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "xtstream/data_specs/xview3.yaml" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import xtstream, xtstream.data.specs as s; assert xtstream.__file__.startswith(%r), xtstream.__file__;"
            "assert str(s.shipped_specs()['xview3']).startswith(%r);"
            "print(s.load_spec('xview3').name, xtstream.__version__)" % (str(site), str(site)))
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {code}"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["xview3", xtstream.__version__]
