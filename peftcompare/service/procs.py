"""Is the process that owns a run still there? Torch-free: the store asks this on every listing.

A pid alone is a weak identity: after a restart the number can belong to an unrelated program. A run
therefore keeps the pid with its start time (clock ticks since boot, /proc/<pid>/stat field 22), taken when
the pid is written; a live process with the same pid but another start time, or one that is not a Python
interpreter, is not the run's owner.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces: split after its closing one
    return text.rsplit(")", 1)[1].split()


def start_ticks(pid: int | None) -> int | None:
    """When the process started (ticks since boot); None where /proc is not available or it is gone."""
    if not pid:
        return None
    fields = _stat_fields(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def _is_python(pid: int) -> bool:
    try:
        exe = os.path.basename(os.path.realpath(f"/proc/{pid}/exe"))
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # not ours to inspect (another user's process): trust the pid
    ours = os.path.basename(os.path.realpath(sys.executable))
    return exe == ours or exe.startswith("python") or b"peftcompare" in cmd


def alive(pid: int | None, started: int | None = None) -> bool:
    """True while process `pid` (started at `started` ticks, when known) is running and can be ours."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, belongs to someone else: the checks below decide
    fields = _stat_fields(pid)
    if fields is None:  # no /proc (macOS): the signal check is all there is
        return True
    if fields[0] == "Z":  # a zombie has finished; only its parent has not collected it
        return False
    if started is not None and start_ticks(pid) != started:
        return False  # the pid was reused
    return _is_python(pid)


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Ask a child process to end (SIGTERM), and kill it when it has not within `timeout` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)
