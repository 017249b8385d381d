"""Runs, as in TensorBoard: any run's settings, state, report and curves, several runs' curves on shared axes,
and a run's metrics as CSV. Watching only: nothing here changes a run."""

import streamlit as st

from mobilenet import app_runs, app_views, charts
from mobilenet.jobs import RunInfo

st.title("Runs")
snapshot = app_runs.runs_snapshot()
app_runs.show_skipped(snapshot)
names = [r.name for r in snapshot.runs]
if note := app_runs.run_link_note(names):  # before the selector, which drops a name it does not have from the address
    st.warning(note, icon=":material/link_off:")
if not names:
    st.info("No runs yet: the Training page starts one, and every run appears here.")
    st.stop()
live_when_drawn = {r.name for r in snapshot.runs if r.state.live}


def refresh_s(shown: set[str]) -> float:
    return app_runs.REFRESH_S if shown & live_when_drawn else app_runs.IDLE_REFRESH_S


def runs_now(shown: set[str]) -> dict[str, RunInfo]:
    """The runs as they are now; the whole page reruns when one of those shown went, started or ended (the refresh
    rate follows)."""
    runs = {r.name: r for r in app_runs.runs_snapshot().runs}
    if not shown <= set(runs) or {name for name in shown if runs[name].state.live} != shown & live_when_drawn:
        st.rerun(scope="app")
    return runs


chosen = st.selectbox("Run", names, key=app_runs.RUN_KEY, bind="query-params", help="Newest first")


@st.fragment(run_every=refresh_s({chosen}))
def run_view() -> None:
    run = runs_now({chosen})[chosen]
    st.markdown(f"**{run.name}**: {run.state.value}, epoch {run.epoch}/{run.epochs}")
    st.caption(app_runs.run_settings(run))
    app_runs.show_failure(run)
    if result := app_runs.report_of(run):
        st.markdown(f"Validation accuracy {result.accuracy:.2%}")
        app_runs.show_run_report_charts(run)
    if not app_runs.show_run_curves(run):
        st.caption("No metrics yet: the curves appear with the first training steps.")


with st.container(key=f"{app_views.LIVE_VIEW_KEY}-run"):  # redrawn without fading
    run_view()
chosen_run = next(r for r in snapshot.runs if r.name == chosen)
link, download = st.columns(2)
# The address leaves out the newest run (the selector's default), which a later run would replace: this link names it.
link.page_link(st.Page(__file__), label="Link to this run", icon=":material/link:",
               query_params={app_runs.RUN_KEY: chosen})
download.download_button("Download its metrics (CSV)", lambda: app_runs.run_metrics_csv(chosen_run),
                         file_name=f"{chosen}-metrics.csv", mime="text/csv", on_click="ignore")

st.subheader("Overlay")
compared = st.multiselect("Runs to overlay", names, key=app_runs.COMPARE_KEY, bind="query-params",
                          placeholder="two or more runs")


@st.fragment(run_every=refresh_s(set(compared)))
def overlay_view() -> None:
    runs = runs_now(set(compared))
    if len(compared) < 2:
        st.caption("Choose two or more runs to draw their validation accuracy and training loss on shared axes.")
        return
    for column, spec in zip(st.columns(len(charts.OVERLAID)), app_runs.overlay([runs[name] for name in compared])):
        column.vega_lite_chart(spec, width="stretch")


with st.container(key=f"{app_views.LIVE_VIEW_KEY}-overlay"):
    overlay_view()
