"""Training configs: every key and type checked on load, errors naming the file and the place, a
"did you mean" for typos, key=value overrides, the shipped pipeline configs valid."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from xtstream.cli import main
from xtstream.engine.config import TrainConfig, load_train_config
from xtstream.errors import TrainConfigError

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
MINIMAL = {"out": "runs/x", "model": {"name": "xt_test_convnext_xl"}, "data": {"shards": "work/shards"}}


def write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def with_(section: str, **values) -> dict:
    doc = {k: dict(v) if isinstance(v, dict) else v for k, v in MINIMAL.items()}
    doc[section] = {**doc.get(section, {}), **values} if values else doc.get(section)
    return doc


@pytest.mark.parametrize("doc, message", [
    (with_("optimiser", lrr=1e-3), r"optimiser: unknown key 'lrr' \(did you mean 'lr'\?\)"),
    ({**MINIMAL, "epoch": 3}, r"config: unknown key 'epoch' \(did you mean 'epochs'\?\)"),
    ({**MINIMAL, "optimizer": {"lr": 1.0}}, r"config: unknown key 'optimizer' \(did you mean 'optimiser'\?\)"),
    (with_("step", polcy="per_scene"), r"step: unknown key 'polcy' \(did you mean 'policy'\?\)"),
    (with_("data", zzz=1), r"data: unknown key 'zzz' \(allowed: \['shards', 'stores'"),
])
def test_an_unknown_key_names_the_file_the_place_and_the_closest_key(tmp_path, doc, message):
    path = write(tmp_path, doc)
    with pytest.raises(TrainConfigError, match=re.escape(str(path)) + ": " + message):
        load_train_config(path)


@pytest.mark.parametrize("doc, message", [
    ({**MINIMAL, "epochs": "two"}, r"epochs: expected an integer, got 'two' \(str\)"),
    ({**MINIMAL, "epochs": 2.5}, r"epochs: expected an integer, got 2\.5"),
    (with_("optimiser", betas=0.9), r"optimiser\.betas: expected a list of a number, got 0\.9"),
    (with_("optimiser", lr="fast"), r"optimiser\.lr: expected a number, got 'fast'"),
    (with_("data", shuffle="yes please"), r"data\.shuffle: expected true/false"),
    (with_("step", policy="per_step"), r"step\.policy: expected one of \['per_chunk', 'per_scene'\], got 'per_step'"),
    (with_("runtime", amp="fp16"), r"runtime\.amp: expected true/false or 'auto', got 'fp16'"),
    ({**MINIMAL, "model": "xt_test_convnext_xl"}, r"model: expected a mapping, got str"),
    ({"out": "x", "data": {"shards": "s"}}, r"config: missing required key 'model'"),
    (with_("optimiser", lr=-1.0), r"optimiser\.lr: must be > 0"),
    (with_("optimiser", context_lr_scale=0), r"optimiser\.context_lr_scale: must be > 0"),
    (with_("step", scenes_per_step=0), r"step\.scenes_per_step: must be >= 1"),
    (with_("data", stores=["a.zarr"]), r"data: give exactly one of 'shards'"),
    (with_("validation", every=10), r"validation: every=10 but no held-out 'scenes'"),
])
def test_a_wrong_type_or_value_is_an_error_naming_the_key(tmp_path, doc, message):
    path = write(tmp_path, doc)
    with pytest.raises(TrainConfigError, match=re.escape(str(path)) + ": " + message):
        load_train_config(path)


def test_defaults_and_yaml_number_quirks():
    cfg = load_train_config({**MINIMAL, "optimiser": {"lr": "1e-3", "clip_grad_norm": None}})
    assert cfg.optimiser.lr == 1e-3  # YAML 1.1 reads 1e-3 (no dot) as a string
    assert cfg.optimiser.clip_grad_norm is None
    assert cfg.step.policy == "per_chunk" and cfg.epochs == 1 and cfg.runtime.amp == "auto"
    assert cfg.to_dict()["model"] == {"name": "xt_test_convnext_xl", "options": {}, "init": None}


def test_overrides_are_typed_and_checked(tmp_path):
    path = write(tmp_path, MINIMAL)
    cfg = load_train_config(path, ["optimiser.lr=3e-4", "epochs=2", "model.options.region=64",
                                   "data.workers=0", "runtime.amp=false", "step.policy=per_scene"])
    assert (cfg.optimiser.lr, cfg.epochs, cfg.model.options, cfg.data.workers, cfg.runtime.amp,
            cfg.step.policy) == (3e-4, 2, {"region": 64}, 0, False, "per_scene")
    with pytest.raises(TrainConfigError, match=r"override 'optimiser\.lrr=1'\): optimiser: unknown key 'lrr' "
                                               r"\(did you mean 'lr'\?\)"):
        load_train_config(path, ["optimiser.lrr=1"])
    with pytest.raises(TrainConfigError, match=r"override 'epochs'\): expected key=value"):
        load_train_config(path, ["epochs"])
    with pytest.raises(TrainConfigError, match=r"'epochs' is a value, not a section"):
        load_train_config(path, ["epochs.x=1"])
    with pytest.raises(TrainConfigError, match=r"epochs: expected an integer, got 'many'"):
        load_train_config(path, ["epochs=many"])


def test_two_configs_name_their_differences():
    a = load_train_config(MINIMAL)
    b = load_train_config(MINIMAL, ["optimiser.lr=0.1", "model.options.chunk=8"])
    assert a.differences(b) == {"model.options.chunk": (None, 8), "optimiser.lr": (1e-3, 0.1)}
    assert isinstance(a, TrainConfig) and a.differences(load_train_config(MINIMAL)) == {}


@pytest.mark.parametrize("name", ["xview3", "classification"])
def test_the_shipped_pipeline_configs_are_valid(name):
    cfg = load_train_config(PIPELINES / f"{name}.yaml")
    assert cfg.task == name and cfg.source.endswith(f"{name}.yaml")


def test_the_cli_reports_a_bad_config_key_and_exits_2(tmp_path, capsys):
    path = write(tmp_path, MINIMAL)
    assert main(["train", "--config", str(path), "schedule.warmup=10"]) == 2
    err = capsys.readouterr().err
    assert "xtstream train: error:" in err and "unknown key 'warmup' (did you mean 'warmup_steps'?)" in err
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: no such training config" in capsys.readouterr().err
