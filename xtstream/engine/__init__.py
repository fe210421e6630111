"""The streaming engine: chunks of many scenes through a model with one context state per scene,
training over such streams (step policies), and whole training runs (:func:`xtstream.train`, in
:mod:`xtstream.engine.run`: config, schedule, checkpoints and exact resume, DDP)."""

from xtstream.engine.state import DEFAULT_MAX_OPEN, SceneStates
from xtstream.engine.stream import select_state, stack_states, stream_groups
from xtstream.engine.train import train_chunks

__all__ = ["DEFAULT_MAX_OPEN", "SceneStates", "select_state", "stack_states", "stream_groups", "train_chunks"]
