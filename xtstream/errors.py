"""Exceptions. Every message names the file (or sample, or row) and the problem.

Exit codes of the ``xtstream`` command (each error class carries its ``exit_code``):

====  ==========================================================================================
0     success
1     an unexpected failure: a bug (a traceback is printed; please report it)
2     bad input: arguments, a config, a spec, a source, a store, shards or labels (one line
      naming the file and the problem)
3     an output cannot be written: disk full, read-only file system, permission denied
      (:class:`OutputError`); rerun the same command once fixed, it resumes
4     the output is in use by another run (:class:`OutputBusyError`, naming its pid and host)
130   interrupted (Ctrl-C); rerun the same command to resume
====  ==========================================================================================
"""


class XTStreamError(Exception):
    """Base class of the errors xtstream raises on purpose."""

    #: the exit status of the ``xtstream`` command that stops on this error
    exit_code = 2


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


class OutputError(XTStreamError):
    """An output cannot be written: the disk is full, the file system read-only, permission denied.
    Raised in place of the ``OSError`` (kept as ``__cause__``), naming the output."""

    exit_code = 3


class OutputBusyError(XTStreamError):
    """An output (store, shard directory, prediction directory, run directory) is locked by
    another run that is still going."""

    exit_code = 4
