"""Curves: per task, the chosen metric against capacity or trainable parameters (log scale), one line
per method with the spread over seeds, reference rules, the Pareto front; loss curves; the table."""
import pandas as pd
import streamlit as st

from peftcompare.service import analysis, curves, jobs, report, significance, summary
from peftcompare.core import methods, tasks
from peftcompare.core.labels import method_label
from peftcompare.webui import ui

store = ui.store()
X_OPTIONS = list(curves.X_FIELDS)
SPREADS = {"ci": "mean, 95 % t-interval over seeds", "std": "mean ± std over seeds",
           "minmax": "min – max over seeds"}
ACTIVE = ("queued", "running")

# -- session state, one block (widget values persist when the page is left: ui.persist) -----------------
for _k, _v in {"cv_task": "classification", "cv_metric": None, "cv_x": "trainable_params", "cv_spread": "ci",
               "cv_model": None, "cv_dataset": None, "cv_loss_runs": None, "cv_loss_smooth": True,
               "cv_loss_log": True}.items():
    ui.persist(_k, _v)
for _k, _v in {"cv_loss_options": [], "cv_flash": None}.items():
    st.session_state.setdefault(_k, _v)
if st.session_state["cv_metric"] not in tasks.get_task(st.session_state["cv_task"]).metrics:
    st.session_state["cv_metric"] = tasks.get_task(st.session_state["cv_task"]).metric

st.title("Curves")
c1, c2, c3, c4 = st.columns(4)
c1.selectbox("Task", list(tasks.TASKS), key="cv_task")
task = tasks.get_task(st.session_state["cv_task"])
c2.selectbox("Metric", list(task.metrics), key="cv_metric", format_func=lambda m: tasks.metric_title(m))
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
sel_runs = [r for r in store.list_runs(task=task.name) if r.get("spec") is not None
            and r["model_name"] == st.session_state["cv_model"] and r["spec"].dataset == st.session_state["cv_dataset"]]

if st.session_state["cv_flash"]:
    kind, text = st.session_state["cv_flash"]
    (st.success if kind == "ok" else st.error)(text)
    st.session_state["cv_flash"] = None

# per method and capacity the learning rate chosen on dev (averaged over seeds) is the one drawn; runs at the
# other rates of a search stay in the store, the loss overlay and the CSV of all runs
shown_ids = {r["run_id"] for r in summary.selected_runs(sel_runs, task.name)}
searched = sel[(sel["status"] == "completed") & ~sel["run_id"].isin(shown_ids)]
agg = analysis.aggregate(sel[sel["run_id"].isin(shown_ids)], metric)
rows = summary.summarize(sel_runs, task.name)
paired = significance.adjacent(store, rows, sel_runs)
curve_agg, refs = curves.split_references(agg)
# every point is a point of the front, zero-shot (0 trainable parameters) and full fine-tuning included
pareto = analysis.pareto_front(agg, x=x if x in ("train_runtime", "train_flops", "stored_params") else "trainable_params")
agg = agg.assign(pareto=pareto.reindex(agg.index).fillna(False).astype(bool))


def vs_next(method: str, capacity) -> str:
    """The paired test of this row against the next one down the ranking (primary metric, same examples)."""
    row = next((r for r in rows if r["method"] == method and r["capacity"] == capacity), None)
    if row is None:
        return ""
    ranked = sorted([r for r in rows if r["model_name"] == row["model_name"]], key=lambda r: -r["mean"])
    i = next(i for i, r in enumerate(ranked) if r is row)
    if i + 1 >= len(ranked):
        return ""
    test = paired.get(significance._row_key(row))
    if test is None:
        return "no stored answers"
    sign = "≈" if not test["significant"] else ">"
    return f"{sign} {ranked[i + 1]['label']} ({test['difference']:+.4f}, p={test['p_value']:.3f})"


agg = agg.assign(vs_next=[vs_next(m, c) for m, c in zip(agg["method"], agg["capacity"])])
title = f"{task.name} · {st.session_state['cv_dataset']} · {st.session_state['cv_model']}"
chart = curves.efficiency_chart(agg, metric, x, st.session_state["cv_spread"], pareto, title=title)
if len(curve_agg):
    st.altair_chart(chart, width="stretch", key="cv_chart")
    missing = sorted({methods.get_method(m).title for m in curve_agg.loc[curve_agg["capacity"].fillna(0) <= 0,
                                                                         "method"]})
    if x == "capacity" and missing:
        st.caption(f"Without a capacity knob, not on this axis: {', '.join(missing)} "
                   "(switch the x axis to trainable parameters to see them).")
    st.caption("Ringed points joined by the dotted line form the Pareto front: no other point, zero-shot and "
               "full fine-tuning included, has as few or fewer trainable parameters and as high or higher a "
               "score. Dashed horizontal lines are the references.")
    beaten_by = [r for r in refs.itertuples() if agg.loc[r.Index, "pareto"]]
    if not agg.loc[curve_agg.index, "pareto"].any() and beaten_by:
        best = max(beaten_by, key=lambda r: r.mean)
        st.info(f"No adapter is on the Pareto front yet: {methods.get_method(best.method).title} scores "
                f"{best.mean:.4f} with {ui.fmt_int(best.trainable_params)} trainable parameters, as well as or "
                "better than every adapter trained so far.", icon=":material/info:")
else:
    st.info("Only reference runs (zero-shot or full fine-tuning) so far: train an adapter to draw a curve.")
if len(refs):
    st.caption(" · ".join(f"{methods.get_method(r.method).title}: {r.mean:.4f}" for r in refs.itertuples()))
# -- how the numbers were chosen, and how sure they are ---------------------------------------------------------
st.caption(f"Each point: the validation {tasks.metric_title(metric)} averaged over seeds, at the learning rate "
           "with the best dev score (averaged over seeds) for its method and capacity. Bars: "
           + SPREADS[st.session_state["cv_spread"]]
           + (" (two-sided Student t-interval, n − 1 degrees of freedom; none from one seed)."
              if st.session_state["cv_spread"] == "ci" else "."))
few = agg[(agg["n"] < summary.MIN_SEEDS) & agg["method"].map(methods.trains)]  # zero-shot has no seed to vary
if len(few):
    st.warning("Fewer than 3 seeds, so the interval is wide or missing: "
               + ", ".join(f"{method_label(m, c)} (n={n})" for m, c, n in
                           zip(few["method"], few["capacity"], few["n"])) + ".", icon=":material/warning:")
on_validation = agg[agg["selected_on"].fillna("").str.contains("validation")]
if len(on_validation):
    st.warning("Best epoch chosen on the validation split itself (selection=validation, the original "
               "experiment's protocol: optimistic): "
               + ", ".join(method_label(m, c) for m, c in zip(on_validation["method"],
                                                                       on_validation["capacity"]))
               + ".", icon=":material/warning:")
ties = [v for v in agg["vs_next"] if v.startswith("≈")]
if ties:
    st.caption("Not significantly different from the next row down (paired bootstrap on the same validation "
               f"examples, p ≥ 0.05, {tasks.metric_title(task.metric)}): "
               + "; ".join(f"{method_label(m, c)} {v}" for m, c, v in
                           zip(agg["method"], agg["capacity"], agg["vs_next"]) if v.startswith("≈")))
if len(searched):
    st.caption(f"{len(searched)} completed run(s) at a learning rate that was not selected are left out of the "
               "curve and the table (the rates tried are in the table's tooltip and the report).")

# -- the zero-shot baseline: one click where the runs have none ----------------------------------------------
zs_spec = curves.missing_zero_shot(sel_runs)
if zs_spec is not None:
    with st.container(border=True):
        n_eval = f"the same {zs_spec.eval_samples}" if zs_spec.eval_samples else "all the"
        st.markdown(f"**No zero-shot baseline for these runs.** The untouched `{zs_spec.model_name}` on {n_eval} "
                    f"{zs_spec.dataset} evaluation examples is the reference every adapter has to beat, and a "
                    "point of the Pareto front.")
        if st.button("Add the zero-shot baseline", key="cv_add_zero_shot", type="primary",
                     icon=":material/add:", disabled=not ui.can("train"),
                     help="Queues one evaluation run (nothing trains); the worker runs it in seconds."):
            try:
                with st.spinner("Queueing the zero-shot run ..."):
                    ui.import_stack()
                    new_id = jobs.enqueue(store, zs_spec, owner=ui.visitor_id())
                    jobs.ensure_worker(store)
                st.session_state["cv_flash"] = ("ok", "Zero-shot baseline queued: its line appears here when it "
                                                      "has run.")
            except ValueError as exc:
                st.session_state["cv_flash"] = ("error", ui.user_message(exc))
            st.rerun()
        if not ui.can("train"):
            st.caption("Training and evaluation runs are turned off on this public instance.")


def follow_queue() -> None:
    """While runs of this selection are queued or running, check every few seconds; redraw the page (its
    chart and table) once they have finished, which also stops the checking."""
    active = [r for r in store.list_runs(status=ACTIVE, task=task.name)
              if r["run_id"] in {s["run_id"] for s in sel_runs}]
    if not active:
        st.rerun()
    st.caption(f"{len(active)} run(s) of this selection are queued or running: the chart updates when they "
               "have finished.")


if any(r["status"] in ACTIVE for r in sel_runs):
    st.fragment(run_every=2.0)(follow_queue)()

# -- training-loss curves -------------------------------------------------------------------------------
st.subheader("Training loss")
trained = sel[(sel["status"] == "completed") & sel["method"].map(
    lambda m: m in methods.METHODS and methods.get_method(m).trains)].sort_values("created_at")
def short_label(run: dict) -> str:  # task, model and dataset are the page's selection: not repeated per run
    m = methods.METHODS.get(run["method"])
    cap = f" {run['capacity']}" if m and m.capacity_name else ""
    return f"{m.title if m else run['method']}{cap} · seed {run['seed']} · {run['run_id'][-6:]}"


labels = {r["run_id"]: short_label(r) for r in sel_runs}
options = list(trained["run_id"])
chosen = st.session_state["cv_loss_runs"]
# every completed run by default; a selection the user has not narrowed follows new runs as they complete
if chosen is None or set(chosen) >= set(st.session_state["cv_loss_options"]):
    chosen = options
st.session_state["cv_loss_runs"] = [r for r in chosen if r in options]
st.session_state["cv_loss_options"] = options
st.multiselect("Runs", options, key="cv_loss_runs", format_func=lambda r: labels.get(r, r),
               placeholder="all runs are shown by default")
c2, c3, _ = st.columns([1, 1, 4])
c2.toggle("Smooth", key="cv_loss_smooth", help="A moving average over about 5% of each run's steps; the raw "
          "steps stay faint behind it.")
c3.toggle("Log scale", key="cv_loss_log", help="Loss on a logarithmic axis, so the small late losses are not "
          "flattened against the first steps.")
steps = store.steps(st.session_state["cv_loss_runs"])
if steps:
    run_methods = dict(zip(trained["run_id"], trained["method"]))
    st.altair_chart(curves.loss_overlay(pd.DataFrame(steps), run_methods, labels,
                                        smooth=st.session_state["cv_loss_smooth"],
                                        log_y=st.session_state["cv_loss_log"]),
                    width="stretch", key="cv_loss_chart")
    st.caption("One line per run in its method's colour; click a method in the legend to pick it out, hover "
               "a line for the run.")
elif options:
    st.caption("Choose runs to overlay their training loss.")
else:
    st.caption("No trained run here yet (zero-shot trains nothing).")

# -- the table and downloads -----------------------------------------------------------------------------
st.subheader("Table")
table = agg.assign(method=agg["method"].map(lambda m: methods.get_method(m).title),
                   capacity=agg["capacity"].where(agg["method"].map(
                       lambda m: methods.get_method(m).capacity_name is not None)).astype("Int64"))
# std, min and max stay in the aggregated CSV: the interval says more, and the runs stay in view
st.dataframe(table[["method", "capacity", "trainable_params", "mean", "ci_low", "ci_high", "n", "pareto", "run_ids",
                    "learning_rate", "selected_on", "vs_next"]],
             hide_index=True, width="stretch", key="cv_table", placeholder="—",
             column_config={"method": st.column_config.TextColumn("Method"),
                            "capacity": st.column_config.NumberColumn("Capacity", format="%d"),
                            "trainable_params": st.column_config.NumberColumn("Trainable params",
                                                                              format="localized"),
                            "mean": st.column_config.NumberColumn(tasks.metric_title(metric),
                                                                  format="%.4f", help="Mean over seeds"),
                            "std": st.column_config.NumberColumn("Std", format="%.4f"),
                            "min": st.column_config.NumberColumn("Min", format="%.4f"),
                            "max": st.column_config.NumberColumn("Max", format="%.4f"),
                            "n": st.column_config.NumberColumn("Seeds", help="Fewer than 3: a wide interval, "
                                                               "or none from one seed"),
                            "ci_low": st.column_config.NumberColumn("95 % CI low", format="%.4f",
                                                                    help="Student t-interval over seeds"),
                            "ci_high": st.column_config.NumberColumn("95 % CI high", format="%.4f",
                                                                     help="Student t-interval over seeds"),
                            "learning_rate": st.column_config.TextColumn(
                                "Learning rate", help="The rate selected for this method and capacity: the best "
                                "dev score averaged over seeds"),
                            "selected_on": st.column_config.TextColumn(
                                "Selected on", help="dev: a split of the training data; validation: the original "
                                "experiment's protocol (optimistic)"),
                            "vs_next": st.column_config.TextColumn(
                                "vs next row", help="Paired bootstrap test against the next row down the "
                                "ranking, on the same validation examples (primary metric); ≈: not significant"),
                            "pareto": st.column_config.CheckboxColumn("Pareto front"),
                            "run_ids": st.column_config.TextColumn("Runs")})
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
# the whole experiment in one file a reviewer opens offline: protocol, curves with bands, table, tests, examples
st.download_button("Experiment report (HTML)", data=lambda: report.build_for_store(store, task.name),
                   file_name=f"report_{task.name}.html", mime="text/html", key="cv_dl_report",
                   icon=":material/description:", on_click="ignore",
                   help="One self-contained HTML file of every completed run of this task: protocol, curves with "
                        "95 % intervals, the table with paired tests, deltas against zero-shot and full "
                        "fine-tuning, a few examples side by side, and the library versions.")
