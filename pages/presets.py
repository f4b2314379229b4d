"""Presets: the reference experiments, one click each. Enqueues the runs, then shows the preset's method
table and its per-epoch curves across methods."""
import altair as alt
import pandas as pd
import streamlit as st

from peftcompare import analysis, jobs, methods, presets, public, tasks, ui

store = ui.store()

# -- session state, one block ---------------------------------------------------------------------------
for _k, _v in {"ps_name": next(iter(presets.PRESETS)), "ps_quick": False, "ps_message": None}.items():
    st.session_state.setdefault(_k, _v)

online = ui.hub_online()
st.title("Presets")
st.caption("Each preset queues every run of a published experiment. "
           + ("With the Hub online they run on the named models." if online else
              "The Hub is offline: each preset runs on the built-in tiny model of its family, every other "
              "setting unchanged."))

st.radio("Preset", list(presets.PRESETS), key="ps_name", horizontal=True,
         format_func=lambda n: presets.PRESETS[n].title)
p = presets.get_preset(st.session_state["ps_name"])
st.subheader(p.title)
st.write(p.description)
st.dataframe(pd.DataFrame([{"method": methods.get_method(m).title,
                            "capacity knob": methods.get_method(m).capacity_name or "-",
                            "capacities": ", ".join(map(str, caps)) or "-",
                            "learning rate": presets.METHOD_LR.get(m)} for m, caps in p.methods]),
             hide_index=True, key="ps_methods")
models_line = ", ".join(f"`{m}`" for m in p.models) if online else f"`{p.offline_model}` (offline)"
st.markdown(f"**Model** {models_line} · **Data** {', '.join(p.datasets)} · **Views** "
            + ", ".join(presets.VIEWS[v].split(" (")[0].split(":")[0] for v in p.views))
for m in p.method_names():
    if methods.get_method(m).note:
        st.caption(f"{methods.get_method(m).title}: {methods.get_method(m).note}")

st.toggle("Quick (a few examples, one epoch, one capacity per method)", key="ps_quick")
specs = presets.preset_specs(p.name, not online, st.session_state["ps_quick"])
allowed, reason = ui.can("train"), ""
try:
    for s in specs:
        public.check_spec(s)
except ValueError as exc:
    allowed, reason = False, str(exc)
if st.button(f"Run {p.title} ({len(specs)} runs)", key="ps_run", type="primary", disabled=not allowed,
             help=reason or "Queues the runs that are not stored yet; the worker runs them one at a time."):
    try:
        out = presets.enqueue_preset(store, p.name, not online, owner=ui.visitor_id(),
                                     quick=st.session_state["ps_quick"])
        if out["run_ids"]:
            jobs.ensure_worker(store)
        st.session_state["ps_message"] = (f"{len(out['run_ids'])} runs queued, {out['skipped']} already "
                                          "stored or queued.")
    except ValueError as exc:
        st.session_state["ps_message"] = f"error: {exc}"
if reason:
    st.caption(f"Not available here: {reason}")
if st.session_state["ps_message"]:
    msg = st.session_state["ps_message"]
    (st.error if msg.startswith("error:") else st.success)(msg)

# -- results ----------------------------------------------------------------------------------------------
runs = presets.preset_runs(store, p.name)
active = [r for r in runs if r["status"] in ("queued", "running")]
if active:
    st.info(f"{len(active)} of this preset's runs are queued or running; the Train page shows their progress.")
done = [r for r in runs if r["status"] == "completed"]
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
        st.dataframe(table, hide_index=True, key=f"ps_table_{model_name}_{dataset}")
    ep = presets.epoch_frame([r for r in done if r["spec"].model_name == model_name
                              and r["spec"].dataset == dataset])
    ep = ep[ep["epoch"] > 0]
    if not ep.empty:
        long = ep.melt(id_vars=["label", "epoch"], value_vars=["train_loss", "metric"], var_name="curve")
        long["curve"] = long["curve"].map({"train_loss": "training loss", "metric": f"eval {metric}"})
        chart = alt.Chart(long).mark_line(point=True).encode(
            x=alt.X("epoch:Q", axis=alt.Axis(tickMinStep=1)), y=alt.Y("value:Q", title=None),
            color=alt.Color("label:N", title="method"), tooltip=["label", "epoch", "value"]
        ).properties(height=220).facet(column=alt.Column("curve:N", title=None)).resolve_scale(y="independent")
        st.altair_chart(chart)
st.page_link("pages/curves.py", label="Capacity curves on the Curves page", icon=ui.PAGES["pages/curves.py"][1])
