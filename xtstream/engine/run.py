"""``xtstream.train(config)`` / ``xtstream train --config CONFIG.yaml``: a whole training run.

The run directory (``out``) holds ``config.yaml`` (the run's config: a rerun with the same config
resumes, another config is refused unless ``overwrite``), ``checkpoints/last.pt`` (resumable,
written atomically every ``checkpoint.every`` steps, at each epoch's end and at the end),
``model.pt`` (the final weights: ``xtstream.load_model``), ``best.pt`` (with validation),
``log.jsonl`` and ``loss.png`` (:mod:`xtstream.engine.log`). One run per directory: rank 0 holds
its lock (:mod:`xtstream._runtime.lock`); a full disk is one :class:`~xtstream.errors.OutputError`
and the last checkpoint stays whole (checkpoints are written atomically).

Exact resume: a checkpoint holds the weights, optimiser, scheduler, every random state, the data
position (epoch, chunks done this epoch) and the context states of the scenes open at that step.
Resuming rebuilds the epoch's DataLoader (same seed, same order), reads past the chunks already
trained without training on them, and goes on: on the CPU the weights are bitwise those of a run
never interrupted (a test kills a run with SIGKILL to hold this).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import yaml

from xtstream._runtime.atomic import replacing
from xtstream._runtime.lock import holds_only_lock, output_lock
from xtstream._runtime.oserrors import writing
from xtstream.engine.checkpoint import read_training, rank_state, restore_rank_state, save_training
from xtstream.engine.config import TrainConfig, load_train_config, parse_train_config
from xtstream.engine.data import build_dataset, make_loader, steps_per_epoch
from xtstream.engine.distributed import agree, barrier, broadcast_parameters, gather, init_distributed, sync_gradients
from xtstream.engine.log import RunLog
from xtstream.engine.optim import build_optimizer, build_scheduler
from xtstream.engine.policy import Accumulated, accumulate
from xtstream.engine.state import SceneStates
from xtstream.errors import ModelConfigError, TrainConfigError, TrainingError

#: what a run directory holds; ``overwrite`` deletes these and nothing else
RUN_FILES = ("config.yaml", "log.jsonl", "loss.png", "model.pt", "best.pt", "checkpoints")

#: ``validator(model, step) -> {score: value}`` (or ``None``): scores the held-out scenes
Validator = Callable[[Any, int], "dict[str, float] | None"]


def train(config: "TrainConfig | str | Path | dict", overrides: Sequence[str] = (), *, overwrite: bool = False,
          validator: Validator | None = None, on_step: Callable[[dict], None] | None = None,
          progress: bool = False) -> dict[str, Any]:
    """Run (or resume) the training ``config`` describes (a :class:`TrainConfig`, a YAML path or a
    mapping; ``overrides``: ``"section.key=value"``). ``validator``: scores held-out scenes every
    ``validation.every`` steps; ``on_step(record)``: called after every step on every rank.

    Returns ``{out, steps, epochs, loss, checkpoint, model}`` (``loss``: the mean of the last
    steps' losses).

    >>> xtstream.train("pipelines/xview3.yaml", ["optimiser.lr=3e-4"])   # doctest: +SKIP
    """
    cfg = load_train_config(config, overrides)
    return Trainer(cfg, overwrite=overwrite, validator=validator, on_step=on_step, progress=progress).run()


class Trainer:
    """One run of a :class:`TrainConfig` (see the module doc); :meth:`run` does it all."""

    def __init__(self, config: TrainConfig, *, overwrite: bool = False, validator: Validator | None = None,
                 on_step: Callable[[dict], None] | None = None, progress: bool = False) -> None:
        self.config = config
        self.overwrite, self.validator, self.on_step, self.progress = overwrite, validator, on_step, progress
        self.out = Path(config.out)
        self.last_path = self.out / "checkpoints" / "last.pt"
        self.log = RunLog(self.out / "log.jsonl")
        self.best: float | None = None
        self.saved_step: int | None = None

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg = self.config
        if cfg.runtime.threads:
            torch.set_num_threads(cfg.runtime.threads)
        device = _device(cfg.runtime.device, cfg.source)
        if device.type == "cuda":
            torch.cuda.set_device(device)  # before NCCL starts: each rank on its own GPU
        d = init_distributed(device.type == "cuda")
        self.dist, self.device = d, device
        # one run per directory: rank 0 holds its lock (the other ranks write nothing there)
        lock = output_lock(self.out, "training run directory", error=TrainConfigError) if d.main else contextlib.nullcontext()
        with lock, writing(self.out):
            return self._run()

    def _run(self) -> dict[str, Any]:
        """:meth:`run` once the device is set and the run directory locked."""
        cfg, d, device = self.config, self.dist, self.device
        resume = agree(self._prepare_dir() if d.main else None, d)
        barrier(d)

        _seed_everything(cfg.seed)
        model = self._build_model().to(device)
        from xtstream.tasks import get_task, task_for_head

        task = get_task(cfg.task, **cfg.task_options) if cfg.task else task_for_head(model.config.head)
        if task.head != model.config.head:
            raise TrainConfigError(f"{cfg.source}: task {task.name!r} trains head {task.head!r}, but the "
                                   f"model has head {model.config.head!r}")
        if cfg.validation.every and self.validator is None and not cfg.validation.labels:
            raise TrainConfigError(f"{cfg.source}: validation: every={cfg.validation.every} but no 'labels' "
                                   "to score the held-out scenes against")
        chunk = model.config.chunk
        dataset, sizes = build_dataset(cfg.data, region=model.config.region, chunk=chunk, task=task,
                                       seed=cfg.seed, source=cfg.source, passes=model.config.passes)
        per_epoch = [steps_per_epoch(sizes, e, chunk=chunk, policy=cfg.step.policy,
                                     scenes_per_step=cfg.step.scenes_per_step, workers=cfg.data.workers,
                                     bptt_chunks=cfg.step.bptt_chunks, passes=model.config.passes,
                                     world=d.world, shuffle=cfg.data.shuffle, seed=cfg.seed)
                     for e in range(cfg.epochs)]
        if not sum(per_epoch):
            raise TrainConfigError(f"{cfg.source}: data: {len(sizes)} scene(s) give no training step "
                                   f"over {d.world} rank(s) (every rank needs a scene)")
        total = cfg.schedule.total_steps or sum(per_epoch)
        optimizer = build_optimizer(model, cfg.optimiser)
        scheduler = build_scheduler(optimizer, cfg.schedule, cfg.optimiser.lr, total)
        generator = torch.Generator().manual_seed(cfg.seed + 7919 * d.rank)  # grad_ratio draws
        position = {"epoch": 0, "chunks_done": 0, "step": 0, "complete": False}
        open_scenes: list[dict] = []
        if resume:
            position, open_scenes = self._resume(model, optimizer, scheduler, generator)
            if d.main:
                self.log.truncate_after(position["step"])
        broadcast_parameters(model, d)
        autocast = self._runtime(model, device)
        if d.main:
            self.log.write({"kind": "resume" if resume else "start", "step": position["step"],
                            "epoch": position["epoch"], "steps_planned": total, "world": d.world,
                            "device": str(device), "time": time.time()})
        if position["complete"]:
            if d.main and not (self.out / "model.pt").is_file():
                # killed after the last checkpoint, before the final model: its weights are those
                self.log.plot(self.out / "loss.png")
                self._finish(position, model)
            return self._summary(position, model)

        self.model, self.task, self.dataset, self.autocast = model, task, dataset, autocast
        self.optimizer, self.scheduler, self.generator = optimizer, scheduler, generator
        self.params = [p for p in model.parameters() if p.requires_grad]
        bar = self._bar(total, position["step"])
        try:
            for epoch in range(position["epoch"], cfg.epochs):
                position = self._epoch(epoch, position, open_scenes, bar)
                open_scenes = []  # only a resumed epoch starts with scenes open
                position = {"epoch": epoch + 1, "chunks_done": 0, "step": position["step"],
                            "complete": epoch + 1 == cfg.epochs}
                self._save(position, SceneStates())
                if d.main:
                    self.log.plot(self.out / "loss.png")
        finally:
            if bar is not None:
                bar.close()
        if d.main:
            self._finish(position, model)
        barrier(d)
        return self._summary(position, model)

    def _finish(self, position: dict, model: Any) -> None:
        """Rank 0, after the last checkpoint: the final model and the log's end record."""
        from xtstream.models.checkpoint import save_checkpoint

        save_checkpoint(model, self.out / "model.pt", step=position["step"], run=str(self.out))
        self.log.write({"kind": "end", "step": position["step"], "time": time.time()})

    def _epoch(self, epoch: int, position: dict, open_scenes: list[dict], bar: Any) -> dict:
        """Train ``epoch`` from ``position`` (its chunks done and the scenes then open); the position
        after its last step."""
        cfg, d = self.config, self.dist
        states = SceneStates()
        states.restore(open_scenes)
        loader = make_loader(self.dataset, cfg.data.workers, cfg.seed, epoch)
        items = iter(loader)
        for _ in range(position["chunks_done"]):  # trained before the checkpoint: read again, not trained
            next(items)
        steps = accumulate(self.model, items, policy=cfg.step.policy, scenes_per_step=cfg.step.scenes_per_step,
                           loss_fn=self.task.loss, device=self.device, grad_ratio=cfg.step.grad_ratio,
                           generator=self.generator, states=states, autocast=self.autocast,
                           bptt_chunks=cfg.step.bptt_chunks)
        try:
            while True:
                t0 = time.perf_counter()
                try:
                    acc = next(steps, None)
                except TrainingError as err:
                    raise self._stopped(err, position) from None
                ok, loss = sync_gradients(self.params, acc is not None, acc.loss if acc else 0.0, d)
                if not ok:  # some rank has no data left: the epoch ends for all (drop)
                    self.optimizer.zero_grad(set_to_none=True)
                    return position
                record = self._step(acc, loss, epoch, position)
                # the chunk count is what resuming needs; scene and chunk say where that was
                position = {"epoch": epoch, "chunks_done": position["chunks_done"] + acc.chunks,
                            "step": record["step"], "complete": False, "scene": record["scene"],
                            "chunk": record["chunk"]}
                record["seconds"] = round(time.perf_counter() - t0, 4)
                if d.main:
                    self.log.write(record)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4g}", lr=f"{record['lr']:.2e}")
                if record["step"] % cfg.checkpoint.every == 0:
                    self._save(position, states)
                self._maybe_validate(self.model, record["step"])
                if self.on_step is not None:
                    self.on_step(record)
        finally:
            steps.close()

    # -- validation hook -----------------------------------------------------------------------
    def validate(self, model: Any, step: int) -> dict[str, float] | None:
        """Score the held-out scenes (``validation.scenes``) at ``step``: the validator's scores
        (e.g. the xView3 aggregate and components, or top-1), or ``None`` when no validator was
        given — this module computes no metric itself; the prediction side provides it. Runs on
        rank 0, in eval mode without gradients, with the random state put back after (so
        validating never changes what training does)."""
        validator = self.validator or self._predict_validator()
        if validator is None:
            return None
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                return validator(model, step)
        finally:
            model.train(was_training)

    def _predict_validator(self) -> Validator | None:
        """The default: stream-predict ``validation.scenes`` into ``OUT/validation/`` (replaced each
        time) and score them against ``validation.labels`` with the task's metric."""
        v = self.config.validation
        if not v.scenes or not v.labels:
            return None
        from xtstream.engine.predict import predict

        def validate(model: Any, step: int) -> dict[str, float]:
            result = predict(model, list(v.scenes), self.out / "validation", task=self.task, device=self.device,
                             overwrite=True, progress=False, split_ranks=False, **v.options)
            scores = self.task.score(result.csv, v.labels, scene_ids=result.scenes)
            return {k: float(x) for k, x in scores.items() if isinstance(x, (int, float)) and not isinstance(x, bool)}

        return validate

    def _maybe_validate(self, model: Any, step: int) -> None:
        every = self.config.validation.every
        if not every or step % every or not self.dist.main:
            return
        scores = self.validate(model, step)
        if scores is None:
            return
        self.log.write({"kind": "validation", "step": step, **scores})
        metric = self.config.validation.metric or getattr(self.task, "primary_metric", None)
        value = scores.get(metric) if metric else None
        if value is not None and (self.best is None or value > self.best):
            from xtstream.models.checkpoint import save_checkpoint

            self.best = float(value)
            save_checkpoint(model, self.out / "best.pt", step=step, validation=dict(scores))

    # -- pieces --------------------------------------------------------------------------------
    def _step(self, acc: Accumulated, loss: float, epoch: int, position: dict) -> dict[str, Any]:
        """Clip, check, step; the step's record."""
        params, optimizer = self.params, self.optimizer
        grads = [p.grad for p in params if p.grad is not None]
        clip = self.config.optimiser.clip_grad_norm
        if clip is not None:
            norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        else:
            norm = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
        if not math.isfinite(norm):
            c = acc.last
            raise self._stopped(TrainingError(
                f"scene {c.scene_id!r}, chunk of regions {c.start}..{c.stop - 1}: the gradient norm is "
                f"{norm} (not finite); the step was not taken"), position)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        self.scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        c = acc.last
        return {"kind": "step", "step": position["step"] + 1, "epoch": epoch, "loss": loss, "parts": acc.parts,
                "lr": lr, "grad_norm": norm, "scene": c.scene_id, "chunk": [c.start, c.stop - 1],
                "scenes": acc.scenes, "chunks": acc.chunks, "lost_regions": acc.lost_regions}

    def _save(self, position: dict, states: SceneStates) -> None:
        # every rank read its own scenes: its chunks done travel with its random and scene states
        ranks = gather({**rank_state(states.export(), self.generator), "chunks_done": position["chunks_done"]},
                       self.dist)
        if self.dist.main:
            save_training(self.last_path, self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                          position=position, config=self.config.to_dict(), ranks=ranks)
            self.log.write({"kind": "checkpoint", "step": position["step"], "epoch": position["epoch"],
                            "chunks_done": position["chunks_done"], "path": str(self.last_path)})
        self.saved_step = position["step"]
        barrier(self.dist)

    def _resume(self, model: Any, optimizer: Any, scheduler: Any, generator: torch.Generator
                ) -> tuple[dict, list[dict]]:
        payload = read_training(self.last_path)
        diff = payload["config"].differences(model.config)
        if diff:
            lines = "; ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in diff.items())
            raise ModelConfigError(f"{self.last_path}: saved from another model: {lines}")
        model.load_state_dict(payload["state_dict"])
        train = payload["train"]
        optimizer.load_state_dict(train["optimizer"])
        scheduler.load_state_dict(train["scheduler"])
        ranks = train["ranks"]
        if len(ranks) != self.dist.world:
            raise TrainingError(f"{self.last_path}: written by {len(ranks)} rank(s), this run has "
                                f"{self.dist.world}: resume with the same number of processes")
        mine = ranks[self.dist.rank]
        states = restore_rank_state(mine, generator, self.device)
        self.saved_step = train["position"]["step"]
        return {**train["position"], "chunks_done": mine["chunks_done"]}, states

    def _prepare_dir(self) -> bool:
        """Rank 0: make or check the run directory; True when there is a checkpoint to resume."""
        out, cfg = self.out, self.config
        saved = out / "config.yaml"
        if saved.is_file():
            try:
                old = parse_train_config(yaml.safe_load(saved.read_text()), str(saved))
                diff = old.differences(cfg)
            except (TrainConfigError, yaml.YAMLError) as err:
                diff = {"config.yaml": (f"unreadable ({err})", "this config")}
            if self.overwrite:
                self._clear()
            elif diff:
                lines = "; ".join(f"{k}: {a!r} there, {b!r} here" for k, (a, b) in list(diff.items())[:8])
                raise TrainConfigError(f"{out} holds another run ({lines}): a run resumes only with the same "
                                       "config; pass --overwrite (overwrite=True) to start over there, or choose "
                                       "another out")
            elif self.last_path.is_file():
                return True
        elif out.exists() and not holds_only_lock(out):
            raise TrainConfigError(f"{out} is not empty and holds no xtstream run (no config.yaml): choose a "
                                   "new or empty directory for out; nothing was changed there")
        out.mkdir(parents=True, exist_ok=True)
        (out / "checkpoints").mkdir(exist_ok=True)
        self.log.path.unlink(missing_ok=True)
        with replacing(saved) as tmp:
            tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return False

    def _clear(self) -> None:
        for name in RUN_FILES:
            path = self.out / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    def _build_model(self) -> Any:
        from xtstream.models import create_model, load_checkpoint

        m = self.config.model
        try:
            model = create_model(m.name, **m.options)
        except (TypeError, RuntimeError) as err:
            raise TrainConfigError(f"{self.config.source}: model: cannot build {m.name!r} with options "
                                   f"{m.options}: {err}") from err
        if m.init is not None:
            load_checkpoint(model, m.init)  # another architecture: an error naming the differences
        return model

    def _runtime(self, model: Any, device: torch.device) -> Callable[[], Any]:
        """bf16 autocast and channels-last (CUDA only), torch.compile; the autocast factory."""
        rt, src = self.config.runtime, self.config.source
        cuda = device.type == "cuda"
        for key in ("amp", "channels_last"):
            if getattr(rt, key) is True and not cuda:
                raise TrainConfigError(f"{src}: runtime.{key}: true needs a CUDA device (the device is {device}); "
                                       "use auto")
        if (rt.channels_last == "auto" and cuda) or rt.channels_last is True:
            model.to(memory_format=torch.channels_last)
        if rt.compile:
            model.encoder.compile()  # in place: parameter names (and checkpoints) stay the same
        if (rt.amp == "auto" and cuda) or rt.amp is True:
            return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext

    def _stopped(self, err: TrainingError, position: dict) -> TrainingError:
        last = (f"the last good checkpoint is {self.last_path} (step {self.saved_step})"
                if self.saved_step is not None else "no checkpoint was written yet")
        msg = f"training stopped at epoch {position['epoch']}, after step {position['step']}: {err}; {last}"
        if self.dist.main:
            self.log.write({"kind": "error", "step": position["step"], "error": msg})
        return TrainingError(msg)

    def _bar(self, total: int, done: int) -> Any:
        if not (self.progress and self.dist.main):
            return None
        from tqdm import tqdm

        return tqdm(total=total, initial=done, desc="train", unit="step", file=sys.stderr)

    def _summary(self, position: dict, model: Any) -> dict[str, Any]:
        losses = [r["loss"] for r in self.log.records("step")][-20:] if self.dist.main else []
        return {"out": str(self.out), "steps": position["step"], "epochs": position["epoch"],
                "loss": sum(losses) / len(losses) if losses else None, "checkpoint": str(self.last_path),
                "model": str(self.out / "model.pt")}


def _device(name: str, source: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainConfigError(f"{source}: runtime.device: {name!r}, but this machine has no CUDA device")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
