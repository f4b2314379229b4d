"""Adapters: the stored runs as a table with filter and sort; one run's details; delete, download,
import; "compare these" hands the selection to the Compare page."""
import json

import pandas as pd
import streamlit as st

from peftcompare.service import curves
from peftcompare.service.runs import delete_run
from peftcompare.core import methods, tasks
from peftcompare.webui import ui

store = ui.store()
owner = ui.visitor_id()
SORTS = {"newest first": ("created_at", False), "oldest first": ("created_at", True),
         "best metric": ("metric", False), "fewest trainable parameters": ("trainable_params", True),
         "smallest on disk": ("size_bytes", True)}

# -- session state, one block ---------------------------------------------------------------------------
for _k, _v in {"ad_tasks": [], "ad_methods": [], "ad_status": [], "ad_search": "", "ad_sort": "newest first",
               "ad_selected": [], "ad_detail": None, "ad_confirm_delete": None, "ad_flash": None,
               "ad_import_overwrite": False, "ad_import_conflict": None}.items():
    st.session_state.setdefault(_k, _v)

st.title("Adapters")
runs = store.list_runs()
if st.session_state["ad_flash"]:
    kind, text = st.session_state["ad_flash"]
    (st.success if kind == "ok" else st.error)(text)
    st.session_state["ad_flash"] = None


def table(runs: list[dict]) -> pd.DataFrame:
    rows = []
    for r in runs:
        spec = r["spec"]
        metric = ui.primary_metric(r["task"])
        tp, tot = r.get("trainable_params"), r.get("total_params")
        rows.append({
            "run_id": r["run_id"], "task": r["task"], "dataset": spec.dataset if spec else None,
            "method": methods.get_method(r["method"]).title if r["method"] in methods.METHODS else r["method"],
            "capacity": r["capacity"] if r["method"] in methods.METHODS and methods.get_method(r["method"])
            .capacity_name else None,
            "seed": r["seed"], "trainable_params": tp, "trainable_pct": 100 * tp / tot if tp is not None and tot
            else None, "metric_name": metric, "metric": (r.get("metrics") or {}).get(metric),
            "size_bytes": ui.adapter_size(r), "created_at": r.get("created_at"), "status": r["status"],
            "model": r.get("model_name"), "has_adapter": bool(r.get("adapter_dir")),
        })
    return pd.DataFrame(rows)


def import_box() -> None:
    with st.expander("Import a bundle zip", icon=":material/upload:"):
        if not ui.can("import"):
            st.caption("Import is turned off on this public instance.")
            return
        st.caption("A zip made by **Download** here or by `python -m peftcompare export`: run records, "
                   "their loss steps and adapters. Everything in it is checked (paths, sizes, checksums, "
                   "records, weights) before anything reaches the store.")
        up = st.file_uploader("Bundle zip", type=["zip"], key="ad_import_file")
        st.checkbox("Replace runs that already exist", key="ad_import_overwrite")

        def do_import(overwrite: bool) -> None:
            try:
                with st.spinner("Checking the bundle ..."):
                    ids = ui.import_bundle_bytes(store, up.getvalue(), overwrite, filename=up.name)
                st.session_state["ad_flash"] = ("ok", f"Imported {len(ids)} run(s) from {up.name}: "
                                                + ", ".join(ids[:4]) + (" ..." if len(ids) > 4 else ""))
                st.session_state["ad_import_conflict"] = None
                st.rerun()
            except ValueError as exc:
                exists = "already exists in this store" in str(exc)
                st.session_state["ad_import_conflict"] = up.file_id if exists and not overwrite else None
                st.error(ui.user_message(exc) + (": replace it, or keep the stored one." if exists else ""),
                         icon=":material/error:")

        if st.button("Import", key="ad_import", disabled=up is None, icon=":material/upload:"):
            do_import(st.session_state["ad_import_overwrite"])
        if up is not None and st.session_state.get("ad_import_conflict") == up.file_id:
            if st.button("Replace the stored runs with the bundle's", key="ad_import_replace",
                         icon=":material/sync:", help="Import again, replacing the runs this store already has."):
                do_import(True)


if not runs:
    st.info("No adapters yet. Train one first: with the defaults it takes seconds.", icon=":material/info:")
    st.page_link("pages/train.py", label="Go to Train", icon=ui.PAGES["pages/train.py"][1])
    import_box()
    st.stop()

df = table(runs)

# -- filter and sort --------------------------------------------------------------------------------
c1, c2, c3, c4, c5 = st.columns([1, 1, 1, 1.3, 1.2])
c1.multiselect("Task", sorted(df["task"].unique()), key="ad_tasks", placeholder="all")
c2.multiselect("Method", sorted(df["method"].unique()), key="ad_methods", placeholder="all")
c3.multiselect("Status", sorted(df["status"].unique()), key="ad_status", placeholder="all")
c4.text_input("Search", key="ad_search", placeholder="run id, dataset, model ...")
c5.selectbox("Sort", list(SORTS), key="ad_sort")
view = df
for col, key in (("task", "ad_tasks"), ("method", "ad_methods"), ("status", "ad_status")):
    if st.session_state[key]:
        view = view[view[col].isin(st.session_state[key])]
q = st.session_state["ad_search"].strip().lower()
if q:
    hay = view[["run_id", "dataset", "model", "method"]].astype(str).agg(" ".join, axis=1).str.lower()
    view = view[hay.str.contains(q, regex=False)]
by, asc = SORTS[st.session_state["ad_sort"]]
view = view.sort_values(by, ascending=asc, na_position="last")

shown = view.assign(date=pd.to_datetime(view["created_at"], unit="s"), capacity=view["capacity"].astype("Int64"),
                    size=view["size_bytes"].map(lambda n: ui.fmt_bytes(n) if n == n and n is not None else None),
                    metric_name=view["metric_name"].map(lambda m: tasks.metric_title(m)))
st.dataframe(
    shown[["method", "capacity", "seed", "task", "trainable_params", "trainable_pct", "metric_name", "metric",
           "size", "status", "date", "run_id"]],
    hide_index=True, width="stretch", key="ad_table", placeholder="—",
    column_config={
        "method": st.column_config.TextColumn("Method"),
        "capacity": st.column_config.NumberColumn("Capacity", format="%d"),
        "seed": st.column_config.NumberColumn("Seed", format="%d"),
        "task": st.column_config.TextColumn("Task"),
        "run_id": st.column_config.TextColumn("Run", width="medium"),
        "trainable_params": st.column_config.NumberColumn("Trainable params", format="localized"),
        "trainable_pct": st.column_config.NumberColumn("% of total", format="%.3f%%"),
        "metric_name": st.column_config.TextColumn("Metric"),
        "metric": st.column_config.NumberColumn("Value", format="%.4f"),
        "size": st.column_config.TextColumn("On disk"),
        "status": st.column_config.TextColumn("Status"),
        "date": st.column_config.DatetimeColumn("Date", format="YYYY-MM-DD HH:mm"),
    })
st.caption(f"{len(view)} of {len(df)} runs. Click a column header to sort by it.")

# -- selection -> Compare ---------------------------------------------------------------------------
with_adapter = view[view["has_adapter"] & (view["status"] == "completed")]
labels = {r["run_id"]: ui.run_label(r) for r in runs}
st.session_state["ad_selected"] = [r for r in st.session_state["ad_selected"] if r in set(with_adapter["run_id"])]
c1, c2, c3 = st.columns([4, 1, 1], vertical_alignment="bottom")
c1.multiselect("Select adapters", list(with_adapter["run_id"]), key="ad_selected",
               format_func=lambda r: labels.get(r, r), placeholder="choose adapters to compare or download")
selected = list(st.session_state["ad_selected"])
c3.download_button("Download", data=lambda: ui.bundle_bytes(store, selected), file_name="peftcompare-bundle.zip",
                   mime="application/zip", key="ad_download_selected", icon=":material/download:",
                   on_click="ignore", disabled=not selected, help="The selected runs and adapters as one bundle zip.")
if c2.button("Compare these", key="ad_compare", type="primary", icon=":material/compare:",
             disabled=not st.session_state["ad_selected"]):
    chosen = list(st.session_state["ad_selected"])
    models_ = {store.get(r)["model_name"] for r in chosen}
    tasks_ = {store.get(r)["task"] for r in chosen}
    if len(models_) > 1 or len(tasks_) > 1:
        st.error("Compare adapters of one task and one base model at a time.")
    else:
        st.session_state["compare_handoff"] = chosen
        st.switch_page("pages/compare.py")

# -- one run in detail ------------------------------------------------------------------------------
st.subheader("Details")
ids = list(view["run_id"])
if not ids:
    st.caption("No run matches the filters.")
    import_box()
    st.stop()
if st.session_state["ad_detail"] not in ids:
    st.session_state["ad_detail"] = ids[0]
st.selectbox("Run", ids, key="ad_detail", format_func=lambda r: f"{labels.get(r, r)} ({r})")
run = store.get(st.session_state["ad_detail"])
spec = run["spec"]
adir = store.adapter_path(run["run_id"])
metric = ui.primary_metric(run["task"])

c1, c2, c3, c3e, c4 = st.columns(5)
c1.metric(tasks.metric_title(metric), f"{(run.get('metrics') or {}).get(metric, float('nan')):.4f}"
          if (run.get("metrics") or {}).get(metric) is not None else "—")
c2.metric("Trainable params", ui.fmt_int(run.get("trainable_params")),
          help=f"of {ui.fmt_int(run.get('total_params'))}")
c3.metric("Training time", ui.fmt_duration(run.get("train_runtime")),
          help="The training loop only, every epoch; start-up and evaluation are not in it.")
c3e.metric("Evaluation time", ui.fmt_duration(run.get("eval_runtime")),
           help="Every evaluation pass together (one after each epoch).")
c4.metric("On disk", ui.fmt_bytes(ui.adapter_size(run)))
if run.get("error"):
    st.caption(f"**{run['status']}**: {ui.user_message(run['error'])}")
m = methods.get_method(run["method"]) if run["method"] in methods.METHODS else None
if m and ui.method_note(m.name, run.get("model_name")):
    st.caption(ui.method_note(m.name, run.get("model_name")))
if run["status"] in ("failed", "cancelled", "interrupted"):
    tail = ui.log_tail(store.log_path(run["run_id"]), lines=20)
    if tail:
        with st.expander("Log (last lines)"):
            st.code(tail, language=None, wrap_lines=True)

t_spec, t_cfg, t_epochs, t_loss, t_card = st.tabs(["Spec", "Adapter config", "Per-epoch metrics", "Loss curve",
                                                   "Model card"])
with t_spec:
    if spec:  # the settings that apply to this run's method, labelled as on the Train page
        st.dataframe(pd.DataFrame(ui.spec_rows(spec)), hide_index=True, key="ad_spec", width="content",
                     height="content",
                     column_config={"setting": st.column_config.TextColumn("Setting"),
                                    "value": st.column_config.TextColumn("Value")})
    else:
        st.caption("No spec recorded for this run.")
with t_cfg:
    cfg = adir / "adapter_config.json"
    if cfg.is_file():
        st.json(json.loads(cfg.read_text()), expanded=True)
    elif (adir / "trainable.safetensors").is_file():
        st.caption(f"{m.title if m else run['method']} saves its trainable tensors (trainable.safetensors), "
                   "not a PEFT adapter config.")
    else:
        st.caption("No saved adapter for this run.")
with t_epochs:
    if run.get("epochs"):
        ep = pd.DataFrame(run["epochs"])
        st.dataframe(ep, hide_index=True, width="stretch", placeholder="—", key="ad_epochs",
                     column_config={c: st.column_config.NumberColumn(
                         tasks.METRIC_TITLES.get(c, c.replace("_", " ").capitalize()),
                         format="%d" if c in ("epoch", "eval_samples") else "%.4f") for c in ep.columns})
    else:
        st.caption("No per-epoch metrics.")
with t_loss:
    steps = store.steps(run["run_id"])
    if steps:  # in the method's colour, as on the Curves page
        st.altair_chart(curves.loss_overlay(pd.DataFrame(steps), {run["run_id"]: run["method"]},
                                            {run["run_id"]: labels[run["run_id"]]}, height=260),
                        width="stretch")
    else:
        st.caption("No training steps recorded (zero-shot, imported or not started).")
with t_card:
    card = adir / "README.md"
    if card.is_file():
        text = card.read_text()
        if text.startswith("---"):  # front matter is for the Hub, not for reading
            front, _, text = text[3:].partition("\n---")
            st.code(front.strip(), language="yaml")
        # the card's own headings would dwarf the page's
        st.markdown("\n".join("####" + line.lstrip("#") if line.startswith("#") else line
                               for line in text.splitlines()))
    else:
        st.caption("No model card.")

c1, c2, _ = st.columns([1, 1, 3])
# something to download: a completed run's adapter (or a zero-shot record, which has none by nature)
if run["status"] == "completed" and (adir.is_dir() or not (m and m.trains)):
    c1.download_button("Download zip", data=lambda: ui.bundle_bytes(store, [run["run_id"]]),
                       file_name=f"{run['run_id']}.zip", mime="application/zip", key="ad_download",
                       icon=":material/download:", on_click="ignore",
                       help="This run's record, loss steps and adapter as a bundle zip.")
elif run["status"] not in ("queued", "running"):
    c1.caption({"failed": "Nothing to download: the run failed before it saved an adapter.",
                "cancelled": "Nothing to download: the run was cancelled before it saved an adapter.",
                "interrupted": "Nothing to download: the run was interrupted before it saved an adapter."}
               .get(run["status"], "Nothing to download: the adapter files are missing."))
if ui.can("delete"):
    if c2.button("Delete", key="ad_delete", icon=":material/delete:", disabled=run["status"] in ("queued", "running"),
                 help="Cancel a queued or running run on the Train page first."):
        st.session_state["ad_confirm_delete"] = run["run_id"]
    if st.session_state["ad_confirm_delete"] == run["run_id"]:
        st.warning(f"Delete run {run['run_id']} and its adapter files? This cannot be undone.")
        d1, d2, _ = st.columns([1, 1, 4])
        if d1.button("Yes, delete", key="ad_delete_yes", type="primary"):
            try:
                delete_run(store, run["run_id"])
                st.session_state["ad_flash"] = ("ok", f"Deleted {run['run_id']}")
            except ValueError as exc:
                st.session_state["ad_flash"] = ("error", ui.user_message(exc))
            st.session_state["ad_confirm_delete"] = None
            st.rerun()
        if d2.button("Keep it", key="ad_delete_no"):
            st.session_state["ad_confirm_delete"] = None
            st.rerun()
else:
    c2.caption("Delete is off on this public instance.")

import_box()
