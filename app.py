"""peftcompare: train, browse and compare PEFT adapters on FLAN-T5.  streamlit run app.py

The entry point only wires pages and the shared sidebar. No torch import here or at any page's top:
models load lazily (and are cached) so the app starts in a couple of seconds.
"""
import streamlit as st

from peftcompare.service import policy as public
from peftcompare.webui import ui

st.set_page_config(page_title="peftcompare", page_icon=":material/compare:", layout="wide")

pages = [st.Page(path, title=title, icon=icon, default=path == "pages/home.py")
         for path, (title, icon) in ui.PAGES.items()]
nav = st.navigation(pages)

store = ui.store()
ui.reconcile_once()
online = ui.hub_online()
device = ui.device_summary()
with st.sidebar:
    st.caption("**Store**")
    st.code(str(store.home), language=None, wrap_lines=True)
    st.caption(f"**Device** {device['label']} · {device['precision']}")
    if online:
        st.caption(":green[**Hub online**] models and datasets load from the Hugging Face Hub")
    else:
        st.caption(f":orange[**Hub offline**] using `{ui.OFFLINE_MODEL}` and the bundled sample data")
    if public.is_public():
        st.caption(":blue[**Public instance**] " + ("training is off" if not public.can_train() else
                   "small runs only; delete and import are off"))

nav.run()
ui.warm_imports()
