"""Shared fixtures: a fresh store home per test (offline), and no worker left behind."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "app.py"


def _processes_for(home: Path) -> list[int]:
    """Pids of peftcompare workers and training children started for this store home only."""
    pids = []
    needle = str(home).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"peftcompare" in cmd and needle in cmd:
            pids.append(int(proc.name))
    return pids


def stop_processes(home: Path, timeout: float = 10.0) -> None:
    for pid in _processes_for(home):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while _processes_for(home) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in _processes_for(home):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def app_home(tmp_path, monkeypatch):
    """A store home for the app under test: offline, and every worker it started stopped afterwards."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("PEFTCOMPARE_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.delenv("PEFTCOMPARE_PUBLIC", raising=False)
    yield home
    stop_processes(home)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    """Poll until predicate() is truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
