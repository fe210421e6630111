"""Training runs as users run them: the loss falls, a killed run resumes bitwise, DDP over gloo equals
one process, a NaN stops cleanly, a foreign checkpoint or run directory is refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import xtstream
from xtstream.errors import ModelConfigError, TrainConfigError, TrainingError

REPO = Path(__file__).resolve().parents[1]
#: scene id -> (height, width): 32-px regions, so 2x3 .. 3x4 regions, 3 .. 6 chunks of 2
SCENES = {"s0": (64, 96), "s1": (90, 100), "s2": (64, 64), "s3": (70, 128), "s4": (64, 90), "s5": (96, 70)}
TINY = {"region": 32, "chunk": 2, "context": "xl", "dim": 32, "depth": 1, "heads": 2, "head": "classification",
        "num_classes": 2, "in_chans": 2, "depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64]}


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> Path:
    """Six small two-band scene stores, class 1 brighter than class 0, and their labels CSV."""
    from xtstream.data.ingest import ingest
    from xtstream.data.sources import ArraySource

    root = tmp_path_factory.mktemp("train_stores")
    rng = np.random.default_rng(0)
    rows = ["scene_id,label"]
    for k, (sid, (h, w)) in enumerate(SCENES.items()):
        label = k % 2
        image = rng.standard_normal((2, h, w)).astype("f4") + (1.0 if label else -1.0)
        ingest(ArraySource(image, scene_id=sid), root / f"{sid}.zarr", tile=32, progress=False)
        rows.append(f"{sid},{label}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def config(stores: Path, out: Path, **sections) -> dict:
    """A tiny classification run over ``stores``; ``sections`` update the config's sections."""
    cfg = {"out": str(out), "task": "classification", "seed": 3, "epochs": 1,
           "model": {"name": "convnext_atto", "options": dict(TINY)},
           "data": {"stores": [str(stores / "*.zarr")], "labels": str(stores / "labels.csv"), "workers": 0,
                    "shuffle": True},
           "optimiser": {"lr": 3e-3}, "schedule": {"warmup_steps": 2}, "checkpoint": {"every": 4},
           "runtime": {"threads": 1}}
    for key, value in sections.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
    return cfg


@pytest.fixture(autouse=True)
def _keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return xtstream.load_model(path).state_dict()


def steps(out: Path) -> list[dict]:
    from xtstream.engine.log import RunLog

    return RunLog(out / "log.jsonl").records("step")


def test_loss_falls_tenfold_on_a_tiny_generated_set(stores, tmp_path):
    out = tmp_path / "run"
    summary = xtstream.train(config(stores, out, epochs=2))
    losses = [r["loss"] for r in steps(out)]
    assert summary["steps"] == len(losses) == 2 * sum(-(-(-(-h // 32) * -(-w // 32)) // 2)
                                                      for h, w in SCENES.values())
    first, last = np.mean(losses[:6]), np.mean(losses[-6:])
    assert last < first / 10, (first, last)
    assert (out / "loss.png").stat().st_size > 0 and (out / "config.yaml").is_file()
    record = steps(out)[0]
    assert {"loss", "parts", "lr", "scene", "chunk", "grad_norm"} <= set(record)
    assert record["lr"] == pytest.approx(3e-3 / 2)  # warm-up: step 1 of 2
    model = xtstream.load_model(out / "model.pt")  # what predict loads
    assert model.config.head == "classification"


#: the run kills its whole process group (itself and its DataLoader workers, as a job scheduler
#: or the OOM killer ending the job would) right after step ``argv[2]``
KILL = """
import os, signal, sys
import xtstream
def kill(record):
    if record["step"] == int(sys.argv[2]):
        os.killpg(0, signal.SIGKILL)
xtstream.train(sys.argv[1], on_step=kill)
"""


def run_killed(args: list[str], env: dict) -> subprocess.CompletedProcess:
    """Run ``python args`` as the leader of a new process group; the group is killed on timeout."""
    proc = subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
@pytest.mark.parametrize("policy,order", [("per_chunk", "row_major"), ("per_chunk", "two_pass"),
                                          pytest.param("per_scene", "row_major", marks=pytest.mark.slow)])
def test_a_run_killed_with_sigkill_resumes_to_bitwise_identical_weights(stores, tmp_path, policy, order):
    """Two DataLoader workers interleave scenes, so the checkpoint falls mid-scene with open
    context states; the kill comes after a step that is not checkpointed (it is trained again).
    Read in two passes, the checkpoint also holds which scenes have their first pass behind them."""
    import yaml

    every, kill_at = (4, 7) if policy == "per_chunk" else (2, 3)
    sections = dict(step={"policy": policy}, checkpoint={"every": every}, data={"workers": 2}, epochs=2,
                    model={"name": "convnext_atto", "options": {**TINY, "order": order}})
    whole = xtstream.train(config(stores, tmp_path / "whole", **sections))
    cfg_path = tmp_path / "cut.yaml"
    cfg_path.write_text(yaml.safe_dump(config(stores, tmp_path / "cut", **sections)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = run_killed(["-c", KILL, str(cfg_path), str(kill_at)], env)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert [r["step"] for r in steps(tmp_path / "cut")] == list(range(1, kill_at + 1))
    saved = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)["train"]
    assert saved["position"]["step"] == every
    if policy == "per_chunk":
        assert saved["ranks"][0]["states"], "the checkpoint should fall mid-scene"
    resumed = xtstream.train(cfg_path)
    assert resumed["steps"] == whole["steps"]
    a, b = weights(tmp_path / "whole" / "model.pt"), weights(tmp_path / "cut" / "model.pt")
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert [r["loss"] for r in steps(tmp_path / "cut")] == [r["loss"] for r in steps(tmp_path / "whole")]


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
def test_ddp_on_gloo_with_two_processes_equals_one_process_with_the_same_effective_batch(stores, tmp_path):
    """torchrun, 2 CPU ranks, ``per_scene`` one scene per rank per step: rank r reads scenes r, r+2,
    r+4, so step k averages scenes 2k and 2k+1 — what one process stepping per 2 scenes does. The
    ranks' sums meet in another order than one process's: weights agree to 1e-5 (absolute, on
    weights of order 0.1-1) after 3 AdamW steps, not bitwise."""
    import yaml

    common = dict(data={"shuffle": False}, optimiser={"lr": 1e-2, "clip_grad_norm": None}, schedule={"warmup_steps": 0})
    cfg = config(stores, tmp_path / "ddp", step={"policy": "per_scene", "scenes_per_step": 1}, **common)
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "xtstream", "train", "--config", str(cfg_path), "--quiet"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = xtstream.train(config(stores, tmp_path / "one", step={"policy": "per_scene", "scenes_per_step": 2},
                                **common))
    ddp_steps = steps(tmp_path / "ddp")
    assert len(ddp_steps) == one["steps"] == len(SCENES) // 2
    assert [r["loss"] for r in ddp_steps] == pytest.approx([r["loss"] for r in steps(tmp_path / "one")], rel=1e-5)
    a, b = weights(tmp_path / "ddp" / "model.pt"), weights(tmp_path / "one" / "model.pt")
    start = xtstream.create_model("convnext_atto", **TINY).state_dict()
    moved = 0
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-5, msg=name)
        moved += not torch.equal(a[name], start[name])
    assert moved > len(a) // 2  # the steps did change the weights


def test_a_two_pass_run_steps_once_per_scored_chunk_and_reads_each_scene_twice(stores, tmp_path):
    """order="two_pass": the first pass fills the context state without a step; the steps, their
    scenes and chunks are those of a one-pass run, and every chunk read is counted for resuming."""
    one = xtstream.train(config(stores, tmp_path / "one"))
    two = xtstream.train(config(stores, tmp_path / "two",
                                model={"name": "convnext_atto", "options": {**TINY, "order": "two_pass"}}))
    assert two["steps"] == one["steps"] == sum(-(-(-(-h // 32) * -(-w // 32)) // 2) for h, w in SCENES.values())
    a, b = steps(tmp_path / "one"), steps(tmp_path / "two")
    assert [(r["scene"], r["chunk"]) for r in a] == [(r["scene"], r["chunk"]) for r in b]
    assert all(np.isfinite(r["loss"]) for r in b)
    saved = torch.load(tmp_path / "two" / "checkpoints" / "last.pt", weights_only=True)["train"]
    assert saved["position"]["complete"]
    model = xtstream.load_model(tmp_path / "two" / "model.pt")
    assert model.config.order == "two_pass"  # prediction reads as training did


def test_a_non_finite_loss_stops_naming_scene_and_chunk_and_keeps_the_last_checkpoint(stores, tmp_path, monkeypatch):
    from xtstream.tasks.classification.task import ClassificationTask

    real = ClassificationTask.loss

    def poisoned(self, chunk):
        loss, parts = real(self, chunk)
        return (loss * float("nan"), parts) if chunk.scene_id == "s3" and chunk.start == 2 else (loss, parts)

    monkeypatch.setattr(ClassificationTask, "loss", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(TrainingError, match=r"scene 's3', chunk of regions 2\.\.3: the loss is nan.*"
                                            r"last good checkpoint is .*last\.pt \(step (\d+)\)") as err:
        xtstream.train(config(stores, out, data={"shuffle": False}, checkpoint={"every": 3}))
    import re

    named = int(re.search(r"last\.pt \(step (\d+)\)", str(err.value)).group(1))
    saved = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert saved["train"]["position"]["step"] == named and named > 0 and named % 3 == 0
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values() if t.is_floating_point())
    assert steps(out)[-1]["scene"] == "s3" and steps(out)[-1]["chunk"] == [0, 1]  # the step before
    assert not (out / "model.pt").exists()


def test_a_checkpoint_of_another_architecture_is_refused(stores, tmp_path):
    other = xtstream.create_model("convnext_atto", **{**TINY, "dim": 16})
    path = xtstream.save_checkpoint(other, tmp_path / "other.pt")
    with pytest.raises(ModelConfigError, match=r"another config: dim: checkpoint 16 vs model 32"):
        xtstream.train(config(stores, tmp_path / "run", model={"init": str(path)}))


def test_a_run_directory_of_another_run_is_refused_and_overwrite_starts_over(stores, tmp_path):
    out = tmp_path / "run"
    xtstream.train(config(stores, out))
    first = steps(out)
    again = xtstream.train(config(stores, out))
    assert again["steps"] == len(first) and steps(out) == first  # complete: nothing trained twice
    with pytest.raises(TrainConfigError, match=r"holds another run \(optimiser\.lr: 0\.003 there, 0\.001 here\).*"
                                               r"--overwrite"):
        xtstream.train(config(stores, out, optimiser={"lr": 1e-3}))
    xtstream.train(config(stores, out, optimiser={"lr": 1e-3}), overwrite=True)
    assert steps(out)[0]["lr"] == pytest.approx(1e-3 / 2)
    with pytest.raises(TrainConfigError, match=r"not empty and holds no xtstream run"):
        xtstream.train(config(stores, stores), overwrite=True)
    assert (stores / "labels.csv").is_file()  # nothing deleted


@pytest.fixture(scope="module")
def xview3_shards(tmp_path_factory) -> Path:
    """Labelled xView3 shards of two small synthetic scenes, 64-px regions of VV, VH."""
    from xtstream.data.ingest import ingest
    from xtstream.data.shards import shard_stores
    from xtstream.tasks.xview3.synth import synth_scene

    root = tmp_path_factory.mktemp("xview3")
    stores = []
    for k, (h, w) in enumerate([(200, 260), (150, 190)]):
        scene = synth_scene(root / f"scene_{k}", h, w, seed=k, progress=False)
        stores.append((ingest(scene.directory, root / f"scene_{k}.zarr", spec="xview3", bands=["VV", "VH"],
                              tile=64, allow_small=True, progress=False), scene.labels))
    labels = root / "labels.csv"
    lines = [stores[0][1].read_text().splitlines()[0]]
    for _, path in stores:
        lines += path.read_text().splitlines()[1:]
    labels.write_text("\n".join(lines) + "\n")
    shard_stores([s for s, _ in stores], root / "shards", region=64, labels=labels, task="xview3", progress=False)
    return root / "shards"


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
@pytest.mark.parametrize("name", ["xview3", "classification"])
def test_the_shipped_pipeline_configs_train_as_written(name, stores, xview3_shards, tmp_path, capsys):
    """The pipelines' configs as shipped, only data paths, the model's size and the run's length
    overridden from the command line."""
    from xtstream.cli import main

    data = ([f"data.shards={xview3_shards}"] if name == "xview3" else
            [f"data.stores=[{stores}/*.zarr]", f"data.labels={stores / 'labels.csv'}",
             "model.name=convnext_atto", "model.options={region: 32, chunk: 2, context: xl, dim: 32, depth: 1, "
             "heads: 2, head: classification, num_classes: 2, in_chans: 2, depths: [1, 1, 1, 1], "
             "dims: [8, 16, 32, 64]}"])
    model = ["model.name=xt_test_convnext_xl", "model.options={}"] if name == "xview3" else []
    argv = ["train", "--config", str(REPO / "pipelines" / f"{name}.yaml"), "--quiet", f"out={tmp_path / 'run'}",
            "epochs=1", "data.workers=1", "schedule.warmup_steps=2", "checkpoint.every=5", *data, *model]
    assert main(argv) == 0, capsys.readouterr().err
    assert "steps over 1 epoch(s)" in capsys.readouterr().out
    records = steps(tmp_path / "run")
    assert records and all(np.isfinite(r["loss"]) for r in records)
    if name == "xview3":
        assert {"vessel", "centre"} <= set(records[0]["parts"])


def test_the_validation_hook_logs_scores_keeps_the_best_and_changes_nothing_else(stores, tmp_path):
    """The prediction side fills ``validator(model, step)``; here a stand-in returns fixed scores."""
    plain = xtstream.train(config(stores, tmp_path / "plain"))
    seen = []

    def validator(model, step):
        seen.append((step, model.training))
        torch.rand(3)  # a validator drawing random numbers must not change training
        return {"top1": {4: 0.5, 8: 0.9, 12: 0.7}.get(step, 0.1)}

    cfg = config(stores, tmp_path / "val", validation={"every": 4, "scenes": ["held_out.zarr"], "metric": "top1"})
    xtstream.train(cfg, validator=validator)
    assert [s for s, _ in seen] == list(range(4, plain["steps"] + 1, 4)) and not any(t for _, t in seen)
    from xtstream.engine.log import RunLog

    assert [(r["step"], r["top1"]) for r in RunLog(tmp_path / "val" / "log.jsonl").records("validation")][:3] == \
        [(4, 0.5), (8, 0.9), (12, 0.7)]
    assert torch.load(tmp_path / "val" / "best.pt", weights_only=True)["step"] == 8
    a, b = weights(tmp_path / "plain" / "model.pt"), weights(tmp_path / "val" / "model.pt")
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_validation_predicts_held_out_scenes_and_scores_them_with_the_task_metric(stores, tmp_path):
    """Without a validator given, ``validation.scenes`` are predicted (``xtstream.predict``) and
    scored against ``validation.labels`` by the task's metric; the best top-1 keeps ``best.pt``."""
    from xtstream.engine.log import RunLog

    held = [str(stores / "s0.zarr"), str(stores / "s1.zarr")]
    cfg = config(stores, tmp_path / "val", validation={"every": 4, "scenes": held, "labels": str(stores / "labels.csv"),
                                                         "options": {"top_k": 2}})
    xtstream.train(cfg)
    records = RunLog(tmp_path / "val" / "log.jsonl").records("validation")
    assert records and all({"top1", "top5", "scenes"} <= set(r) for r in records)
    assert all(r["scenes"] == 2 and r["top1"] in (0.0, 0.5, 1.0) for r in records)
    best = torch.load(tmp_path / "val" / "best.pt", weights_only=True)
    assert best["validation"]["top1"] == max(r["top1"] for r in records)
    assert (tmp_path / "val" / "validation" / "predictions.csv").is_file()
    with pytest.raises(TrainConfigError, match="no 'labels'"):
        xtstream.train(config(stores, tmp_path / "nolabels", validation={"every": 4, "scenes": held}))


def test_scenes_without_the_labels_the_task_needs_are_named(stores, tmp_path):
    from xtstream.errors import LabelError

    partial = tmp_path / "partial.csv"
    partial.write_text("scene_id,label\ns0,0\ns1,1\n")
    with pytest.raises(LabelError, match=r"partial\.csv: no label for scene\(s\) \['s2', 's3', 's4', 's5'\]"):
        xtstream.train(config(stores, tmp_path / "a", data={"labels": str(partial)}))
    unlabelled = config(stores, tmp_path / "b")
    del unlabelled["data"]["labels"]
    with pytest.raises(LabelError, match=r"scene 's\d', regions \[0, 1\]: no 'label' target"):
        xtstream.train(unlabelled)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
def test_a_killed_ddp_run_resumes_to_the_weights_of_an_uninterrupted_one(stores, tmp_path):
    """torchrun with 2 gloo ranks, one scene per rank per step: the ranks' scenes have different
    chunk counts, so each must resume from its own position in its own scenes."""
    import yaml

    script = tmp_path / "ddp_train.py"
    script.write_text(KILL)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    runs = {}
    for name, kill_at in (("whole", 0), ("cut", 3)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config(stores, tmp_path / name, step={"policy": "per_scene"},
                                              checkpoint={"every": 2}, epochs=2)))
        runs[name] = path
        proc = run_killed(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
                           str(path), str(kill_at)], env)
        # torchrun survives its workers killed (it runs them in their own process group) and fails
        assert proc.returncode == 0 if name == "whole" else "SIGKILL" in proc.stderr, proc.stderr[-3000:]
    saved = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)["train"]
    assert saved["position"]["step"] == 2 and len(saved["ranks"]) == 2
    assert saved["ranks"][0]["chunks_done"] != saved["ranks"][1]["chunks_done"]
    proc = run_killed(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "xtstream",
                       "train", "--config", str(runs["cut"]), "--quiet"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = weights(tmp_path / "whole" / "model.pt"), weights(tmp_path / "cut" / "model.pt")
    for name in a:
        assert torch.equal(a[name], b[name]), name
