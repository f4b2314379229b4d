"""Presets: the reference experiments, one click each. Enqueues the runs, then shows the preset's method
table and its per-epoch curves across methods."""
import pandas as pd
import streamlit as st

from peftcompare.service import analysis, curves, jobs, presets, policy as public
from peftcompare.core import methods, tasks
from peftcompare.webui import ui

store = ui.store()
owner = ui.visitor_id()

# -- session state, one block (the preset and Quick survive leaving the page: ui.persist) -----------------
for _k, _v in {"ps_name": next(iter(presets.PRESETS)), "ps_quick": False}.items():
    ui.persist(_k, _v)
for _k, _v in {"ps_message": None, "ps_seen": None}.items():
    st.session_state.setdefault(_k, _v)

online = ui.hub_online()
st.title("Presets")
st.caption("Each preset queues every run of a published experiment. "
           + ("With the Hub online they run on the named models." if online else
              "The Hub is offline: each preset runs on the built-in tiny model of its family, with that model's "
              "recipe (learning rate, epochs, training examples); methods and capacities are the preset's."))

st.radio("Preset", list(presets.PRESETS), key="ps_name", horizontal=True,
         format_func=lambda n: presets.PRESETS[n].title)
p = presets.get_preset(st.session_state["ps_name"])
st.subheader(p.title)
st.write(p.description)
st.dataframe(pd.DataFrame(presets.method_rows(p.name, offline=not online)), hide_index=True, key="ps_methods", placeholder="—",
             column_config={k: st.column_config.TextColumn(v) for k, v in presets.METHOD_ROW_LABELS.items()})
models_line = ", ".join(f"`{m}`" for m in p.models) if online else f"`{p.offline_model}` (offline)"
st.markdown(f"**Model** {models_line} · **Data** {', '.join(p.datasets)} · **Views** "
            + ", ".join(presets.VIEWS[v].split(" (")[0].split(":")[0] for v in p.views))
for m in p.method_names():  # only the notes about this preset's model family (no T5 remark under BERT)
    note = ui.method_note(m, p.offline_model if not online else p.models[0])
    if note:
        st.caption(f"{methods.get_method(m).title}: {note}")

st.toggle("Quick (a few examples, one epoch, one capacity per method)", key="ps_quick")
specs = presets.preset_specs(p.name, not online, st.session_state["ps_quick"])
allowed, reason = ui.can("train"), ""
try:
    for s in specs:
        public.check_spec(s)
except ValueError as exc:
    allowed, reason = False, ui.user_message(exc)
if st.button(f"Run {p.title} ({len(specs)} runs)", key="ps_run", type="primary", disabled=not allowed,
             help=reason or "Queues the runs that are not stored yet; the worker runs them one at a time."):
    try:
        out = presets.enqueue_preset(store, p.name, not online, owner=owner, quick=st.session_state["ps_quick"])
        if out["run_ids"]:
            jobs.ensure_worker(store)
        st.session_state["ps_message"] = ("ok", f"{len(out['run_ids'])} runs queued, {out['skipped']} already "
                                                "stored or queued.", p.name, True)
    except ValueError as exc:
        st.session_state["ps_message"] = ("error", ui.user_message(exc), p.name, True)
if reason:
    st.caption(f"Not available here: {reason}")
if st.session_state["ps_message"]:
    # shown when it is new, and after that only while the runs it speaks of are still waiting or running
    kind, msg, about, fresh = st.session_state["ps_message"]
    st.session_state["ps_message"] = (kind, msg, about, False)
    if about == p.name and (fresh or any(r["status"] in ("queued", "running")
                                         for r in presets.preset_runs(store, p.name))):
        (st.error if kind == "error" else st.success)(msg)


# -- the queue, live: queued, running and failed runs of this preset ----------------------------------------
def _signature(runs: list[dict]) -> tuple:
    return tuple(sorted((r["run_id"], r["status"]) for r in runs))


def _retry(run_id: str) -> None:
    try:
        new = jobs.retry(store, run_id, owner=owner)
        jobs.ensure_worker(store)
        st.toast(f"Queued again as {new}", icon=":material/replay:")
    except ValueError as exc:
        st.toast(ui.user_message(exc), icon=":material/error:")


def _mine(run: dict) -> bool:
    return not public.is_public() or run.get("owner") == owner


def preset_queue() -> None:
    """Re-drawn every few seconds while runs are active; a change of any run's status redraws the whole
    page (its tables and charts), and with nothing active that redraw stops the timer."""
    runs = presets.preset_runs(store, p.name)
    if _signature(runs) != st.session_state["ps_seen"]:
        st.rerun()
    groups = presets.run_groups(runs)
    active = groups["active"]
    if active:
        running = [r for r in active if r["status"] == "running"]
        st.info(f"{len(active)} of this preset's runs are queued or running ({len(running)} running): the "
                "results appear below as they finish; the Train page shows each run's progress.",
                icon=":material/hourglass_top:")
        for r in running:
            total = r.get("total_steps") or 0
            st.progress(min(1.0, float(r.get("progress") or 0.0)),
                        text=f"{ui.run_label(r)} · step {r.get('step') or 0} of {total}" if total else
                        f"{ui.run_label(r)} · starting ...")
    colours = {"failed": "red", "cancelled": "orange", "interrupted": "orange"}
    for r in groups["problems"]:
        with st.container(border=True):
            c1, c2 = st.columns([6, 1], vertical_alignment="center")
            c1.markdown(f":{colours[r['status']]}[**{r['status']}**] {ui.run_label(r)}")
            c1.caption(ui.user_message(r.get("error") or f"the run was {r['status']}"))
            if _mine(r) and ui.can("train"):
                c2.button("Retry", key=f"ps_retry_{r['run_id']}", icon=":material/replay:", on_click=_retry,
                          args=(r["run_id"],), help="Queue the same run again.")
            tail = ui.log_tail(store.log_path(r["run_id"]), lines=12)
            if tail:
                with st.expander("Log"):
                    st.code(tail, language=None, wrap_lines=True)


runs = presets.preset_runs(store, p.name)
st.session_state["ps_seen"] = _signature(runs)
groups = presets.run_groups(runs)
st.fragment(run_every=2.0 if groups["active"] else None)(preset_queue)()

# -- results ----------------------------------------------------------------------------------------------
done = groups["completed"]
if not done:
    st.info("No completed runs of this preset yet.")
    st.stop()
df = analysis.runs_frame(done)
for (model_name, dataset), part in df.groupby(["model_name", "dataset"]):
    task = tasks.get_dataset(dataset).task
    metric = tasks.get_task(task).metric
    st.markdown(f"#### {model_name} · {dataset}")
    table = analysis.method_table(part, metric)
    if not table.empty:
        shown, labels = presets.method_table_display(table, tasks.metric_title(metric))
        config = {c: (st.column_config.TextColumn(labels[c]) if presets.METHOD_TABLE_COLUMNS[c][1] is None else
                      st.column_config.NumberColumn(labels[c], format=presets.METHOD_TABLE_COLUMNS[c][1]))
                  for c in shown.columns}
        st.dataframe(shown, hide_index=True, key=f"ps_table_{model_name}_{dataset}", placeholder="—",
                     column_config=config)
    ep = presets.epoch_frame([r for r in done if r["spec"].model_name == model_name
                              and r["spec"].dataset == dataset])
    ep = ep[ep["epoch"] > 0]
    if not ep.empty:
        st.altair_chart(curves.epoch_chart(ep, metric))
st.page_link("pages/curves.py", label="Capacity curves on the Curves page", icon=ui.PAGES["pages/curves.py"][1])
