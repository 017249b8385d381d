"""Model explorer: size and cost of MobileNet v1 for any α, resolution and stem; settings live in the URL."""

import streamlit as st

from mobilenet import app_models, app_views, charts, explore
from mobilenet.model import BASE_RESOLUTION, STEMS

st.title("Model explorer")
st.markdown(app_views.INTRO)
entry = app_models.selected_model()
if entry is None:
    st.info(app_models.no_model_message())
else:
    st.markdown(app_models.model_in_use(entry))
if not st.session_state.get("explorer_link_read"):  # the link as opened; later the widgets write the address
    st.session_state.explorer_link_read = True     # (a stem's switch still shows the other stem's resolution)
    link = {key: st.query_params.get_all(key) for key in st.query_params}
    for problem in explore.link_problems(link):  # before the widgets, which drop such values silently
        st.warning(problem, icon=":material/link_off:")
st.caption("MobileNet v1 (Howard et al. 2017): how the width multiplier α and the resolution multiplier β "
           "change its size and cost. The settings are in the address bar: copy it to share this view.")


def each_stem_starts_at_its_own_resolution() -> None:
    # β = 1: 64 fits both stems, but means β = 2 or 0.29
    st.session_state[explore.RESOLUTION_PARAM] = BASE_RESOLUTION[st.session_state[explore.STEM_PARAM]]


left, middle, right = st.columns(3)
alpha = left.slider("Width multiplier α", explore.ALPHA_MIN, explore.ALPHA_MAX, 1.0, explore.ALPHA_STEP,
                    key=explore.ALPHA_PARAM, bind="query-params", help="Every layer's channels are scaled by α.")
stem = middle.radio("Stem", STEMS, horizontal=True, key=explore.STEM_PARAM, bind="query-params",
                    on_change=each_stem_starts_at_its_own_resolution,
                    help="cifar: the seed's CIFAR-10 network (32×32 input, 10 classes). "
                         "imagenet: the paper's network (224×224 input, 1000 classes).")
base = BASE_RESOLUTION[stem]
resolution = right.select_slider(f"Input resolution (β = resolution / {base})", explore.RESOLUTIONS[stem],
                                 value=base, key=explore.RESOLUTION_PARAM, bind="query-params")

stats = explore.stats_for(alpha, stem, resolution)
st.caption(f"α = {alpha:g}, β = {explore.beta(stem, resolution):.4g}: input {resolution}×{resolution}, "
           f"{stats.num_classes} classes. Changes are against α = 1, β = 1 with the same stem.")
for column, total in zip(st.columns(3), explore.totals(stats, explore.stats_for(1.0, stem, base))):
    column.metric(total.label, total.value, total.delta, delta_color="inverse")

st.subheader("Layers")
st.dataframe(explore.layer_table(stats), hide_index=True, column_config={
    "params": st.column_config.NumberColumn(format="localized"),
    "mult-adds": st.column_config.NumberColumn(format="localized"),
    "share of mult-adds": st.column_config.ProgressColumn(format="percent", min_value=0, max_value=1),
})

st.subheader("Cost")
for column, chart in zip(st.columns(2), charts.alpha_sweep(app_models.alpha_sweep(stem, resolution), stats)):
    column.altair_chart(chart, width="stretch")
st.altair_chart(charts.layer_costs(explore.layer_costs(stats)), width="stretch")

savings = explore.savings_table(stats)
st.markdown(
    r"A standard $3\times3$ convolution costs $D_K \cdot D_K \cdot M \cdot N \cdot D_F \cdot D_F$ mult-adds, a "
    r"depthwise separable one $D_K \cdot D_K \cdot M \cdot D_F \cdot D_F + M \cdot N \cdot D_F \cdot D_F$, a ratio of "
    r"$\frac{1}{N} + \frac{1}{D_K^2}$: with $D_K = 3$ and many output channels $N$, 8 to 9 times less "
    f"(here {savings['saving'].min():.1f}× to {savings['saving'].max():.1f}× per block)."
)
st.altair_chart(charts.separable_savings(savings), width="stretch")

if stem == "imagenet":
    st.subheader("The paper's Tables 6 and 7 beside our counts")
    comparison = app_models.paper_comparison()
    st.dataframe(comparison, hide_index=True, width="stretch", column_order=[
        "table", "model", "ImageNet top-1 % (paper)", "mult-adds M (paper)", "mult-adds M (ours)", "params M (paper)",
        "params M (ours)"])  # α and resolution are in the model's name
    st.altair_chart(charts.paper_mult_adds(comparison), width="stretch")
    st.caption("Our counts include BatchNorm, as torchinfo does; accuracy is the paper's, on ImageNet.")

st.subheader("Accuracy against cost")
points = app_models.accuracy_points()
st.caption("What MobileNet trades: each CIFAR-10 model here (validation accuracy; for a model trained on all the "
           "images, as the shipped ones are, its validating twin's: the identical recipe with a validation split "
           "held out) beside the paper's ImageNet networks (top-1). Different tasks, so compare the shapes: accuracy "
           "falls slowly as the cost shrinks.")
cost, latency = st.columns(2)
cost.altair_chart(charts.accuracy_cost(points), width="stretch")
if latency.button("Measure each model's latency here", icon=":material/timer:"):
    ours = app_models.latency_points(points)
    if ours.empty:
        latency.info("No model with a validation accuracy here yet.")
    else:
        latency.altair_chart(charts.accuracy_cost(ours, "latency ms"), width="stretch")
        latency.caption(explore.latency_caption(ours))
else:
    latency.caption("The paper gives no latencies: ours are timed on this machine, a batch of one image each, on "
                    "the engine the sidebar chose.")

st.subheader("Latency")
if st.button("Measure latency on this machine", icon=":material/timer:"):
    with st.spinner("Timing one image through this network…"):
        latency = explore.measure_latency(alpha, stem, resolution)
    st.metric("latency per image (batch of 1)", f"{latency.median_ms:.2f} ms")
    st.caption(f"Median of {latency.runs} runs on {latency.device} with {latency.engine} (best "
               f"{latency.best_ms:.2f} ms), random weights with BatchNorm folded into the convolutions. Any α and "
               f"resolution run on PyTorch here: the int8 engine needs a model quantized first, so the trained "
               f"models' int8 latency is in the chart above.")
