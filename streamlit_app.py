"""MobileNet v1 Studio: `streamlit run streamlit_app.py`. Navigation and the shared sidebar.

The pages live in app_pages/, not pages/: a fresh server runs a link to a page in pages/ as a page of its own,
without this script's navigation and sidebar, until someone opens the root page.
"""

import streamlit as st

from mobilenet import app_models, app_uploads, app_views

st.set_page_config(page_title="MobileNet v1 Studio", page_icon=":material/memory:", layout="wide")
app_views.torch_on_one_thread()
app_uploads.cap_uploads()
app_views.keep_choices([*app_uploads.CHOICES, *app_uploads.map_class_keys(), *app_models.EVALUATION_CHOICES])
page = st.navigation({
    "Learn": [st.Page("app_pages/explorer.py", title="Model explorer", icon=":material/account_tree:", default=True)],
    "Use": [
        st.Page("app_pages/inference.py", title="Inference", icon=":material/image_search:"),
        st.Page("app_pages/evaluation.py", title="Evaluation", icon=":material/fact_check:"),
    ],
    "Train": [st.Page("app_pages/training.py", title="Training", icon=":material/model_training:"),
              st.Page("app_pages/runs.py", title="Runs", icon=":material/stacked_line_chart:")],
})

models = app_models.models()
if note := app_models.model_link_note(models):  # in the page, not the sidebar, which a phone keeps closed
    st.warning(note, icon=":material/link_off:")
with st.sidebar:
    st.caption(f":material/memory: Running on {app_models.device_label()}")
    if models.models:
        key = st.selectbox("Model", models.keys, index=models.keys.index(models.default.key), key=app_models.MODEL_KEY,
                           bind="query-params", help="Shipped checkpoints and finished training runs")
        entry = models.get(key)
        st.caption(entry.describe())
        if app_models.has_int8(entry):
            st.segmented_control("Precision", app_models.PRECISIONS, default="int8", required=True,
                                 key=app_models.PRECISION_KEY,
                                 help="int8 answers several times faster; switch to fp32 to compare")
        st.caption(app_models.engine_caption(entry))
        if note := app_models.engine_note(entry):
            st.caption(note)
    else:
        st.caption("No model yet: the page says how to get one.")
    for problem in models.problems:
        st.warning(f"Skipped {app_views.for_visitors(problem)}", icon=":material/warning:")

app_views.freeze_startup_heap()
app_views.steady_live_views()
page.run()
