"""Package layout that pyproject.toml cannot say: the top-level ``data_specs/`` (the source of
truth for dataset specs) ships inside the package as ``xtstream.data_specs``, so that
``load_spec("xview3")`` works from a wheel, outside any checkout."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["xtstream", "xtstream.*"]) + ["xtstream.data_specs"],
    package_dir={"xtstream.data_specs": "data_specs"},
    package_data={"xtstream.data_specs": ["*.yaml"]},
)
