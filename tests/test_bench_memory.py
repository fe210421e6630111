"""`xtstream bench memory`: peak memory vs image size, bare backbone vs xT (the paper's Fig. 6)."""

from __future__ import annotations

import json

import pytest

from xtstream.bench import memory
from xtstream.bench.memory import MemorySetup, measure, ratio


def test_both_children_run_and_the_xt_child_streams_chunks():
    setup = MemorySetup(region=64, chunk=2, dim=32, heads=2, depth=1, bands=1)
    xt = memory.child("xt", 192, setup)  # 3 x 3 regions in chunks of 2: 5 chunks, a backward each
    backbone = memory.child("backbone", 192, setup)
    assert xt["status"] == backbone["status"] == "ok"
    assert xt["chunks"] == 5 and backbone["chunks"] == 1


def test_measure_records_ooms_stops_the_backbone_after_one_and_takes_ratios_over_1024(monkeypatch, tmp_path):
    calls = []

    def fake(kind, size, setup, cap, reserve):
        calls.append((kind, size))
        if kind == "backbone" and size >= 4096:
            return {"status": "oom", "reason": "RSS over the cap", "peak_rss_mib": 16000.0}
        peak = 1000.0 + (size / 1024) ** 2 * 300 if kind == "backbone" else 1000.0 + size / 1024
        return {"status": "ok", "seconds": 1.0, "chunks": 1, "model_rss_mib": 900.0, "peak_rss_mib": peak}

    monkeypatch.setattr(memory, "run_child", fake)
    results = measure([1024, 2048, 4096, 8192], MemorySetup(), progress=None)
    assert ("backbone", 8192) not in calls  # a smaller side already ran out
    assert results["runs"]["backbone"]["8192"]["status"] == "oom"
    assert results["xt_mem_ratio"] == round(1008.0 / 1001.0, 3) and results["xt_ratio_top_size"] == 8192
    assert results["backbone_mem_ratio"] == round(2200.0 / 1300.0, 3) and results["backbone_ratio_top_size"] == 2048
    assert results["xt_mem_ratio_above_model"] == round(108.0 / 101.0, 3)
    doc, png = memory.write(results, tmp_path)
    assert json.loads(doc.read_text())["peak_mib"]["backbone"]["4096"] is None
    assert png.stat().st_size > 1000


def test_ratio_needs_the_base_side():
    assert ratio({512: {"status": "ok", "peak_rss_mib": 1.0}}, cuda=False) == (None, None)


def test_cli_wants_1024_among_the_sizes():
    from xtstream.cli import main

    with pytest.raises(SystemExit, match="must include 1024"):
        main(["bench", "memory", "--sizes", "512", "2048"])
