"""The real Hub path against a self-hosted mirror (olah on 127.0.0.1): train and compare with the default
Hub ids, the Home page online with the mirror's URL, and the reachability probe itself."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
from streamlit.testing.v1 import AppTest

from conftest import APP
from hub_mirror import MODEL_ID, free_port, hub_mirror  # noqa: F401 - hub_mirror is a fixture
from peftcompare.engine import runtime
from peftcompare.service.store import Store

# a small budget: the point is the loading path, not the metric
BUDGET = ["--train_samples", "16", "--eval_samples", "4", "--num_train_epochs", "1",
          "--per_device_train_batch_size", "8", "--max_source_length", "64", "--max_target_length", "16"]


def cli(mirror, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    # a fresh interpreter: huggingface_hub and datasets read HF_ENDPOINT and the offline switches at import
    proc = subprocess.run([sys.executable, "-m", "peftcompare", *args], capture_output=True, text=True,
                          env=mirror.env(), timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def hub_home(tmp_path_factory):
    return tmp_path_factory.mktemp("hub_home")


def train(mirror, home, task: str) -> dict:
    cli(mirror, "train", "--home", str(home), "--task", task, *BUDGET)
    runs = Store(home).list_runs(task=task)
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture(scope="module")
def classification_run(hub_mirror, hub_home):
    return train(hub_mirror, hub_home, "classification")


def assert_from_the_hub(run: dict, mirror) -> None:
    assert run["status"] == "completed", run.get("error")
    assert run["data_source"] == "hub"
    assert run["spec"].model_name == MODEL_ID
    # LoRA adds trainable weights to the frozen base: the rest is exactly the mirrored checkpoint
    assert run["total_params"] - run["trainable_params"] == mirror.model_params
    assert (mirror.hf_home / "hub" / "models--google--flan-t5-small").is_dir()


def test_train_classification_from_the_mirror(classification_run, hub_mirror):
    assert_from_the_hub(classification_run, hub_mirror)
    assert classification_run["spec"].dataset == "sst2"
    assert (hub_mirror.hf_home / "hub" / "datasets--nyu-mll--glue").is_dir()


def test_train_summarization_from_the_mirror(hub_mirror, hub_home):
    run = train(hub_mirror, hub_home, "summarization")
    assert_from_the_hub(run, hub_mirror)
    assert run["spec"].dataset == "samsum"
    assert (hub_mirror.hf_home / "hub" / "datasets--knkarthick--samsum").is_dir()


def test_compare_on_the_hub_model(classification_run, hub_mirror, hub_home):
    run_id = classification_run["run_id"]
    proc = cli(hub_mirror, "compare", "--home", str(hub_home), run_id, "--text", "a wonderful film", "--json")
    out = json.loads(proc.stdout)
    assert out["model_name"] == MODEL_ID
    assert [c["key"] for c in out["columns"]] == ["__base__", run_id]
    assert all(c["output"] in ("negative", "positive") for c in out["columns"])


def test_home_page_names_the_mirror(app_home, hub_mirror, monkeypatch):
    hub_mirror.apply(monkeypatch)  # after app_home, which switches the Hub off
    at = AppTest.from_file(str(APP), default_timeout=90).run()
    assert not at.exception, at.exception
    assert any("Hub: online" in s.value and hub_mirror.endpoint in s.value for s in at.success), \
        [s.value for s in at.success] + [w.value for w in at.warning]
    assert any("Hub online" in c.value for c in at.sidebar.caption)


def test_probe_uses_hf_endpoint_and_the_offline_switch(hub_mirror, monkeypatch):
    hub_mirror.apply(monkeypatch)
    assert runtime.hub_endpoint() == hub_mirror.endpoint
    assert runtime.hub_reachable()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not runtime.hub_reachable()


def test_probe_of_a_closed_port_is_quick_and_leaves_the_socket_default(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}/")
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(7.0)
    try:
        t0 = time.monotonic()
        assert not runtime.hub_reachable()
        assert time.monotonic() - t0 < 1.0
        assert socket.getdefaulttimeout() == 7.0
    finally:
        socket.setdefaulttimeout(previous)


def test_probe_is_bounded_when_the_connection_hangs(monkeypatch):
    # a name lookup or connect that never returns must not hold the page: the probe gives up at its timeout
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: time.sleep(5))
    t0 = time.monotonic()
    assert not runtime.hub_reachable(timeout=0.2, endpoint="https://hub.example.invalid")
    assert time.monotonic() - t0 < 1.0


@pytest.mark.parametrize("endpoint", ["ftp://mirror.example", "not a url", "http://"])
def test_probe_rejects_an_endpoint_that_is_not_http(endpoint, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert not runtime.hub_reachable(endpoint=endpoint)
