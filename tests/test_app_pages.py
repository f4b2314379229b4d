"""Every page on an empty store, bad form input, sweeps, uploads and public mode (AppTest)."""
from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from conftest import APP
from peftcompare.service.store import Store

PAGES = ["pages/home.py", "pages/train.py", "pages/adapters.py", "pages/compare.py", "pages/curves.py"]


def app(page: str | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=90).run()
    assert not at.exception, at.exception
    if page:
        at.switch_page(page).run()
        assert not at.exception, at.exception
    return at


def errors(at) -> list[str]:
    return [e.value for e in at.error]


def test_every_page_on_an_empty_store(app_home):
    at = app()
    nav = [p.value for p in at.page_link]
    optional = ["Presets"] if (APP.parent / "pages" / "presets.py").is_file() else []
    assert nav == ["Train", "Adapters", "Compare", "Curves", *optional]
    assert any("store is empty" in i.value for i in at.info)
    assert any("builtin:tiny-t5" in w.value and "sample data" in w.value for w in at.warning)  # offline, and why
    assert any("Hub offline" in c.value for c in at.sidebar.caption)
    for page in PAGES[1:]:
        at.switch_page(page).run()
        assert not at.exception, (page, at.exception)
        assert not at.error, (page, errors(at))
        if page != "pages/train.py":
            assert [p.value for p in at.page_link] == ["Go to Train"], page
    at.switch_page("pages/train.py").run()
    assert any("No runs yet" in c.value for c in at.caption)
    assert Store(app_home).list_runs() == []


@pytest.mark.parametrize("field, value, message", [
    ("tr_prompt_template", "no placeholder here", "Prompt template: must contain {text}"),
    ("tr_target_modules", "q,,v", "Target modules: expected comma-separated module names"),
])
def test_bad_form_input_is_a_message(app_home, field, value, message):
    at = app("pages/train.py")
    at.text_input(key=field).input(value).run()
    assert not at.exception
    assert any(message in e for e in errors(at)), errors(at)
    assert at.button(key="tr_enqueue").disabled
    assert Store(app_home).list_runs() == []


def test_unusable_model_and_bad_upload_are_messages(app_home):
    at = AppTest.from_file(str(APP), default_timeout=90)
    at.session_state["tr_model_name"] = "/no/such/model"
    at.run().switch_page("pages/train.py").run()
    assert not at.exception
    assert any("Model: the path /no/such/model does not exist" in w.value for w in at.warning)
    assert at.button(key="tr_enqueue").disabled  # the model check failed: nothing to click
    assert any("Enqueue is off: the model cannot be used" in c.value for c in at.caption)

    at.selectbox(key="tr_model_name").set_value("builtin:tiny-t5")
    at.file_uploader(key="tr_train_upload").upload("../../etc/mine.csv", b"review,stars\ngreat,5\n", "text/csv")
    at.run()
    at.button(key="tr_enqueue").click().run()
    assert not at.exception
    assert any("Train file: missing column(s) sentence, label" in e for e in errors(at)), errors(at)
    saved = list((app_home / "results" / "uploads").iterdir())
    assert len(saved) == 1 and saved[0].suffix == ".csv" and "mine" not in saved[0].name
    assert Store(app_home).list_runs() == []


def test_sweep_grid_counts_runs_and_parameters(app_home):
    at = app("pages/train.py")
    at.radio(key="tr_mode").set_value("Sweep grid").run()
    at.multiselect(key="tr_sweep_methods").set_value(["lora", "ia3"]).run()
    at.text_input(key="tr_sweep_caps_lora").input("4, 8")
    at.text_input(key="tr_sweep_seeds").input("1, 2").run()
    assert not at.exception and not at.error, errors(at)
    # zero-shot + lora x {4, 8} x {1, 2} + ia3 (no knob) x {1, 2}
    assert any("**7 runs** in the grid" in m.value and "**7 to run**" in m.value for m in at.markdown)
    counts = at.dataframe[0].value
    assert list(counts["method"]) == ["LoRA", "LoRA", "IA³"] and list(counts["trainable"])[:2] == [6144, 12288]
    at.text_input(key="tr_sweep_caps_lora").input("4, x").run()
    assert any("Capacities for LoRA: expected whole numbers" in e for e in errors(at)), errors(at)
    assert at.button(key="tr_enqueue").disabled


def test_public_mode_limits(app_home, monkeypatch):
    monkeypatch.setenv("PEFTCOMPARE_PUBLIC", "1")
    at = app("pages/train.py")
    assert at.number_input(key="tr_eval_samples").value == 200  # the form starts inside the limits
    at.number_input(key="tr_train_samples").set_value(2000).run()
    at.button(key="tr_enqueue").click().run()
    assert any("Training examples: at most 500 on this public instance" in e for e in errors(at)), errors(at)
    assert at.file_uploader(key="tr_train_upload").disabled
    at.switch_page("pages/adapters.py").run()
    assert not at.exception
    assert not [b for b in at.button if b.key == "ad_import"]
    assert Store(app_home).list_runs() == []


def test_zero_shot_summary_of_a_validation_example_on_an_empty_store(app_home):
    at = app("pages/compare.py")
    at.selectbox(key="cmp_task").set_value("summarization").run()
    at.radio(key="cmp_source").set_value("Validation example").run()
    at.number_input(key="cmp_index").set_value(2).run()
    reference = [m.value for m in at.markdown if m.value.startswith("**Reference:**")]
    assert len(reference) == 1 and len(reference[0]) > len("**Reference:** ")
    at.button(key="cmp_go").click().run()
    assert not at.exception and not at.error, errors(at)
    (col,) = at.session_state["cmp_result"]["columns"]
    assert col["key"] == "__base__" and col["words"] == len(col["output"].split())
    assert 0.0 <= col["rougeL"] <= 1.0 and col["latency_ms"] > 0
    assert any(c.value.startswith(f"{col['words']} words · ROUGE-L") for c in at.caption)
    # the typed-text path refuses empty input with a message
    at.radio(key="cmp_source").set_value("Type a text").run()
    at.button(key="cmp_go").click().run()
    assert not at.exception and any("text: enter some text" in e for e in errors(at))


def test_compare_result_belongs_to_the_text_shown(app_home):
    """Result cards (and "matches the reference") go away when the example, the source, the text or the
    task change: a result is shown only for the exact text, adapters, task and model it was made for."""
    at = app("pages/compare.py")

    def cards_shown() -> bool:
        return any("latency" in c.value or "the reference" in c.value for c in at.caption)

    at.radio(key="cmp_source").set_value("Validation example").run()
    at.number_input(key="cmp_index").set_value(0).run()
    at.button(key="cmp_go").click().run()
    assert not at.exception and not at.error, errors(at)
    verdicts = [c.value for c in at.caption if "the reference" in c.value]
    assert len(verdicts) == 1 and at.session_state["cmp_result"]["reference"]
    for index in (1, 0):  # another example, then back again: not re-shown without a new comparison
        at.number_input(key="cmp_index").set_value(index).run()
        assert not at.exception and not cards_shown() and at.session_state["cmp_result"] is None
    at.button(key="cmp_go").click().run()
    assert at.session_state["cmp_result"]["text"] == at.code[0].value.strip() and cards_shown()
    at.radio(key="cmp_source").set_value("Type a text").run()  # the source changes
    assert at.session_state["cmp_result"] is None and not cards_shown()
    at.text_area(key="cmp_text").input("a gripping film").run()
    at.button(key="cmp_go").click().run()
    assert at.session_state["cmp_result"]["text"] == "a gripping film" and cards_shown()
    at.text_area(key="cmp_text").input("a dull film").run()  # the text changes
    assert at.session_state["cmp_result"] is None and not cards_shown()
    at.text_area(key="cmp_text").input("a gripping film").run()
    at.button(key="cmp_go").click().run()
    at.radio(key="cmp_mode").set_value("Across the validation set").run()  # the other mode and back:
    assert not at.exception and not cards_shown()
    at.radio(key="cmp_mode").set_value("One example").run()  # the same text, so its result again
    assert at.text_area(key="cmp_text").value == "a gripping film" and cards_shown()
    at.selectbox(key="cmp_task").set_value("summarization").run()  # the task changes
    assert at.session_state["cmp_result"] is None and not cards_shown()


def test_zero_shot_across_the_validation_set_on_an_empty_store(app_home):
    at = app("pages/compare.py")
    at.radio(key="cmp_mode").set_value("Across the validation set").run()
    assert not at.exception and not at.error, errors(at)
    assert at.button(key="cmp_dis_go").label == "Score zero-shot"
    at.number_input(key="cmp_n").set_value(10).run()
    at.button(key="cmp_dis_go").click().run()
    assert not at.exception and not at.error, errors(at)
    assert list(at.dataframe[0].value["column"]) == ["zero-shot"]
    assert any("Only zero-shot answered" in i.value for i in at.info) and not at.expander
    assert at.download_button(key="cmp_dis_csv")
    assert list((app_home / "results" / "cache" / "disagreements").glob("*.json"))
