"""The app end to end in AppTest: submit a run on Train (the real queue worker trains it in a
subprocess), see it on Adapters, compare it with zero-shot, see it on Curves, zip it, delete it."""
from __future__ import annotations

import io
import zipfile

from streamlit.testing.v1 import AppTest

from conftest import APP, wait_for
from peftcompare.webui import ui
from peftcompare.service.store import Store


def texts(at) -> str:
    parts = [e.value for kind in ("markdown", "caption", "info", "success", "warning", "error", "title", "subheader")
             for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def test_train_adapters_compare_curves(app_home):
    at = AppTest.from_file(str(APP), default_timeout=90).run()
    assert not at.exception
    at.switch_page("pages/train.py").run()
    assert not at.exception
    assert at.selectbox(key="tr_model_name").value == "builtin:tiny-t5"  # offline default
    at.number_input(key="tr_train_samples").set_value(48)
    at.number_input(key="tr_eval_samples").set_value(16)
    at.number_input(key="tr_num_train_epochs").set_value(1)
    at.number_input(key="tr_capacity").set_value(4).run()
    assert not at.exception and not at.error
    # the count the `params` command prints for LoRA r=4 on q,v of the tiny model
    assert [m.value for m in at.metric if m.label == "Trainable parameters"] == ["6,144"]
    assert "Estimated duration" in texts(at)

    at.button(key="tr_enqueue").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("Enqueued 1 run" in s.value for s in at.success)
    store = Store(app_home)
    (run,) = store.list_runs()
    assert run["owner"] == at.session_state["visitor_id"]
    assert run["spec"].capacity == 4 and run["spec"].train_samples == 48

    done = wait_for(lambda: (r := store.get(run["run_id"]))["status"] not in ("queued", "running") and r,
                    timeout=120, what="the worker to finish the run")
    assert done["status"] == "completed", done.get("error")
    run_id = done["run_id"]

    at.run()  # the queue shows it as finished with its metric
    assert "completed" in texts(at) and "f1" in texts(at)

    at.switch_page("pages/adapters.py").run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["run_id"]) == [run_id]
    assert table.loc[0, "trainable_params"] == 6144 and table.loc[0, "status"] == "completed"
    assert at.selectbox(key="ad_detail").value == run_id
    assert f"Trained by peftcompare run `{run_id}`" in texts(at)  # the model card
    at.multiselect(key="ad_selected").select(run_id).run()
    at.button(key="ad_compare").click().run()  # hands the selection over and switches page
    assert not at.exception
    assert at.multiselect(key="cmp_runs").value == [run_id]
    at.switch_page("pages/compare.py")  # AppTest would otherwise rerun the page it was last switched to

    at.radio(key="cmp_source").set_value("Validation example").run()
    at.number_input(key="cmp_index").set_value(3).run()
    assert "Reference:" in texts(at)
    at.button(key="cmp_go").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    result = at.session_state["cmp_result"]
    assert [c["key"] for c in result["columns"]] == ["__base__", run_id]
    assert all(c["output"] in ("negative", "positive") and 0 <= c["probability"] <= 1 for c in result["columns"])
    assert "zero-shot" in texts(at) and "latency" in texts(at)

    at.switch_page("pages/curves.py").run()
    assert not at.exception
    table = at.dataframe[-1].value
    assert list(table["run_ids"]) == [run_id] and bool(table.loc[0, "pareto"])
    assert at.multiselect(key="cv_loss_runs").value == [run_id]

    # download, delete (with confirmation), import the bundle back through the page
    data = ui.bundle_bytes(store, [run_id])
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert "manifest.json" in names and f"adapters/{run_id}/adapter_model.safetensors" in names
    n_steps = len(store.steps(run_id))
    at.switch_page("pages/adapters.py").run()
    at.button(key="ad_delete").click().run()
    assert store.get(run_id) is not None, "deleted without confirmation"
    at.button(key="ad_delete_yes").click().run()
    assert store.get(run_id) is None and not store.adapter_path(run_id).exists()
    assert any("No adapters yet" in i.value for i in at.info)
    at.file_uploader(key="ad_import_file").upload(f"{run_id}.zip", data, "application/zip")
    at.run()
    at.button(key="ad_import").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    back = store.get(run_id)
    assert back["status"] == "completed" and back["trainable_params"] == 6144
    assert len(store.steps(run_id)) == n_steps > 0
    assert list(at.dataframe[0].value["run_id"]) == [run_id]
    at.file_uploader(key="ad_import_file").upload("junk.zip", b"not a zip", "application/zip")
    at.run()
    at.button(key="ad_import").click().run()
    assert not at.exception and any("not a zip" in e.value for e in at.error)
