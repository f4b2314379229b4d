"""Curves: per task, the chosen metric against capacity or trainable parameters (log scale), one line
per method with the spread over seeds, reference rules, the Pareto front; loss curves; the table."""
import pandas as pd
import streamlit as st

from peftcompare import analysis, curves, methods, tasks, ui

store = ui.store()
X_OPTIONS = list(curves.X_FIELDS)
SPREADS = {"std": "mean ± std over seeds", "minmax": "min – max over seeds"}

# -- session state, one block ---------------------------------------------------------------------------
for _k, _v in {"cv_task": "classification", "cv_metric": None, "cv_x": "trainable_params", "cv_spread": "std",
               "cv_model": None, "cv_dataset": None, "cv_loss_runs": None}.items():
    st.session_state.setdefault(_k, _v)
if st.session_state["cv_metric"] not in tasks.get_task(st.session_state["cv_task"]).metrics:
    st.session_state["cv_metric"] = tasks.get_task(st.session_state["cv_task"]).metric

st.title("Curves")
c1, c2, c3, c4 = st.columns(4)
c1.selectbox("Task", list(tasks.TASKS), key="cv_task")
task = tasks.get_task(st.session_state["cv_task"])
c2.selectbox("Metric", list(task.metrics), key="cv_metric", format_func=lambda m: curves.METRIC_TITLES.get(m, m))
c3.selectbox("x axis", X_OPTIONS, key="cv_x", format_func=curves.X_FIELDS.get)
c4.selectbox("Spread", list(SPREADS), key="cv_spread", format_func=SPREADS.get)
metric, x = st.session_state["cv_metric"], st.session_state["cv_x"]

df = analysis.load_df(store, task=task.name)
done = df[(df["status"] == "completed") & df[metric].notna()] if not df.empty else df
if done.empty:
    st.info(f"No completed {task.name} runs yet. Train a zero-shot baseline and a couple of adapters "
            "(a sweep grid does both), then their curve appears here.", icon=":material/info:")
    st.page_link("pages/train.py", label="Go to Train", icon=ui.PAGES["pages/train.py"][1])
    st.stop()

# one curve family per base model and dataset: numbers of different models or data do not share an axis
c1, c2 = st.columns(2)
model_names = sorted(done["model_name"].dropna().unique())
datasets = sorted(done["dataset"].dropna().unique())
if st.session_state["cv_model"] not in model_names:
    st.session_state["cv_model"] = done.sort_values("created_at")["model_name"].iloc[-1]
if st.session_state["cv_dataset"] not in datasets:
    st.session_state["cv_dataset"] = done.sort_values("created_at")["dataset"].iloc[-1]
c1.selectbox("Base model", model_names, key="cv_model")
c2.selectbox("Dataset", datasets, key="cv_dataset")
sel = df[(df["model_name"] == st.session_state["cv_model"]) & (df["dataset"] == st.session_state["cv_dataset"])]

agg = analysis.aggregate(sel, metric)
curve_agg, refs = curves.split_references(agg)
pareto = analysis.pareto_front(curve_agg) if len(curve_agg) else pd.Series(dtype=bool)
agg = agg.assign(pareto=pareto.reindex(agg.index).fillna(False).astype(bool))
title = f"{task.name} · {st.session_state['cv_dataset']} · {st.session_state['cv_model']}"
chart = curves.efficiency_chart(agg, metric, x, st.session_state["cv_spread"], pareto, title=title)
if len(curve_agg):
    st.altair_chart(chart, width="stretch", key="cv_chart")
    missing = sorted({methods.get_method(m).title for m in curve_agg.loc[curve_agg["capacity"].fillna(0) <= 0,
                                                                         "method"]})
    if x == "capacity" and missing:
        st.caption(f"Without a capacity knob, not on this axis: {', '.join(missing)} "
                   "(switch the x axis to trainable parameters to see them).")
    st.caption("Ringed points joined by the dotted line form the Pareto front: no other point has fewer "
               "trainable parameters and a better score. Dashed horizontal lines are references.")
else:
    st.info("Only reference runs (zero-shot or full fine-tuning) so far: train an adapter to draw a curve.")
if len(refs):
    st.caption(" · ".join(f"{methods.get_method(r.method).title}: {r.mean:.4f}" for r in refs.itertuples()))

# -- training-loss curves -------------------------------------------------------------------------------
st.subheader("Training loss")
trained = sel[(sel["status"] == "completed") & sel["method"].map(
    lambda m: m in methods.METHODS and methods.get_method(m).trains)].sort_values("created_at")
labels = {r["run_id"]: ui.run_label(r) for r in store.list_runs(task=task.name)}
options = list(trained["run_id"])
if st.session_state["cv_loss_runs"] is None:
    st.session_state["cv_loss_runs"] = options[-3:]
st.session_state["cv_loss_runs"] = [r for r in st.session_state["cv_loss_runs"] if r in options]
st.multiselect("Runs", options, key="cv_loss_runs", format_func=lambda r: labels.get(r, r))
steps = store.steps(st.session_state["cv_loss_runs"])
if steps:
    st.altair_chart(curves.loss_chart(pd.DataFrame(steps), labels), width="stretch", key="cv_loss_chart")
else:
    st.caption("Choose runs to overlay their training loss.")

# -- the table and downloads -----------------------------------------------------------------------------
st.subheader("Table")
table = agg.assign(method=agg["method"].map(lambda m: methods.get_method(m).title),
                   capacity=agg["capacity"].where(agg["method"].map(
                       lambda m: methods.get_method(m).capacity_name is not None)).astype("Int64"))
st.dataframe(table[["method", "capacity", "trainable_params", "mean", "std", "min", "max", "n", "pareto",
                    "run_ids"]], hide_index=True, width="stretch", key="cv_table",
             column_config={"trainable_params": st.column_config.NumberColumn("trainable params",
                                                                              format="localized"),
                            "mean": st.column_config.NumberColumn(curves.METRIC_TITLES.get(metric, metric),
                                                                  format="%.4f"),
                            "std": st.column_config.NumberColumn(format="%.4f"),
                            "min": st.column_config.NumberColumn(format="%.4f"),
                            "max": st.column_config.NumberColumn(format="%.4f"),
                            "n": st.column_config.NumberColumn("seeds")})
stem = f"curve_{task.name}_{metric}_{x}"
c1, c2, c3, c4 = st.columns(4)
c1.download_button("Aggregated CSV", data=agg.to_csv(index=False), file_name=f"{stem}.csv", mime="text/csv",
                   key="cv_dl_csv", icon=":material/download:", on_click="ignore")
c2.download_button("All runs CSV", data=sel.to_csv(index=False), file_name=f"runs_{task.name}.csv",
                   mime="text/csv", key="cv_dl_runs", icon=":material/download:", on_click="ignore")
if len(curve_agg):
    c3.download_button("PNG", data=lambda: curves.to_png(chart), file_name=f"{stem}.png", mime="image/png",
                       key="cv_dl_png", icon=":material/image:", on_click="ignore")
    c4.download_button("SVG", data=lambda: curves.to_svg(chart), file_name=f"{stem}.svg", mime="image/svg+xml",
                       key="cv_dl_svg", icon=":material/image:", on_click="ignore")
