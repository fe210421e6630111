"""The streaming engine: chunks of many scenes through a model with one context state per scene,
and training over such streams."""

from xtstream.engine.state import DEFAULT_MAX_OPEN, SceneStates
from xtstream.engine.stream import select_state, stack_states, stream_groups
from xtstream.engine.train import train_chunks

__all__ = ["DEFAULT_MAX_OPEN", "SceneStates", "select_state", "stack_states", "stream_groups", "train_chunks"]
