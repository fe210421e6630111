"""One run per output: the second of two concurrent runs into one store, shard directory,
prediction directory or run directory refuses cleanly, naming the holder; a lock left by a dead
process never blocks (issue 11, part B)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_clean_errors import argv_for, assert_one_line, run_cli, work  # noqa: F401  (the fixture)
from xtstream._runtime.lock import LOCK_FILE, output_lock
from xtstream.errors import OutputBusyError, StoreError

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}

#: ``python -c HOLD READY SECONDS COMMAND…``: run an xtstream command that, once it holds its
#: output's lock, writes READY and keeps the lock SECONDS before going on
HOLD = r"""
import sys, time
import xtstream._runtime.lock as lock
from xtstream.cli import main
ready, seconds = sys.argv[1], float(sys.argv[2])
take = lock._acquire
def acquire(*args, **kw):
    fd = take(*args, **kw)
    open(ready, "w").write("locked")
    time.sleep(seconds)
    return fd
lock._acquire = acquire
sys.exit(main(sys.argv[3:]))
"""

#: ``python -c GRAB OUT READY``: take OUT's lock, write READY, then sleep (to be killed)
GRAB = r"""
import os, sys, time
from xtstream._runtime.lock import output_lock
with output_lock(sys.argv[1], "test output"):
    if len(sys.argv) > 3 and os.fork() == 0:  # a forked child (a DataLoader worker) outliving the parent
        time.sleep(60)
        os._exit(0)
    open(sys.argv[2], "w").write(str(os.getpid()))
    time.sleep(60)
"""


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before locking: {proc.communicate()[1][-3000:]}")
        if time.monotonic() > end:
            raise AssertionError("timed out waiting for the lock")
        time.sleep(0.05)


@pytest.mark.parametrize("command", ["ingest", "shard"])
def test_the_second_of_two_concurrent_runs_refuses_naming_the_holder(work, tmp_path, capsys, command):
    """Two processes run one command into one output: the holder finishes its run, the other
    exits 4 naming it. Before, both wrote into the output at once."""
    out, ready = tmp_path / "out", tmp_path / "ready"
    argv = argv_for(command, work, out, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(ready), "1", *argv], env=ENV, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(ready, holder)
        code, err = run_cli(argv, capsys)
        assert code == 4, err
        assert_one_line(err, command, str(out), f"in use by pid {holder.pid} on host {socket.gethostname()}")
    finally:
        _, holder_err = holder.communicate(timeout=120)
    assert holder.returncode == 0, holder_err[-3000:]
    assert not (out / LOCK_FILE).exists()  # a finished run leaves no lock file
    code, err = run_cli(argv, capsys)  # the holder's output is whole: a rerun finds it done
    assert code == 0, err


@pytest.mark.parametrize("command", ["predict", "train"])
def test_predict_and_train_refuse_an_output_another_process_holds(work, tmp_path, capsys, command):
    """The same for a prediction and a run directory (the holder only holds the lock: a torch
    process would take longer to start than this test may)."""
    out, ready = tmp_path / "out", tmp_path / "ready"
    holder = subprocess.Popen([sys.executable, "-c", GRAB, str(out), str(ready)], env=ENV, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(ready, holder)
        code, err = run_cli(argv_for(command, work, out, tmp_path), capsys)
    finally:
        holder.kill()
        holder.communicate()
    assert code == 4, err
    assert_one_line(err, command, str(out), f"in use by pid {holder.pid} on host {socket.gethostname()}")
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing written


def test_racing_processes_get_the_lock_one_at_a_time(tmp_path):
    """Four processes start on one output at once: at any moment at most one holds it."""
    out, log = tmp_path / "out", tmp_path / "log"
    race = r"""
import os, sys, time
from xtstream._runtime.lock import output_lock
from xtstream.errors import OutputBusyError
out, log, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
while time.time() < start:
    pass
won = 0
for _ in range(40):
    try:
        with output_lock(out, "test output"):
            with open(log, "a") as f:
                f.write(f"in {os.getpid()}\n")
            time.sleep(0.01)
            with open(log, "a") as f:
                f.write(f"out {os.getpid()}\n")
            won += 1
    except OutputBusyError:
        pass
print(won)
"""
    start = time.time() + 3
    procs = [subprocess.Popen([sys.executable, "-c", race, str(out), str(log), str(start)], env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    wins = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=60)
        assert p.returncode == 0, stderr
        wins.append(int(stdout))
    lines = log.read_text().split()
    events = list(zip(lines[::2], lines[1::2]))
    assert len(events) == 2 * sum(wins) and sum(wins) >= 4
    for (kind_in, pid_in), (kind_out, pid_out) in zip(events[::2], events[1::2]):
        assert (kind_in, kind_out) == ("in", "out") and pid_in == pid_out  # never two inside at once
    # made for the lock only: gone with it (or, when a racer's lock file came in between the last
    # holder's unlink and its rmdir, left empty)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("forked_child", [False, True], ids=["process", "with-a-forked-child"])
def test_a_lock_left_by_a_killed_process_never_blocks(tmp_path, forked_child):
    """SIGKILL leaves the lock file (with the dead pid) behind; the next run takes the lock at once,
    even when the dead process had forked a child that still runs."""
    out, ready = tmp_path / "out", tmp_path / "ready"
    out.mkdir()
    (out / "kept.txt").write_text("a file of the run")
    proc = subprocess.Popen([sys.executable, "-c", GRAB, str(out), str(ready), *(["fork"] if forked_child else [])],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        wait_for(ready, proc)
        with pytest.raises(OutputBusyError, match=rf"in use by pid {proc.pid} on host"):
            with output_lock(out, "test output"):
                pass
        proc.send_signal(signal.SIGKILL)  # the process only: a forked child lives on
        proc.wait(timeout=30)
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == proc.pid  # stale, left behind
        if forked_child:
            os.killpg(proc.pid, 0)  # the child still runs
        with output_lock(out, "test output"):
            assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group this test started (the forked child)
    assert (out / "kept.txt").is_file() and not (out / LOCK_FILE).exists()


def test_an_output_that_is_a_file_is_refused_by_the_lock(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(StoreError, match="exists and is a file, not a directory"):
        with output_lock(tmp_path / "f", "scene store", error=StoreError):
            pass
