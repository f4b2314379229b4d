"""Train: a run spec (or a sweep grid) from a form, the trainable-parameter count before anything
runs, enqueue; and the live queue with progress, loss, ETA, log tail, cancel and retry."""
import pandas as pd
import streamlit as st

from peftcompare import curves, jobs, methods, public, tasks, ui
from peftcompare.spec import OFFLINE_RECIPE, PRECISIONS, RunSpec, field_help, spec_fields
from peftcompare.store import ACTIVE

store = ui.store()
online = ui.hub_online()
owner = ui.visitor_id()
HUB_DATASET = "__hub__"
MODEL_CHOICES = ["builtin:tiny-t5", "google/flan-t5-small", "google/flan-t5-base", "google/flan-t5-large",
                 "builtin:random-flan-t5-small", "builtin:random-flan-t5-base"]
TRAINABLE = methods.trainable_methods()

# -- session state, one block ---------------------------------------------------------------------------
_defaults = {f"tr_{f.name}": f.default for f in spec_fields()}
if not online:
    _defaults.update({f"tr_{k}": v for k, v in OFFLINE_RECIPE.items()})
if public.is_public():  # start inside the instance's limits, so the first click works
    _defaults.update({"tr_train_samples": min(_defaults["tr_train_samples"] or 10**9, public.LIMITS.max_train_samples),
                      "tr_eval_samples": public.LIMITS.max_eval_samples,
                      "tr_num_train_epochs": min(_defaults["tr_num_train_epochs"], public.LIMITS.max_epochs)})
_defaults.update({
    "tr_model_name": ui.default_model(online), "tr_mode": "Single run", "tr_sweep_methods": ["lora", "prompt"],
    "tr_sweep_caps": "4, 8", "tr_sweep_seeds": "42", "tr_sweep_zero_shot": True, "tr_dataset_hub": "",
    "tr_train_path": "", "tr_validation_path": "", "tr_uploads": {}, "tr_flash": None, "tr_was_active": False,
})
for _k, _v in _defaults.items():
    st.session_state.setdefault(_k, _v)
_datasets = [d.name for d in tasks.DATASETS.values() if d.task == st.session_state["tr_task"]]
if st.session_state["tr_dataset"] not in ["", *_datasets, HUB_DATASET]:
    st.session_state["tr_dataset"] = ""  # the task changed: its default dataset


def H(name: str) -> str:
    return field_help(name)


def upload_path(kind: str) -> str:
    """The saved copy of an uploaded file (saved once per upload), else the typed server path."""
    f = st.session_state.get(f"tr_{kind}_upload")
    if f is None:
        return st.session_state[f"tr_{kind}_path"].strip()
    saved = st.session_state["tr_uploads"]
    if f.file_id not in saved:
        saved[f.file_id] = str(ui.save_upload(store, f.name, f.getvalue()))
    return saved[f.file_id]


st.title("Train")
if not ui.can("train"):
    st.info("Training is turned off on this public instance. Browse the stored adapters and curves instead.")
if not online:
    st.caption(f"Offline: `{ui.OFFLINE_MODEL}` and the bundled sample data are the defaults "
               "(the sample sets are small, so runs take seconds). The tiny model starts from random weights, "
               "so the form proposes learning rate 1e-2 and 10 epochs over the whole sample.")

# -- the form ---------------------------------------------------------------------------------------
c1, c2, c3 = st.columns(3)
c1.selectbox("Task", list(tasks.TASKS), key="tr_task", help=H("task"))
task_default = tasks.get_task(st.session_state["tr_task"]).default_dataset
c2.selectbox("Dataset", ["", *_datasets, HUB_DATASET], key="tr_dataset", help=H("dataset"),
             format_func=lambda d: {"": f"{task_default} (task default)", HUB_DATASET: "another Hub dataset ..."}
             .get(d, f"{d} — {tasks.DATASETS[d].description}" if d in tasks.DATASETS else d))
if st.session_state["tr_dataset"] == HUB_DATASET:
    c2.text_input("Hub dataset id", key="tr_dataset_hub", placeholder="owner/name",
                  help="A Hub dataset; name its columns under Data.")
c3.selectbox("Model", list(dict.fromkeys([*MODEL_CHOICES, st.session_state["tr_model_name"]])),
             key="tr_model_name", help=H("model_name"), accept_new_options=True)

st.radio("What to run", ["Single run", "Sweep grid"], key="tr_mode", horizontal=True,
         help="A sweep runs every method x capacity x seed combination, one after another.")
sweep = st.session_state["tr_mode"] == "Sweep grid"
c1, c2, c3 = st.columns(3)
if not sweep:
    c1.selectbox("Method", list(methods.METHODS), key="tr_method", help=H("method"),
                 format_func=lambda m: methods.get_method(m).title)
    m = methods.get_method(st.session_state["tr_method"])
    c2.number_input(f"Capacity ({m.capacity_name or 'none for this method'})", min_value=1, step=1,
                    key="tr_capacity", help=H("capacity"), disabled=m.capacity_name is None)
    c3.number_input("Seed", min_value=0, step=1, key="tr_seed", help=H("seed"))
    st.caption(f"**{m.title}**: {m.help} {m.note}")
else:
    c1.multiselect("Methods", TRAINABLE, key="tr_sweep_methods", help=H("method"),
                   format_func=lambda m: methods.get_method(m).title)
    c2.text_input("Capacities", key="tr_sweep_caps", help=H("capacity") + " Comma-separated; methods "
                  "without a capacity knob run once per seed.")
    c3.text_input("Seeds", key="tr_sweep_seeds", help=H("seed") + " Comma-separated.")
    st.checkbox("Include a zero-shot baseline", key="tr_sweep_zero_shot",
                help="The untouched model on the same evaluation set: the horizontal line on the curves.")

c1, c2, c3 = st.columns(3)
c1.number_input("Training examples (0 = all)", min_value=0, step=50, key="tr_train_samples",
                help=H("train_samples"))
c2.number_input("Evaluation examples (0 = all)", min_value=0, step=50, key="tr_eval_samples",
                help=H("eval_samples"))
c3.number_input("Epochs", min_value=1, step=1, key="tr_num_train_epochs", help=H("num_train_epochs"))

with st.expander("Data: columns, prompt and your own files"):
    c1, c2 = st.columns(2)
    c1.text_input("Input column", key="tr_text_column", help=H("text_column"), placeholder="preset's column")
    c2.text_input("Target column", key="tr_target_column", help=H("target_column"), placeholder="preset's column")
    st.text_input("Prompt template", key="tr_prompt_template", help=H("prompt_template"),
                  placeholder="preset's template, e.g. 'sst2: {text}'")
    uploads_ok = not public.is_public()
    c1, c2 = st.columns(2)
    for col, kind, name in ((c1, "train", "train_file"), (c2, "validation", "validation_file")):
        col.file_uploader(f"{kind.title()} file (JSONL, CSV, parquet)", type=["jsonl", "json", "csv", "parquet"],
                          key=f"tr_{kind}_upload", help=H(name), disabled=not uploads_ok)
        col.text_input(f"... or a {kind} file path on the server", key=f"tr_{kind}_path", help=H(name),
                       disabled=not uploads_ok or st.session_state.get(f"tr_{kind}_upload") is not None)
    if not uploads_ok:
        st.caption("Uploads are turned off on this public instance.")

with st.expander("Training: learning rate, batch, precision, lengths"):
    c1, c2, c3 = st.columns(3)
    c1.number_input("Learning rate", min_value=0.0, step=1e-4, format="%.1e", key="tr_learning_rate",
                    help=H("learning_rate"))
    c2.number_input("Train batch size", min_value=1, step=1, key="tr_per_device_train_batch_size",
                    help=H("per_device_train_batch_size"))
    c3.number_input("Eval batch size", min_value=1, step=1, key="tr_per_device_eval_batch_size",
                    help=H("per_device_eval_batch_size"))
    c1.selectbox("Precision", list(PRECISIONS), key="tr_precision", help=H("precision"))
    c2.number_input("Weight decay", min_value=0.0, step=0.01, key="tr_weight_decay", help=H("weight_decay"))
    c3.number_input("Warm-up ratio", min_value=0.0, max_value=0.99, step=0.05, key="tr_warmup_ratio",
                    help=H("warmup_ratio"))
    c1.number_input("Max input tokens (0 = task default)", min_value=0, step=32, key="tr_max_source_length",
                    help=H("max_source_length"))
    c2.number_input("Max target tokens (0 = task default)", min_value=0, step=8, key="tr_max_target_length",
                    help=H("max_target_length"))

with st.expander("Method options: LoRA alpha, dropout, target modules"):
    c1, c2, c3 = st.columns(3)
    c1.number_input("LoRA alpha (0 = max(16, 2r))", min_value=0, step=1, key="tr_lora_alpha", help=H("lora_alpha"))
    c2.number_input("LoRA dropout", min_value=0.0, max_value=0.99, step=0.05, key="tr_lora_dropout",
                    help=H("lora_dropout"))
    c3.text_input("Target modules", key="tr_target_modules", help=H("target_modules"))


# -- the spec(s) the form describes -------------------------------------------------------------------
def form_specs() -> tuple[RunSpec, list[RunSpec]]:
    values = {f.name: st.session_state[f"tr_{f.name}"] for f in spec_fields()}
    if values["dataset"] == HUB_DATASET:
        values["dataset"] = st.session_state["tr_dataset_hub"].strip()
        if not values["dataset"]:
            raise ValueError("dataset: enter a Hub dataset id like owner/name")
    values["model_name"] = str(values["model_name"] or "").strip()
    values["train_file"] = upload_path("train")
    values["validation_file"] = upload_path("validation")
    if not sweep:
        if not methods.get_method(values["method"]).capacity_name:
            values["capacity"] = RunSpec().capacity  # ignored by the method; keeps the spec valid
        base = RunSpec.from_dict(values)
        return base, [base]
    values["method"] = "lora"
    base = RunSpec.from_dict(values)
    grid = ui.grid_specs(base, list(st.session_state["tr_sweep_methods"]),
                         ui.parse_int_list(st.session_state["tr_sweep_caps"], "capacities"),
                         ui.parse_int_list(st.session_state["tr_sweep_seeds"], "seeds"),
                         bool(st.session_state["tr_sweep_zero_shot"]))
    return base, grid


st.divider()
specs, form_error = [], None
try:
    base, specs = form_specs()
except ValueError as exc:
    form_error = str(exc).splitlines()[0]
    st.error(form_error, icon=":material/error:")

param_slot = st.empty()
if specs:
    runs_now = store.list_runs()
    todo = [s for s in specs if store.find_completed(s) is None]
    secs, measured = ui.estimate_seconds(todo if sweep else specs, runs_now, online, ui.device_summary()["device"])
    eta = ui.fmt_duration(secs) if secs is not None else "unknown (all examples of a Hub dataset)"
    how = "from measured throughput of past runs" if measured else "a conservative guess: no finished run yet"
    if sweep:
        st.markdown(f"**{len(specs)} runs** in the grid, {len(specs) - len(todo)} already stored, "
                    f"**{len(todo)} to run** · estimated duration **{eta}** ({how})")
    else:
        st.markdown(f"Estimated duration **{eta}** ({how})"
                    + (" · an identical run is already stored or queued" if not todo else ""))

if st.session_state["tr_flash"]:
    kind, text = st.session_state["tr_flash"]
    (st.success if kind == "ok" else st.error)(text)
    st.session_state["tr_flash"] = None

if st.button("Enqueue", type="primary", key="tr_enqueue", icon=":material/play_arrow:",
             disabled=not ui.can("train") or bool(form_error)):
    try:
        todo = [s for s in specs if store.find_completed(s) is None] if sweep else specs
        if not todo:
            raise ValueError("sweep: every run of this grid is already stored or queued")
        for s in todo:
            public.check_spec(s)
        public.check_visitor_quota(store, owner)
        if public.is_public() and len(todo) > public.LIMITS.jobs_per_visitor:
            raise ValueError(f"sweep: at most {public.LIMITS.jobs_per_visitor} run(s) per visitor on this "
                             "public instance")
        from peftcompare.preflight import preflight_all  # model, method, files, columns: before any record

        with st.spinner("Checking the model and the data ..."):
            ui.import_stack()
            preflight_all(todo)
        ids = [jobs.enqueue(store, s, owner=owner) for s in todo]
        jobs.ensure_worker(store)
        st.session_state["tr_flash"] = ("ok", f"Enqueued {len(ids)} run(s): " + ", ".join(ids[:4])
                                        + (" ..." if len(ids) > 4 else ""))
        st.rerun()
    except ValueError as exc:
        st.error(str(exc).splitlines()[0], icon=":material/error:")


# -- the queue --------------------------------------------------------------------------------------
def _cancel(run_id: str) -> None:
    ok = store.request_cancel(run_id)
    st.toast(f"Cancel requested for {run_id}" if ok else f"{run_id} is no longer queued or running")


def _retry(run_id: str) -> None:
    run = store.get(run_id)
    try:
        public.check_spec(run["spec"])
        public.check_visitor_quota(store, owner)
        new = jobs.retry(store, run_id, owner=owner)
        jobs.ensure_worker(store)
        st.toast(f"Retrying as {new}")
    except ValueError as exc:
        st.toast(str(exc).splitlines()[0], icon=":material/error:")


def _mine(run: dict) -> bool:
    return not public.is_public() or run.get("owner") == owner


def _active_run(run: dict) -> None:
    with st.container(border=True):
        st.markdown(f"**{ui.run_label(run)}** · `{run['run_id']}` · :blue[{run['status']}]")
        if run["status"] == "queued":
            st.caption("Waiting for the run before it to finish.")
        else:
            total = run.get("total_steps") or 0
            st.progress(min(1.0, float(run.get("progress") or 0.0)),
                        text=f"step {run.get('step') or 0} of {total}" if total else
                        "starting: loading the model and the data ...")
            c1, c2, c3 = st.columns(3)
            loss = run.get("current_loss")
            c1.metric("Current loss", f"{loss:.4f}" if loss is not None else "—")
            c2.metric("ETA", ui.fmt_duration(run.get("eta_s")) if run.get("eta_s") is not None else "—")
            c3.metric("Trainable params", ui.fmt_int(run.get("trainable_params")))
            steps = store.steps(run["run_id"])
            if steps:
                st.altair_chart(curves.loss_chart(pd.DataFrame(steps), height=180), width="stretch")
            tail = ui.log_tail(store.log_path(run["run_id"]))
            st.code(tail or "(no output yet)", language=None)
        if run.get("cancel_requested"):
            st.caption("Cancel requested: stopping ...")
        elif _mine(run):
            st.button("Cancel", key=f"tr_cancel_{run['run_id']}", icon=":material/stop:",
                      on_click=_cancel, args=(run["run_id"],))


def queue_view() -> None:
    runs = store.list_runs()
    active = [r for r in runs if r["status"] in ACTIVE]
    if st.session_state["tr_was_active"] and not active:
        st.session_state["tr_was_active"] = False
        st.rerun()  # a full rerun stops the auto-refresh and updates the counts
    st.session_state["tr_was_active"] = bool(active)
    if not runs:
        st.caption("No runs yet. Configure one above and press **Enqueue**.")
        return
    if not active:
        st.caption("Nothing is running or waiting.")
    for run in active:
        _active_run(run)
    finished = [r for r in reversed(runs) if r["status"] not in ACTIVE][:8]
    if finished:
        st.markdown("**Recent**")
    for run in finished:
        metric = ui.primary_metric(run["task"])
        value = (run.get("metrics") or {}).get(metric)
        colour = {"completed": "green", "failed": "red", "cancelled": "orange", "interrupted": "orange"}
        text = (f":{colour.get(run['status'], 'gray')}[{run['status']}] **{ui.run_label(run)}**"
                + (f" · {metric} {value:.4f}" if value is not None else "")
                + (f" · {run['error']}" if run.get("error") and run["status"] != "completed" else ""))
        c1, c2 = st.columns([6, 1])
        c1.markdown(text)
        if run["status"] in ("failed", "cancelled", "interrupted") and _mine(run) and ui.can("train"):
            c2.button("Retry", key=f"tr_retry_{run['run_id']}", icon=":material/replay:", on_click=_retry,
                      args=(run["run_id"],))


st.subheader("Queue")
_active_now = store.list_runs(status=ACTIVE)
if any(r["status"] == "queued" for r in _active_now) and not jobs.worker_running(store) and ui.can("train"):
    jobs.ensure_worker(store)  # the worker exits when idle or died: queued runs must not wait forever
st.fragment(run_every=2.0 if _active_now else None)(queue_view)()

# -- last: the parameter count (it may import torch the first time, so it must not hold up the page) ----
if specs:
    with param_slot.container():
        unique = list({(s.model_name, s.method, s.capacity): s for s in specs
                       if methods.get_method(s.method).trains}.values())[:12]
        rows, problem = [], None
        with st.spinner("Counting trainable parameters ..."):
            for s in unique:
                try:
                    trainable, total = ui.count_params(s.to_json())
                except ValueError as exc:
                    problem = str(exc).splitlines()[0]
                    break
                rows.append({"method": methods.get_method(s.method).title,
                             "capacity": s.capacity if methods.get_method(s.method).capacity_name else None,
                             "trainable": trainable, "total": total, "% trainable": 100 * trainable / total})
        if problem:
            st.warning(problem, icon=":material/warning:")
        elif len(rows) == 1:
            r = rows[0]
            st.metric("Trainable parameters", f"{r['trainable']:,}",
                      help="Counted by building the model and applying the method, like "
                           "`python -m peftcompare params`.")
            st.caption(f"{r['% trainable']:.3f}% of {r['total']:,} parameters of {specs[0].model_name}")
        elif rows:
            st.markdown("**Trainable parameters**")
            st.dataframe(pd.DataFrame(rows), hide_index=True, width="content",
                         column_config={"trainable": st.column_config.NumberColumn(format="localized"),
                                        "total": st.column_config.NumberColumn(format="localized"),
                                        "% trainable": st.column_config.NumberColumn(format="%.3f")})
        elif specs[0].method == "zero_shot":
            st.caption("Zero-shot trains nothing: it evaluates the untouched model.")
