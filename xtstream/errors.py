"""Exceptions. Every message names the file (or sample, or row) and the problem."""


class XTStreamError(Exception):
    """Base class of the errors xtstream raises on purpose."""


class SourceError(XTStreamError, ValueError):
    """A raster source is missing, unreadable, corrupt or inconsistent."""


class SpecError(XTStreamError, ValueError):
    """A dataset spec (YAML) is invalid."""


class StoreError(XTStreamError, ValueError):
    """A Zarr scene store is not one of ours, or cannot be written where asked."""


class IncompleteStoreError(StoreError):
    """A Zarr scene store exists but its ingest never finished."""


class ShardError(XTStreamError, ValueError):
    """A WebDataset shard or sample is corrupt, incomplete or from another grid."""


class LabelError(XTStreamError, ValueError):
    """A labels CSV is missing columns or holds objects outside its scene."""


class ModelConfigError(XTStreamError, ValueError):
    """Parts of a model (backbone, region size, context encoder, checkpoint) do not fit together."""


class StreamOrderError(XTStreamError, ValueError):
    """Chunks of a scene arrived out of order, with a gap, or too many scenes are open at once."""


class TaskError(XTStreamError, ValueError):
    """An unknown task name, a task registered twice, or a head no task trains."""


class TrainConfigError(XTStreamError, ValueError):
    """A training config is invalid (unknown key, wrong type, bad value), or a run directory holds
    another run (or something that is not a run)."""


class TrainingError(XTStreamError, RuntimeError):
    """Training cannot go on: a non-finite loss or gradient, or a checkpoint that cannot resume."""
