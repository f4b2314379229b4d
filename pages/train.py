"""Train: a run spec (or a sweep grid) from a form, the trainable-parameter count before anything
runs, enqueue; and the live queue with progress, loss, ETA, log tail, cancel and retry."""
import time

import pandas as pd
import streamlit as st

from peftcompare.service import curves, jobs, policy as public
from peftcompare.core import methods, tasks
from peftcompare.service import runs
from peftcompare.webui import ui
from peftcompare.core.spec import BUDGETS, OFFLINE_RECIPE, PRECISIONS, SELECTIONS, RunSpec, field_help, spec_fields
from peftcompare.service.store import ACTIVE

store = ui.store()
online = ui.hub_online()
owner = ui.visitor_id()
HUB_DATASET = "__hub__"
MODEL_CHOICES = ["builtin:tiny-t5", "google/flan-t5-small", "google/flan-t5-base", "google/flan-t5-large",
                 "builtin:random-flan-t5-small", "builtin:random-flan-t5-base"]
TRAINABLE = ui.method_choices(trainable=True)  # grouped by family

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
    "tr_sweep_seeds": "42", "tr_sweep_zero_shot": True, "tr_sweep_lrs": "", "tr_sweep_pack": False,
    "tr_dataset_hub": "",
    "tr_train_path": "", "tr_validation_path": "", "tr_uploads": {}, "tr_flash": None, "tr_queue_live": False,
    "tr_queue_msg": None,
})
for _k, _v in _defaults.items():
    st.session_state.setdefault(_k, _v)
_datasets = [d.name for d in tasks.DATASETS.values() if d.task == st.session_state["tr_task"]]
if st.session_state.get("tr_dataset_task") != st.session_state["tr_task"]:
    # The task changed: back to its default dataset. The value is set even when it is "" already: the
    # Dataset box keeps its identity across tasks (its key), so without a value from the script the browser
    # keeps showing the old task's label ("sst2 (task default)" under summarization) as a stale choice.
    keep = st.session_state["tr_dataset"] in (HUB_DATASET, *_datasets)
    st.session_state["tr_dataset"] = st.session_state["tr_dataset"] if keep else ""
    st.session_state["tr_dataset_task"] = st.session_state["tr_task"]


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
    _r = OFFLINE_RECIPE
    st.caption(f"Offline: `{ui.OFFLINE_MODEL}` and the bundled sample data are the defaults. The tiny model has "
               "a few hundred thousand weights (pretrained on generated text, never on movie reviews), so the "
               f"form proposes learning rate {_r['learning_rate']:g}, {_r['num_train_epochs']} epochs and "
               f"{_r['train_samples']} training examples; the estimate below the form says how long that takes "
               "on this machine.")

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
with st.expander(f"The {len(TRAINABLE)} methods, by family"):
    st.markdown(ui.method_families_markdown())
sweep = st.session_state["tr_mode"] == "Sweep grid"
c1, c2, c3 = st.columns(3)
if not sweep:
    c1.selectbox("Method", ui.method_choices(), key="tr_method", help=H("method"),
                 format_func=ui.method_choice_label)
    m = methods.get_method(st.session_state["tr_method"])
    # no min_value: a number input clamps what is typed below its minimum back without a word (capacity 0
    # kept the old value); the spec check below says what is wrong instead
    c2.number_input(f"Capacity ({m.capacity_name or 'none for this method'})", step=1,
                    key="tr_capacity", help=H("capacity"), disabled=m.capacity_name is None)
    c3.number_input("Seed", step=1, key="tr_seed", help=H("seed"))
    st.caption(f"**{m.title}**: {m.help} {m.note}" + (f" *{m.method_family}*: "
               f"{methods.METHOD_FAMILIES[m.method_family]}" if m.method_family else "")
               + (f" Paper: {m.paper}." if m.paper else ""))
else:
    c1.multiselect("Methods", TRAINABLE, key="tr_sweep_methods", help=H("method"),
                   format_func=ui.method_choice_label)
    c2.text_input("Seeds", key="tr_sweep_seeds", help=H("seed") + " Comma-separated.")
    c3.checkbox("Include a zero-shot baseline", key="tr_sweep_zero_shot",
                help="The untouched model on the same evaluation set: the horizontal line on the curves.")
    # one capacities box per chosen method, prefilled from its reference grid
    knobbed = [methods.get_method(n) for n in st.session_state["tr_sweep_methods"]
               if methods.get_method(n).capacity_name]
    for i, mm in enumerate(knobbed):
        if i % 3 == 0:
            cols = st.columns(3)
        key = f"tr_sweep_caps_{mm.name}"
        st.session_state.setdefault(key, ", ".join(map(str, ui.default_capacities(mm.name, online))))
        cols[i % 3].text_input(f"{mm.title}: {mm.capacity_name}", key=key,
                               help=f"Comma-separated {mm.capacity_name} values for {mm.title} "
                                    f"(1 to {mm.max_capacity}); one run per value and seed.")
    no_knob = [methods.get_method(n).title for n in st.session_state["tr_sweep_methods"]
               if not methods.get_method(n).capacity_name]
    if no_knob:
        st.caption(f"{', '.join(no_knob)}: no capacity knob, one run per seed.")
    # a learning-rate search: every (method, capacity, seed) at each rate; the curves keep the best rate on dev
    _rate_base = RunSpec(model_name=str(st.session_state["tr_model_name"] or "builtin:tiny-t5").strip() or
                         "builtin:tiny-t5", task=st.session_state["tr_task"])
    _own = ", ".join(f"{methods.get_method(n).title} {runs.default_learning_rate(n, _rate_base):g}"
                     for n in st.session_state["tr_sweep_methods"])
    st.text_input("Learning rates", key="tr_sweep_lrs", placeholder="each method's own rate, e.g. 1e-4, 5e-4, 1e-3",
                  help="Comma-separated learning rates to search: every method, capacity and seed trains at each "
                       "one, and the curves show, per method and capacity, the rate with the best dev score "
                       "averaged over seeds. Empty: each method at its own default rate.")
    if _own:
        st.caption(f"Empty learning rates: each method at its own default ({_own}); the Learning rate under "
                   "Training applies to single runs.")
    st.toggle("Train together", key="tr_sweep_pack",
              help=f"Up to {ui.PACK_SIZE} runs of the grid share one pass over the frozen model: their batches "
                   "are stacked, each run's adapter applied to its own rows, in training and in evaluation. Faster; "
                   "each run keeps its own data order, initialisation, optimizer and result. LoRA and rsLoRA pack "
                   "across ranks, prompt and prefix tuning across seeds and learning rates at one length, on "
                   "encoder-decoder models (T5, BART); the others train one at a time and their record says why.")

c1, c2, c3 = st.columns(3)
c1.number_input("Training examples (0 = all)", step=50, key="tr_train_samples", help=H("train_samples"))
c2.number_input("Evaluation examples (0 = all)", step=50, key="tr_eval_samples", help=H("eval_samples"))
c3.number_input("Epochs", step=1, key="tr_num_train_epochs", help=H("num_train_epochs"))

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
    c1.number_input("Learning rate", step=1e-4, format="%.1e", key="tr_learning_rate", help=H("learning_rate"))
    c2.number_input("Train batch size", step=1, key="tr_per_device_train_batch_size",
                    help=H("per_device_train_batch_size"))
    c3.number_input("Eval batch size", step=1, key="tr_per_device_eval_batch_size",
                    help=H("per_device_eval_batch_size"))
    c1.selectbox("Precision", list(PRECISIONS), key="tr_precision", help=H("precision"))
    c2.number_input("Weight decay", step=0.01, key="tr_weight_decay", help=H("weight_decay"))
    c3.number_input("Warm-up ratio", step=0.05, key="tr_warmup_ratio", help=H("warmup_ratio"))
    c1.number_input("Max input tokens (0 = task default)", step=32, key="tr_max_source_length",
                    help=H("max_source_length"))
    c2.number_input("Max target tokens (0 = task default)", step=8, key="tr_max_target_length",
                    help=H("max_target_length"))
    # the comparison protocol: where the best epoch is chosen, and what every method gets the same of
    c1, c2, c3, c4 = st.columns(4)
    c1.selectbox("Best epoch chosen on", list(SELECTIONS), key="tr_selection", help=H("selection"),
                 format_func={"dev": "dev split (from training data)",
                              "validation": "validation (original protocol)"}.get)
    c2.number_input("Dev examples (0 = 10 %, at least 100)", step=50, key="tr_dev_samples", help=H("dev_samples"),
                    disabled=st.session_state["tr_selection"] != "dev")
    c3.selectbox("Budget", list(BUDGETS), key="tr_budget", help=H("budget"))
    c4.number_input("Budget amount", step=100.0, format="%g", key="tr_budget_value", help=H("budget_value"),
                    disabled=st.session_state["tr_budget"] == "epochs")

with st.expander("Method options: LoRA alpha, dropout, target modules"):
    c1, c2, c3 = st.columns(3)
    c1.number_input("LoRA alpha (0 = max(16, 2r))", step=1, key="tr_lora_alpha", help=H("lora_alpha"))
    c2.number_input("LoRA dropout", step=0.05, key="tr_lora_dropout", help=H("lora_dropout"))
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
    chosen = list(st.session_state["tr_sweep_methods"])
    caps = {n: ui.parse_int_list(st.session_state.get(f"tr_sweep_caps_{n}", ""),
                                 f"capacities for {methods.get_method(n).title}")
            for n in chosen if methods.get_method(n).capacity_name}
    rates = ui.parse_float_list(st.session_state["tr_sweep_lrs"], "learning rates")
    grid = ui.grid_specs(base, chosen, caps, ui.parse_int_list(st.session_state["tr_sweep_seeds"], "seeds"),
                         bool(st.session_state["tr_sweep_zero_shot"]), rates or None, method_rates=True)
    return base, grid


st.divider()
specs, form_error = [], None
try:
    base, specs = form_specs()
except ValueError as exc:
    form_error = ui.user_message(exc)
    st.error(form_error, icon=":material/error:")

param_slot = st.empty()
todo, duplicate = [], None
if specs:
    runs_now = store.list_runs()
    twins = [store.find_completed(s) for s in specs]
    todo = [s for s, t in zip(specs, twins) if t is None]
    duplicate = None if sweep or twins[0] is None else twins[0]
    est = ui.estimate(todo if sweep else specs, runs_now, online, ui.device_summary()["device"])
    eta = ui.fmt_duration(est.seconds) if est.seconds is not None else "unknown"
    if sweep:
        st.markdown(f"**{len(specs)} runs** in the grid, {len(specs) - len(todo)} already stored, "
                    f"**{len(todo)} to run** · estimated duration **{eta}**")
    else:
        st.markdown(f"Estimated duration **{eta}**")
    st.caption(f"Start-up, training and evaluation included. {est.basis}")

enqueue_slot = st.empty()  # filled last: the button waits for the model check


# -- the queue --------------------------------------------------------------------------------------
def _queue_message(kind: str, text: str) -> None:
    """A message for the queue area. Callbacks must not draw (inside the queue's fragment Streamlit warns
    that their elements land at the top of the app); the queue shows it for a while instead."""
    st.session_state["tr_queue_msg"] = (kind, text, time.time() + 20)


def _cancel(run_id: str) -> None:
    ok = store.request_cancel(run_id)
    _queue_message("ok" if ok else "info", f"Cancel requested for {run_id}." if ok else
                   f"{run_id} is no longer queued or running.")


def _retry(run_id: str) -> None:
    try:
        ui.import_stack()  # the preflight loads the data
        out = jobs.retry(store, run_id, owner=owner)
    except ValueError as exc:
        _queue_message("error", ui.user_message(exc))
        return
    if out.run_ids:
        jobs.ensure_worker(store)
        _queue_message("ok", f"Queued again as {out.run_ids[0]}.")
    else:
        _, twin = out.skipped[0]
        state = "already completed" if twin["status"] == "completed" else f"already {twin['status']}"
        _queue_message("info", f"Not queued: an identical run is {state} ({twin['run_id']}). Change the seed "
                               "or a setting on the form to train another one.")
    # The whole page reruns, not only the queue: the queue's refresh interval is chosen by a full run
    # (none while nothing is active), so a fragment-only rerun left the new run "queued" on screen forever.
    st.rerun()


def _mine(run: dict) -> bool:
    return not public.is_public() or run.get("owner") == owner


def _active_run(run: dict, runs: list[dict]) -> None:
    with st.container(border=True):
        st.markdown(f"**{ui.run_label(run)}** · `{run['run_id']}` · :blue[{run['status']}]")
        if run["status"] == "queued":
            first = next((r for r in runs if r["status"] in ACTIVE), None)
            st.caption("Queued: the worker is starting it ..." if first is run else
                       "Queued: waiting for the run before it to finish.")
        else:
            total = run.get("total_steps") or 0
            st.progress(min(1.0, float(run.get("progress") or 0.0)),
                        text=f"step {run.get('step') or 0} of {total}" if total else
                        "starting: loading the model and the data ...")
            c1, c2, c3 = st.columns(3)
            loss = run.get("current_loss")
            c1.metric("Current loss", f"{loss:.4f}" if loss is not None else "—")
            eta = ui.live_eta(run, runs, online)
            c2.metric("ETA", ui.fmt_duration(eta) if eta is not None else "—",
                      help="The training steps left at this run's pace, plus the evaluation passes still to "
                           "come and saving the adapter.")
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
    if bool(active) != st.session_state["tr_queue_live"]:
        # the refresh interval belongs to the last full run: a run that started or ended since (retry, cancel,
        # the last run finishing, a run queued elsewhere) needs a full rerun to start or stop the refresh
        st.session_state["tr_queue_live"] = bool(active)
        st.rerun()
    msg = st.session_state["tr_queue_msg"]
    if msg and time.time() < msg[2]:
        {"ok": st.success, "info": st.info}.get(msg[0], st.error)(msg[1])
    if not runs:
        st.caption("No runs yet. Configure one above and press **Enqueue**.")
        return
    if not active:
        st.caption("Nothing is running or waiting.")
    for run in active:
        _active_run(run, runs)
    finished = [r for r in reversed(runs) if r["status"] not in ACTIVE][:8]
    if finished:
        st.markdown("**Recent**")
    for run in finished:
        metric = ui.primary_metric(run["task"])
        value = (run.get("metrics") or {}).get(metric)
        colour = {"completed": "green", "failed": "red", "cancelled": "orange", "interrupted": "orange"}
        text = (f":{colour.get(run['status'], 'gray')}[{run['status']}] **{ui.run_label(run)}**"
                + (f" · {metric} {value:.4f}" if value is not None else "")
                + (f" · {ui.user_message(run['error'])}" if run.get("error") and run["status"] != "completed"
                   else ""))
        c1, c2 = st.columns([6, 1])
        c1.markdown(text)
        if run["status"] in ("failed", "cancelled", "interrupted") and _mine(run) and ui.can("train"):
            c2.button("Retry", key=f"tr_retry_{run['run_id']}", icon=":material/replay:", on_click=_retry,
                      args=(run["run_id"],))


st.subheader("Queue")
_active_now = store.list_runs(status=ACTIVE)
if any(r["status"] == "queued" for r in _active_now) and not jobs.worker_running(store) and ui.can("train"):
    jobs.ensure_worker(store)  # the worker exits when idle or died: queued runs must not wait forever
st.session_state["tr_queue_live"] = bool(_active_now)
st.fragment(run_every=2.0 if _active_now else None)(queue_view)()

# -- last: the model check and the parameter count (they may import torch the first time, so they must not hold
# up the rest of the page), then the Enqueue button, which stays off while the model cannot be used ------------
model_problem = None
if specs:
    with param_slot.container():
        checked = list({(s.model_name, s.method, s.capacity): s for s in specs}.values())[:12]
        rows = []
        with st.spinner("Checking the model and counting trainable parameters ..."):
            for s in checked:
                try:
                    runs.check_model(s)  # the queue's own model check, cached
                    if not methods.get_method(s.method).trains:
                        continue
                    trainable, total = ui.count_params(s.to_json())
                except ValueError as exc:
                    model_problem = ui.user_message(exc)
                    break
                rows.append({"method": methods.get_method(s.method).title,
                             "capacity": s.capacity if methods.get_method(s.method).capacity_name else None,
                             "trainable": trainable, "total": total, "% trainable": 100 * trainable / total,
                             "_warning": ui.efficiency_warning(trainable, total, s.method, s.capacity)})
        if model_problem:
            st.warning(model_problem, icon=":material/warning:")
        elif len(rows) == 1:
            r = rows[0]
            c1, c2 = st.columns([1, 2], vertical_alignment="center")
            c1.metric("Trainable parameters", f"{r['trainable']:,}",
                      help="Counted by building the model (its shapes, no weights) and applying the method.")
            c1.caption(f"{r['% trainable']:.3f}% of {r['total']:,} parameters of {specs[0].model_name}")
            if r["_warning"]:
                c2.warning(r["_warning"], icon=":material/warning:")
        elif rows:
            st.markdown("**Trainable parameters**")
            st.dataframe(pd.DataFrame(rows).drop(columns="_warning"), hide_index=True, width="content",
                         column_config={"trainable": st.column_config.NumberColumn(format="localized"),
                                        "total": st.column_config.NumberColumn(format="localized"),
                                        "% trainable": st.column_config.NumberColumn(format="%.3f")})
            heavy = [r["_warning"] for r in rows if r["_warning"]]
            if heavy:
                st.warning("  \n".join(heavy), icon=":material/warning:")
        elif not methods.get_method(specs[0].method).trains:
            st.caption("Zero-shot trains nothing: it evaluates the untouched model.")


def enqueue_reason() -> str | None:
    """Why Enqueue is off, in the user's words; None when it is on."""
    if not ui.can("train"):
        return "training is turned off on this public instance"
    if form_error:
        return "fix the setting above first"
    if model_problem:
        return "the model cannot be used (see above)"
    if specs and not todo:
        if duplicate is not None:
            return (f"an identical run is already {duplicate['status']} ({duplicate['run_id']}); change the seed "
                    "or a setting to train another one")
        return "every run of this grid is already stored or queued"
    return None


with enqueue_slot.container():
    if st.session_state["tr_flash"]:
        kind, text = st.session_state["tr_flash"]
        {"ok": st.success, "info": st.info}.get(kind, st.error)(text)
        st.session_state["tr_flash"] = None
    reason = enqueue_reason()
    clicked = st.button("Enqueue", type="primary", key="tr_enqueue", icon=":material/play_arrow:",
                        disabled=reason is not None or not specs)
    if reason:
        st.caption(f"Enqueue is off: {reason}.")
    if clicked:
        try:
            with st.spinner("Checking the model and the data ..."):
                ui.import_stack()
                # limits, duplicates, quota, preflight: once; packs of runs that train together when asked
                pack = ui.PACK_SIZE if sweep and st.session_state["tr_sweep_pack"] else 1
                out = jobs.submit(store, specs, owner=owner, pack=pack)
        except ValueError as exc:
            st.error(ui.user_message(exc), icon=":material/error:")
        else:
            if out.run_ids:
                jobs.ensure_worker(store)
                ids = out.run_ids
                st.session_state["tr_flash"] = (
                    "ok", f"Enqueued {len(ids)} run(s): " + ", ".join(ids[:4]) + (" ..." if len(ids) > 4 else "")
                    + (f" ({len(out.skipped)} already stored or queued, not queued again)" if out.skipped else ""))
            else:
                st.session_state["tr_flash"] = ("info", "Nothing was queued: identical runs are already stored "
                                                        "or queued.")
            st.rerun()
