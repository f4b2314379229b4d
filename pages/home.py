"""Home: what the app does, the machine, the Hub, the store and the queue."""
import streamlit as st

from peftcompare.webui import ui

store = ui.store()
online = ui.hub_online()
endpoint = ui.hub_endpoint()
device = ui.device_summary()

st.title("peftcompare")
st.markdown(
    "Fine-tune FLAN-T5 with parameter-efficient methods (LoRA, prompt and prefix tuning, IA³, ...) "
    "on classification and summarization.  \n"
    "Every run is stored with its spec, parameter counts, time, memory and metrics; adapters are saved "
    "beside it.  \n"
    "Compare adapters with the untouched model on one text, and see accuracy against trainable "
    "parameters on efficiency curves.")

c1, c2, c3, c4 = st.columns(4)
c1.metric("Device", device["label"], help=device["cpu"])
c2.metric("Precision", device["precision"], help="auto: bf16 where the hardware has native bf16, else fp32")
counts = store.counts()
n_adapters = sum(1 for p in store.adapters_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
c3.metric("Runs", sum(counts.values()), help=", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or None)
c4.metric("Adapters", n_adapters)

if online:
    st.success(f"Hugging Face Hub: online ({endpoint}). Models and datasets load from it (and its local "
               "cache); set HF_ENDPOINT to use a mirror.", icon=":material/cloud_done:")
else:
    st.warning(f"The Hugging Face Hub is unreachable (offline, or HF_HUB_OFFLINE is set), so the app uses "
               f"the built-in model **{ui.OFFLINE_MODEL}** (a small T5 pretrained once on this machine from "
               "generated text, nothing to download) and the **bundled sample data** (peftcompare/samples). "
               "Everything works end to end; the numbers are for trying the app, not for conclusions.", icon=":material/cloud_off:")

st.subheader("Queue")
active = store.list_runs(status=("running", "queued"))
if not active:
    st.caption("Nothing is running or waiting.")
for run in active:
    p = run.get("progress") or 0.0
    eta = f" · ETA {ui.fmt_duration(run.get('eta_s'))}" if run["status"] == "running" and run.get("eta_s") else ""
    st.progress(min(1.0, max(0.0, p)), text=f"**{run['status']}** · {ui.run_label(run)}{eta}")

st.subheader("Pages")
blurbs = {"pages/train.py": "Configure a run or a sweep, enqueue it, watch the queue.",
          "pages/adapters.py": "Browse, inspect, download, import and delete adapters.",
          "pages/compare.py": "One text through zero-shot and your adapters, side by side.",
          "pages/curves.py": "Metric against capacity or trainable parameters, per method.",
          "pages/presets.py": "The reference experiments, one click each."}
cols = st.columns(len(blurbs))
for col, (path, blurb) in zip(cols, blurbs.items()):
    title, icon = ui.PAGES[path]
    with col:
        st.page_link(path, label=title, icon=icon)
        st.caption(blurb)
if not counts:
    st.info("The store is empty. Start with **Train**: the defaults train a small LoRA adapter in seconds.",
            icon=":material/lightbulb:")
