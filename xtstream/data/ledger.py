"""The run ledger: how a long write (an ingest, a shard run) resumes after being cut off.

A run writes *units* (a Zarr tile, a shard) into an output directory. Its ledger lives beside
them::

    OUT/
      _xtstream_plan.json       {"fingerprint", "config", "units"}: which run owns OUT and the
                                units it writes there (written at claim)
      _xtstream_done/UNIT.json  one marker per finished unit (optional JSON payload)

The protocol, shared by :mod:`xtstream.data.ingest` and :mod:`xtstream.data.shards.writer`:

1. :meth:`RunLedger.claim` the output for a fingerprinted plan. The same fingerprint resumes; a
   different one is refused (naming what differs) unless ``overwrite``; a non-empty directory
   holding no plan is someone else's and is refused too.
2. Write a unit, then :meth:`RunLedger.mark` it done — last, and atomically (temp file +
   ``os.replace``), so a marker never stands for a unit whose write did not return.
3. A rerun writes only the units missing from :meth:`RunLedger.done`.
4. Once every unit is marked, the caller writes its own completion record (a store's complete
   flag, a shard manifest) and then :meth:`RunLedger.clear` drops the markers.

>>> ledger = RunLedger("out/", error=ValueError, what="shards")      # doctest: +SKIP
>>> ledger.claim("9f2c…", {"region": 512})                           # doctest: +SKIP
>>> ledger.mark("a-00000.tar", {"bytes": 1024}); ledger.done()       # doctest: +SKIP
{'a-00000.tar': {'bytes': 1024}}
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np

from xtstream._runtime.lock import holds_only_lock

DONE_DIR = "_xtstream_done"
PLAN_FILE = "_xtstream_plan.json"
MARKER_SUFFIX = ".json"
TMP_SUFFIX = ".tmp"


def write_json_atomic(path: str | Path, doc: Any) -> None:
    """Write ``doc`` as JSON to ``path`` so that readers see the old file or the new, never half of one.

    NumPy scalars are written as Python numbers. The temporary file is this writer's own (process
    and thread in its name): two writers of one file — a task a scheduler ran twice — each rename
    their own, and the last one wins, instead of the second finding the first's gone.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{unique_tag()}{TMP_SUFFIX}")
    try:
        tmp.write_text(json.dumps(doc, indent=1, default=_json_default))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def unique_tag() -> str:
    """``PID-THREAD``: names a temporary file no other writer (process or thread) uses."""
    return f"{os.getpid()}-{threading.get_ident()}"


def plan_diff(old: dict, new: dict) -> list[str]:
    """Keys of ``new`` whose values ``old`` records differently (``old`` may hold more keys)."""
    return [k for k in new if old.get(k) != new[k]]


class RunLedger:
    """The progress record of one resumable run writing into the directory ``out``.

    Parameters
    ----------
    out:
        The output directory (a scene store, a shard directory).
    error:
        Exception class raised on a refused claim (the caller's own, e.g. ``ShardError``).
    what:
        How messages name the run's output, e.g. ``"shards"`` or ``"an ingest"``.
    plan_file:
        Name of the plan record inside ``out``; ``None`` for outputs that record their plan
        themselves (a scene store's attributes): then :meth:`claim` is told what is recorded.

    Holds only paths, so it pickles to dask workers, which :meth:`mark` units from there.
    """

    def __init__(self, out: str | Path, *, error: type[Exception] = ValueError, what: str = "output",
                 plan_file: str | None = PLAN_FILE):
        self.out = Path(out)
        self.error = error
        self.what = what
        self.plan_file = plan_file

    @property
    def markers(self) -> Path:
        """The directory of done-markers."""
        return self.out / DONE_DIR

    def recorded(self) -> dict | None:
        """The plan ``{"fingerprint", "config", "units"}`` recorded in ``out``, or ``None``."""
        if self.plan_file is None:
            return None
        path = self.out / self.plan_file
        return json.loads(path.read_text()) if path.is_file() else None

    def claim(self, fingerprint: str, config: dict, *, overwrite: bool = False,
              recorded: dict | None = None, clear: Callable[[], None] | None = None,
              units: list[str] | None = None) -> bool:
        """Make ``out`` this plan's; return True when resuming the same plan, False on a fresh start.

        ``recorded``: the plan the output records itself (only with ``plan_file=None``).
        ``units``: the names of the files the plan will write in ``out``, recorded with it so that
        a later ``overwrite`` removes exactly those and nothing of anyone else's.
        ``clear``: removes the caller's units from ``out`` when ``overwrite`` replaces another
        run or a foreign directory; the ledger removes its own files. Raises ``error`` when
        ``out`` holds another run (naming the differing config keys) or is a non-empty directory
        without a plan, unless ``overwrite``.
        """
        old = self.recorded() if self.plan_file is not None else recorded
        if old is not None and old.get("fingerprint") == fingerprint:
            if self.plan_file is not None and units is not None and old.get("units") is None:
                # a plan recorded before units were: record them now, for a later overwrite
                write_json_atomic(self.out / self.plan_file, {**old, "units": list(units)})
            return True
        if old is not None:
            if not overwrite:
                changed = plan_diff(old.get("config") or {}, config)
                raise self.error(f"{self.out}: holds {self.what} of another run "
                                 f"(differs in {', '.join(changed) or 'fingerprint'}); "
                                 "pass overwrite=True (--overwrite) to replace it")
            self._reset(clear)
        elif self.out.is_dir() and not holds_only_lock(self.out):
            if not overwrite:
                raise self.error(f"{self.out}: exists, is not empty and holds no xtstream plan "
                                 f"({self.plan_file or 'record'}); refusing to write there")
            self._reset(clear)
        if self.plan_file is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            plan = {"fingerprint": fingerprint, "config": config}
            write_json_atomic(self.out / self.plan_file, plan if units is None else {**plan, "units": list(units)})
        return False

    def mark(self, unit: str, payload: Any = None) -> None:
        """Mark ``unit`` done, with an optional JSON ``payload``; call only after its write returned."""
        # no parents: a marker must not recreate an output directory someone removed mid-run
        self.markers.mkdir(exist_ok=True)
        write_json_atomic(self.markers / (unit + MARKER_SUFFIX), payload)

    def done(self) -> dict[str, Any]:
        """``{unit: payload}`` of the units marked done (temp files of cut-off marks are not)."""
        found: dict[str, Any] = {}
        if not self.markers.is_dir():
            return found
        for path in self.markers.glob("*" + MARKER_SUFFIX):  # temporary files end in .tmp: not markers
            try:
                found[path.name[:-len(MARKER_SUFFIX)]] = json.loads(path.read_text())
            except ValueError:
                # a marker emptied by a power loss: the unit is simply written again
                continue
        return found

    def clear(self) -> None:
        """Drop the markers once the caller has recorded completion; the plan stays, so that a
        rerun recognises the finished run as its own."""
        shutil.rmtree(self.markers, ignore_errors=True)

    def _reset(self, clear: Callable[[], None] | None) -> None:
        if clear is not None:
            clear()
        self.clear()
        if self.plan_file is not None:
            (self.out / self.plan_file).unlink(missing_ok=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
