"""Compare: one text (typed, or a validation example with its reference) through the zero-shot model
and each chosen adapter, side by side; or, across the validation set, every column's score and the
examples where they disagree. One base model is loaded once; adapters attach to it."""
import streamlit as st

from peftcompare.service import comparing
from peftcompare.service import disagreements as dis
from peftcompare.service import policy as public
from peftcompare.core import tasks
from peftcompare.webui import ui
from peftcompare.core.spec import RunSpec

store = ui.store()
online = ui.hub_online()
SOURCES = ["Type a text", "Validation example"]
MODES = ["One example", "Across the validation set"]
SHOWN = 25  # disagreements listed on the page; the CSV has every example
MEMORY = 8  # validation-set results kept in the session (the disk cache keeps more)

# -- session state, one block ---------------------------------------------------------------------------
# cmp_result belongs to cmp_result_key = (text, reference, adapters, task, model): shown only while they hold
for _k, _v in {"cmp_task": RunSpec().task, "cmp_runs": [], "cmp_source": SOURCES[0], "cmp_text": "",
               "cmp_index": 0, "cmp_result": None, "cmp_result_key": None, "cmp_mode": MODES[0],
               "cmp_n_req": dis.DEFAULT_N, "cmp_dis_memory": {}}.items():
    st.session_state.setdefault(_k, _v)
for _k in ("cmp_source", "cmp_text", "cmp_index"):  # kept while the other mode hides their widgets
    st.session_state[_k] = st.session_state[_k]
runs = [r for r in store.list_runs(status=("completed",)) if r.get("adapter_dir")]
by_id = {r["run_id"]: r for r in runs}
if "compare_handoff" in st.session_state:  # "Compare these" on the Adapters page
    chosen = [r for r in st.session_state.pop("compare_handoff") if r in by_id]
    if chosen:
        st.session_state["cmp_task"] = by_id[chosen[0]]["task"]
        st.session_state["cmp_runs"] = chosen
        st.session_state["cmp_result"] = None


@st.cache_data(show_spinner="Loading the validation set ...", max_entries=16)
def validation_examples(spec_json: str) -> list[tuple[str, str]]:
    ui.import_stack()
    return comparing.validation_examples(RunSpec.from_json(spec_json))


def load_examples(spec: RunSpec) -> list[tuple[str, str]]:
    """Every validation example of the spec's data, or [] after an error message."""
    try:
        return validation_examples(dis.data_spec(spec).to_json())
    except ValueError as exc:
        st.error(str(exc).splitlines()[0])
        return []


def cards(columns: list[dict], task: str) -> None:
    """One bordered card per column, side by side (zero-shot first)."""
    labels = tasks.get_task(task).scores_labels
    for col, c in zip(st.columns(len(columns)), columns):
        with col.container(border=True):
            st.markdown(f"**{c['label']}**")
            if labels:
                st.markdown(f"### {c['output']}")
                if c.get("probability") is not None:
                    st.progress(float(c["probability"]), text=f"p = {c['probability']:.3f}")
                if c.get("correct") is not None:
                    st.caption(":green[matches the reference]" if c["correct"] else ":red[differs from the reference]")
            else:
                st.markdown(c["output"] or "_(empty output)_")
                st.caption(f"{c.get('words', 0)} words"
                           + (f" · ROUGE-L {c['rougeL']:.3f}" if c.get("rougeL") is not None else ""))
            if c.get("latency_ms") is not None:
                st.caption(f"latency {c['latency_ms']:.0f} ms"
                           + (f" (one batch of {c['batched_with']})" if c.get("batched_with", 1) > 1 else ""))


def _open_example(index: int) -> None:
    """A disagreement's button: the one-example view of that validation example, compared at once."""
    st.session_state.update(cmp_mode=MODES[0], cmp_source=SOURCES[1], cmp_index=index, cmp_autorun=True)


def _remember_n() -> None:
    # the request outlives a smaller validation set (cmp_n itself is capped by the set shown)
    st.session_state["cmp_n_req"] = int(st.session_state["cmp_n"])


st.title("Compare")
if not runs:
    st.info("No trained adapters yet, so only the zero-shot model can answer. Train an adapter to compare "
            "it side by side with zero-shot.", icon=":material/info:")
    st.page_link("pages/train.py", label="Go to Train", icon=ui.PAGES["pages/train.py"][1])

st.radio("Mode", MODES, key="cmp_mode", horizontal=True,
         help="One example: a text through every column, side by side. Across the validation set: every "
              "column's score on N validation examples, and the examples where the columns disagree.")
c1, c2 = st.columns([1, 3])
c1.selectbox("Task", list(tasks.TASKS), key="cmp_task")
task = st.session_state["cmp_task"]
options = [r["run_id"] for r in runs if r["task"] == task]
st.session_state["cmp_runs"] = [r for r in st.session_state["cmp_runs"] if r in options]
c2.multiselect("Adapters", options, key="cmp_runs", format_func=lambda r: ui.run_label(by_id[r]),
               placeholder="zero-shot only; choose adapters to add columns",
               help="Adapters of one base model; each adds a column beside zero-shot.")
chosen = list(st.session_state["cmp_runs"])
base_spec = by_id[chosen[0]]["spec"] if chosen else RunSpec(task=task, model_name=ui.default_model(online))
st.caption(f"Base model **{base_spec.model_name}** · dataset {base_spec.dataset or 'task default'}")


def one_example() -> None:
    st.radio("Source", SOURCES, key="cmp_source", horizontal=True)
    text, reference = "", None
    if st.session_state["cmp_source"] == SOURCES[1]:
        examples = load_examples(base_spec)
        if examples:
            st.session_state["cmp_index"] = min(int(st.session_state["cmp_index"]), len(examples) - 1)
            st.number_input(f"Example index (0 – {len(examples) - 1})", min_value=0, max_value=len(examples) - 1,
                            step=1, key="cmp_index")
            text, reference = examples[min(int(st.session_state["cmp_index"]), len(examples) - 1)]
            st.code(text, language=None, wrap_lines=True)
            st.markdown(f"**Reference:** {reference}")
    else:
        st.text_area("Text", key="cmp_text", height=140, placeholder=tasks.get_task(task).placeholder)
        text = st.session_state["cmp_text"]
    key = ((text or "").strip(), reference, tuple(dict.fromkeys(chosen)), task, base_spec.model_name)
    if st.session_state["cmp_result_key"] != key:  # another text, reference, adapter set, task or model
        st.session_state["cmp_result"], st.session_state["cmp_result_key"] = None, None
    go = st.button("Compare", key="cmp_go", type="primary", icon=":material/compare:")
    if st.session_state.pop("cmp_autorun", False) and reference is not None:  # opened from a disagreement
        go = True
    if go:
        try:
            engine, lock = ui.engine()
            with st.spinner("Running zero-shot and the adapters ..."), lock:
                st.session_state["cmp_result"] = engine.compare(text, chosen, task=task,
                                                                model_name=base_spec.model_name, reference=reference)
            st.session_state["cmp_result_key"] = key
        except ValueError as exc:  # ModelUnavailable is a ValueError too
            st.session_state["cmp_result"], st.session_state["cmp_result_key"] = None, None
            st.error(str(exc).splitlines()[0], icon=":material/error:")
    result = st.session_state["cmp_result"]
    if result and st.session_state["cmp_result_key"] == key:
        st.caption(f"{result['model_name']} · {result['device']} · {result['precision']}")
        cards(result["columns"], result["task"])


def across_validation() -> None:
    examples = load_examples(base_spec)
    if not examples:
        return
    size = len(examples)
    if public.is_public():  # a visitor's run holds the shared engine: as many examples as a run may evaluate
        size = min(size, public.LIMITS.max_eval_samples)
    st.session_state["cmp_n"] = max(1, min(int(st.session_state["cmp_n_req"]), size))
    st.number_input(f"Validation examples (1 – {size})", min_value=1, max_value=size, step=1, key="cmp_n",
                    on_change=_remember_n,
                    help="The first N examples of the validation set in its fixed order: with N equal to the "
                         "number of examples a run was evaluated on (and the same precision), a column's score is "
                         "that run's metric.")
    n = int(st.session_state["cmp_n"])
    engine, lock = ui.engine()
    try:
        prep = dis.prepare(engine, chosen, n, task=task, model_name=base_spec.model_name, examples=examples)
    except ValueError as exc:
        st.error(str(exc).splitlines()[0], icon=":material/error:")
        return
    memory = st.session_state["cmp_dis_memory"]
    result = memory.get(prep["key"]) or dis.lookup(engine, chosen, prepared=prep)  # the session, else the disk
    label = "Find disagreements" if chosen else "Score zero-shot"
    if st.button(label, key="cmp_dis_go", type="primary", icon=":material/difference:"):
        bar = st.progress(0.0, text=f"Running zero-shot and {len(chosen)} adapter(s) on {n} examples ...")

        def progress(done: int, total: int) -> None:
            bar.progress(min(done / max(total, 1), 1.0), text=f"{done:,} of {total:,} answers")

        try:
            with lock:
                result = dis.find(engine, chosen, prepared=prep, progress=progress)
        except ValueError as exc:  # ModelUnavailable is a ValueError too
            bar.empty()
            st.error(str(exc).splitlines()[0], icon=":material/error:")
            return
        bar.progress(1.0, text="from the cache" if result["cached"] else
                     f"{result['n'] * len(result['columns']):,} answers in {result['seconds']:.1f} s")
    if result is None:
        st.caption(f"Runs zero-shot{' and the adapters' if chosen else ''} on the first {n} validation examples; "
                   "the result is kept, so opening it again is instant.")
        return
    memory.pop(prep["key"], None)
    memory[prep["key"]] = result
    while len(memory) > MEMORY:
        memory.pop(next(iter(memory)))
    show_across(result)


def show_across(result: dict) -> None:
    task, columns, n = result["task"], result["columns"], result["n"]
    t = tasks.get_task(task)
    st.caption(f"{n} of {result['n_available']} validation examples of {result['dataset']} · {result['model_name']}"
               f" · {result['device']} · {result['precision']} · "
               + ("from the runs' stored evaluation answers (no model ran)" if result.get("source") == "stored" else
                  "from the cache" if result.get("cached") else f"ran in {result['seconds']:.1f} s"))
    names = {"accuracy": "accuracy", "f1": "F1", "rougeL": "ROUGE-L"}
    st.dataframe([{"column": c["label"], "run": "" if c["name"] == dis.BASE_NAME else c["key"],
                   **{names[k]: c["scores"][k] for k in dis.score_names(task)}} for c in columns],
                 hide_index=True, key="cmp_dis_scores",
                 column_config={v: st.column_config.NumberColumn(v, format="%.4f") for v in names.values()})
    ranked = result["disagreements"]
    gap = t.spread_word
    if len(columns) < 2:
        st.info("Only zero-shot answered: choose adapters above to find the examples where they disagree "
                "with it.", icon=":material/info:")
    elif not ranked:
        st.success(f"Every column gives the same answer on all {n} examples.", icon=":material/check:")
    else:
        st.subheader(f"{len(ranked)} of {n} examples disagree")
        st.caption(("The columns give different labels; ranked by the probability gap, the largest difference "
                    "between two columns in the probability of one label." if t.scores_labels else
                    "The columns give different summaries; ranked by the ROUGE-L spread, the best column's ROUGE-L "
                    "against the reference minus the worst one's.")
                   + (f" The top {SHOWN} are listed; the CSV has every example." if len(ranked) > SHOWN else ""))
        for i in ranked[:SHOWN]:
            row = result["examples"][i]
            if t.scores_labels:
                short = " · ".join(f"{c['label']}: {o}" for c, o in zip(columns, row["outputs"]))
            else:
                short = " · ".join(f"{c['label']} {r:.2f}" for c, r in zip(columns, row["rougeL"]))
            with st.expander(f"Example {i} — {gap} {row['gap']:.3f} — {short}"):
                st.code(row["text"], language=None, wrap_lines=True)
                st.markdown(f"**Reference:** {row['reference']}")
                if t.scores_labels:
                    cards([{"label": c["label"], "output": o, "probability": p, "correct": o == row["reference"]}
                           for c, o, p in zip(columns, row["outputs"], row["probabilities"])], task)
                else:
                    cards([{"label": c["label"], "output": o, "words": len(o.split()), "rougeL": r}
                           for c, o, r in zip(columns, row["outputs"], row["rougeL"])], task)
                st.button("Open in the one-example view", key=f"cmp_open_{i}", icon=":material/open_in_full:",
                          on_click=_open_example, args=(i,))
    st.download_button("Download CSV", dis.to_csv(result), file_name=f"disagreements-{task}-{n}.csv",
                       mime="text/csv", key="cmp_dis_csv", icon=":material/download:", on_click="ignore",
                       help="One row per example: text, reference, each column's answer and its "
                            + t.score_word + ", and whether they "
                            "disagree.")


if st.session_state["cmp_mode"] == MODES[0]:
    one_example()
else:
    across_validation()
