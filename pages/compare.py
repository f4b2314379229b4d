"""Compare: one text (typed, or a validation example with its reference) through the zero-shot model
and each chosen adapter, side by side. One base model is loaded once; adapters attach to it."""
import streamlit as st

from peftcompare import tasks, ui
from peftcompare.spec import RunSpec

store = ui.store()
online = ui.hub_online()
SOURCES = ["Type a text", "Validation example"]

# -- session state, one block ---------------------------------------------------------------------------
for _k, _v in {"cmp_task": "classification", "cmp_runs": [], "cmp_source": SOURCES[0], "cmp_text": "",
               "cmp_index": 0, "cmp_result": None}.items():
    st.session_state.setdefault(_k, _v)
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
    from peftcompare import data

    ui.import_stack()
    spec = RunSpec.from_json(spec_json).resolved()
    return [(e.text, e.target) for e in data.load_task_data(spec).validation]


st.title("Compare")
if not runs:
    st.info("No trained adapters yet, so only the zero-shot model can answer. Train an adapter to compare "
            "it side by side with zero-shot.", icon=":material/info:")
    st.page_link("pages/train.py", label="Go to Train", icon=ui.PAGES["pages/train.py"][1])

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

st.radio("Source", SOURCES, key="cmp_source", horizontal=True)
reference = None
if st.session_state["cmp_source"] == SOURCES[1]:
    try:
        examples = validation_examples(base_spec.replace(eval_samples=0, train_samples=1).to_json())
    except ValueError as exc:
        st.error(str(exc).splitlines()[0])
        examples = []
    if examples:
        st.number_input(f"Example index (0 – {len(examples) - 1})", min_value=0, max_value=len(examples) - 1,
                        step=1, key="cmp_index")
        text, reference = examples[min(int(st.session_state["cmp_index"]), len(examples) - 1)]
        st.code(text, language=None, wrap_lines=True)
        st.markdown(f"**Reference:** {reference}")
else:
    st.text_area("Text", key="cmp_text", height=140,
                 placeholder="a gripping, beautifully acted film" if task == "classification"
                 else "Anna: are we still on for lunch?\nBen: yes, 12:30 at the usual place")
    text = st.session_state["cmp_text"]

if st.button("Compare", key="cmp_go", type="primary", icon=":material/compare:"):
    try:
        engine, lock = ui.engine()
        with st.spinner("Running zero-shot and the adapters ..."), lock:
            st.session_state["cmp_result"] = engine.compare(text, chosen, task=task,
                                                            model_name=base_spec.model_name, reference=reference)
    except ValueError as exc:  # ModelUnavailable is a ValueError too
        st.session_state["cmp_result"] = None
        st.error(str(exc).splitlines()[0], icon=":material/error:")

result = st.session_state["cmp_result"]
if result and result["task"] == task:
    st.caption(f"{result['model_name']} · {result['device']} · {result['precision']}")
    cols = st.columns(len(result["columns"]))
    for col, c in zip(cols, result["columns"]):
        with col.container(border=True):
            st.markdown(f"**{c['label']}**")
            if result["task"] == "classification":
                st.markdown(f"### {c['output']}")
                if c.get("probability") is not None:
                    st.progress(float(c["probability"]), text=f"p = {c['probability']:.3f}")
                if c.get("correct") is not None:
                    st.caption(":green[matches the reference]" if c["correct"] else ":red[differs from the reference]")
            else:
                st.markdown(c["output"] or "_(empty output)_")
                st.caption(f"{c.get('words', 0)} words"
                           + (f" · ROUGE-L {c['rougeL']:.3f}" if c.get("rougeL") is not None else ""))
            st.caption(f"latency {c['latency_ms']:.0f} ms"
                       + (f" (one batch of {c['batched_with']})" if c.get("batched_with", 1) > 1 else ""))
