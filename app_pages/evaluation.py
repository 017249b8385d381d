"""Evaluation: accuracy, per-class accuracy, confusion matrix, labelled samples and confident mistakes."""

import streamlit as st

from mobilenet import app_models, app_views, evalsets, settings, visual
from mobilenet.checkpoint import CheckpointError
from mobilenet.data import DataError
from mobilenet.display import quoted

st.title("Evaluation")
entry = app_models.require_model()
app_models.classifier(entry)  # loaded before the request is made: says so when its engine falls back to PyTorch
sources = evalsets.sources(entry.card)
if not sources:
    st.warning(app_views.for_visitors(evalsets.missing_data_message(settings.data_root())))
    st.stop()

st.caption(evalsets.training_note(entry.card))
pick, size = st.columns(2)
app_models.forget_unlisted_source(sources)
source = pick.selectbox("Data", sources, format_func=lambda s: s.label, key=app_models.EVALUATION_SOURCE)
if source.seen:
    st.warning(f"These images include the ones {entry.key} was trained on: its accuracy here overstates how it does "
               f"on images it has not seen.", icon=":material/warning:")
limit = size.radio("Images", [None, 1000, 5000], horizontal=True, key=app_models.EVALUATION_LIMIT,
                   format_func=lambda n: "all" if n is None else f"{n:,} (a class-balanced sample)")
request = (entry.key, entry.version, app_models.engine_for(entry), source, limit)  # another engine: asked again
if st.button("Evaluate", type="primary", icon=":material/play_arrow:"):
    st.session_state.evaluation_request = request
    st.session_state.evaluation_data = app_models.data_version(source)
if st.session_state.get("evaluation_request") != request:
    st.stop()

try:
    with st.spinner(f"Evaluating {entry.key} on {source.label}…"):
        result, images = app_models.evaluation(entry, source, limit, st.session_state.evaluation_data)
except (DataError, CheckpointError) as e:
    app_views.show_problem(e)
    st.stop()

accuracy, count = st.columns(2)
accuracy.metric("accuracy", f"{result.accuracy:.2%}")
count.metric("images", f"{result.n:,}")
if images.skipped:
    names = ", ".join(map(quoted, images.skipped[:3])) + (" …" if len(images.skipped) > 3 else "")
    st.warning(f"{len(images.skipped):,} file(s) of {source.label} could not be read as images and are not counted: "
               f"{names}.", icon=":material/broken_image:")
if app_models.has_int8(entry) and st.toggle("Compare int8 with fp32 on these images",
                                           key=app_models.EVALUATION_COMPARE):
    try:
        with st.spinner("Evaluating in int8 and in fp32…"):
            table, differ = app_models.precision_comparison(entry, source, limit, st.session_state.evaluation_data)
    except (DataError, CheckpointError) as e:
        app_views.show_problem(e)
        st.stop()
    st.dataframe(table, hide_index=True)
    st.caption(f"{differ:,} of {result.n:,} answers differ between int8 and fp32.")
app_views.show_report_charts(result)

st.subheader("Samples: prediction (truth)")
st.image(visual.sample_tiles(result, images))
st.subheader("The most confident mistakes")
mistakes = visual.mistakes_tiles(result, images)
if mistakes:
    st.image(mistakes)
else:
    st.success("No mistakes on these images.")
