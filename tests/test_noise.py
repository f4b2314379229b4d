"""Issue 12, defect 9: no developer noise on screen. Field labels instead of field names, the user's file
names instead of internal ones, words instead of CLI flags, labelled tables with dashes for missing
values, wrapped log lines, only the spec fields a run's method uses, method notes for the right family, no
download for a run with nothing to download; `results --format table` prints counts as integers."""
from __future__ import annotations

import json
import time

import pytest
from streamlit.testing.v1 import AppTest

from conftest import APP
from pipeline_helpers import cli, run_in_process, tiny_spec
from peftcompare.webui import ui
from peftcompare.service.store import Store

LONG_LINE = "ValueError: " + "a very long message from deep inside the trainer " * 10


# -- messages ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, shown", [
    ("learning_rate: must be > 0, got 0.0", "Learning rate: must be > 0, got 0.0"),
    ("per_device_train_batch_size: expected int, got 'x'", "Train batch size: expected a whole number, got 'x'"),
    ("prompt_template: must contain {text}\nTraceback ...", "Prompt template: must contain {text}"),
    ("bundle: run r1 already exists in this store (use --overwrite to replace it)",
     "Bundle: run r1 already exists in this store"),
    ("run r1: adapter is damaged (bad checksum); see python -m peftcompare check",
     "Run r1: adapter is damaged (bad checksum)"),
    ("dataset: give --train_file and --validation_file, or a dataset preset",
     "Dataset: give Train file and Validation file, or a dataset preset"),
    ("the training process exited with status 1 without finishing",
     "The training process exited with status 1 without finishing"),
])
def test_user_message(raw, shown):
    assert ui.user_message(ValueError(raw)) == shown


def test_uploads_are_echoed_by_the_users_file_name(app_home):
    store = Store(app_home)
    saved = ui.save_upload(store, "../../My reviews.csv", b"review,stars\ngreat,5\n")
    assert "My" not in saved.name  # on disk: a generated name, as before
    assert ui.upload_display_name(str(saved)) == "My reviews.csv"
    assert ui.user_message(f"train_file: {saved} is empty") == "Train file: My reviews.csv is empty"
    assert ui.user_message("train_file: /x/20261202-101010-0123456789.csv is empty") == \
        "Train file: the uploaded file is empty"  # one this store did not save
    assert ui.user_message("bundle: upload.zip is not a zip file", names={"upload.zip": "mine.zip"}) == \
        "Bundle: mine.zip is not a zip file"


def test_method_notes_match_the_family():
    assert ui.method_note("bitfit", "builtin:tiny-bert") == ""
    assert ui.method_note("prefix", "bert-base-uncased") == ""
    assert "T5" in ui.method_note("bitfit", "google/flan-t5-small")
    assert "encoder-decoder" in ui.method_note("prefix", "builtin:tiny-t5")
    assert ui.method_note("bitfit", "/models/my-own-model")  # unknown family: the note stays
    assert ui.method_note("lora", "builtin:tiny-t5") == ""


def test_spec_rows_show_only_the_fields_of_the_method():
    def settings(**kw):
        return {r["setting"]: r["value"] for r in ui.spec_rows(tiny_spec(**kw).resolved())}

    prompt = settings(method="prompt", capacity=10)
    assert not {"LoRA alpha", "LoRA dropout", "Target modules"} & set(prompt)
    assert prompt["Capacity"] == "10 (virtual tokens)" and prompt["Learning rate"] == "0.005"
    lora = settings(method="lora", capacity=4)
    assert {"LoRA alpha", "LoRA dropout", "Target modules"} <= set(lora)
    zero = settings(method="zero_shot")
    assert not {"Learning rate", "Epochs", "Training examples", "Train batch size", "Capacity"} & set(zero)
    assert zero["Evaluation examples"] == "8" and zero["Method"] == "Zero-shot"
    ia3 = settings(method="ia3")
    assert "Capacity" not in ia3 and "Target modules" in ia3 and "LoRA alpha" not in ia3


# -- the Adapters page on real runs ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def noisy_home(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("noise-home"))
    runs = {kw["method"]: run_in_process(store, tiny_spec(**kw))
            for kw in [dict(method="zero_shot"), dict(method="lora", capacity=4), dict(method="prompt", capacity=10)]}
    cancelled = store.create_run(tiny_spec(method="lora", capacity=8).resolved(), status="running")
    store.log_path(cancelled).write_text("loading the model ...\n" + LONG_LINE + "\n")
    store.transition(cancelled, "cancelled", ("running",), finished_at=time.time(), error="cancelled by the user")
    runs["cancelled"] = store.get(cancelled)
    return store, runs


def adapters(home, monkeypatch) -> AppTest:
    monkeypatch.setenv("PEFTCOMPARE_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("PEFTCOMPARE_PUBLIC", raising=False)
    at = AppTest.from_file(str(APP), default_timeout=90).run()
    at.switch_page("pages/adapters.py").run()
    assert not at.exception, at.exception
    return at


def spec_settings(at) -> dict[str, str]:
    (table,) = [d for d in at.dataframe if list(d.value.columns) == ["setting", "value"]]
    return dict(zip(table.value["setting"], table.value["value"]))


def test_adapters_table_details_and_downloads(noisy_home, monkeypatch):
    store, runs = noisy_home
    at = adapters(store.home, monkeypatch)
    table = at.dataframe[0]
    assert table.proto.placeholder == "—"  # IA3/zero-shot capacity, sizes of runs without adapters
    cfg = json.loads(table.proto.columns)
    assert {cfg[c]["label"] for c in ("method", "trainable_params", "metric_name", "status", "run_id")} == \
        {"Method", "Trainable params", "Metric", "Status", "Run"}
    assert set(table.value["metric_name"]) == {"F1"}

    at.selectbox(key="ad_detail").set_value(runs["prompt"]["run_id"]).run()
    prompt = spec_settings(at)
    assert "LoRA alpha" not in prompt and "Target modules" not in prompt and prompt["Method"] == "Prompt-Tuning"
    assert [b for b in at.get("download_button") if b.proto.label == "Download zip"]

    at.selectbox(key="ad_detail").set_value(runs["zero_shot"]["run_id"]).run()
    assert "Learning rate" not in spec_settings(at)
    assert [b for b in at.get("download_button") if b.proto.label == "Download zip"]  # its record

    at.selectbox(key="ad_detail").set_value(runs["cancelled"]["run_id"]).run()
    assert not at.exception
    assert not [b for b in at.get("download_button") if b.proto.label == "Download zip"]
    assert any("Nothing to download: the run was cancelled" in c.value for c in at.caption)
    assert any("**cancelled**: Cancelled by the user" in c.value for c in at.caption)
    (log,) = [c for c in at.get("code") if LONG_LINE.strip() in c.proto.code_text]
    assert log.proto.wrap_lines


def test_import_names_the_users_file_and_offers_replace(noisy_home, monkeypatch):
    store, runs = noisy_home
    data = ui.bundle_bytes(store, [runs["lora"]["run_id"]])
    at = adapters(store.home, monkeypatch)
    at.file_uploader(key="ad_import_file").upload("not-a-bundle.zip", b"hello", "application/zip").run()
    at.button(key="ad_import").click().run()
    assert [e.value for e in at.error] == ["Bundle: not-a-bundle.zip is not a zip file"]

    at.file_uploader(key="ad_import_file").upload("lora-runs.zip", data, "application/zip").run()
    at.button(key="ad_import").click().run()
    (err,) = [e.value for e in at.error]
    assert "already exists" in err and "--overwrite" not in err and "upload.zip" not in err, err
    at.button(key="ad_import_replace").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any(f"Imported 1 run(s) from lora-runs.zip: {runs['lora']['run_id']}" in s.value for s in at.success)
    assert store.get(runs["lora"]["run_id"])["status"] == "completed"


def test_cli_results_table_prints_counts_as_integers(noisy_home):
    store, runs = noisy_home
    out = cli("results", home=store.home, check=True).stdout
    assert "6144" in out and "6144.0" not in out and "NaN" not in out and "None" not in out, out
    lora = [line for line in out.splitlines() if runs["lora"]["run_id"] in line][0]
    cells = lora.split()
    assert cells[3:5] == ["4", "42"] and cells[6] == "6144"  # capacity, seed, trainable params
    assert any(len(c.split(".")[-1]) == 4 for c in cells if c.replace(".", "").isdigit() and "." in c)
    assert "—" in out  # rougeL of a classification run: a dash, not NaN
