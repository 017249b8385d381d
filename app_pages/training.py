"""Training: one background job per server, streamed live to every visitor.

Starting, stopping and resuming sit behind the admin gate."""

from pathlib import Path

import streamlit as st

from mobilenet import admin
from mobilenet import app_support as app
from mobilenet import charts
from mobilenet.config import DEFAULT_RECIPE, RECIPES
from mobilenet.jobs import JobError

st.title("Training")
manager = app.job_manager()

refused = admin.training_refused()
if refused:
    st.warning(refused)
gated = not refused and admin.admin_password() is not None
allowed = not refused and (not gated or admin.signed_in())
if gated and allowed:
    said, leave = st.columns([5, 1], vertical_alignment="center")
    said.caption(":material/verified_user: Signed in as admin: you can start, stop and resume training.")
    with said:
        admin.keep_in_browser()  # a reload stays signed in
    if leave.button("Sign out"):
        admin.sign_out()
        st.rerun()
elif gated:
    admin.forget_in_browser()
    st.text_input("Admin password", type="password", key=admin.PASSWORD_KEY, on_change=admin.sign_in,
                  help="Starting, stopping and resuming need it; watching does not.")
    if refusal := st.session_state.get(admin.REFUSAL_KEY):
        st.error(refusal)
    st.caption(f":material/visibility: Watching as a visitor: {admin.SIGN_IN_HINT}.")
locked = None if allowed else refused or admin.SIGN_IN_HINT.capitalize() + "."  # why the controls are disabled

left, right = st.columns(2)  # no form: the recipe's defaults and the overrides note follow every choice at once
source = left.radio("Data", ["CIFAR-10 (downloads once)", "Folder or zip on the server"], horizontal=True)
folder = left.text_input("Data folder", placeholder="/path/to/images or /path/to/images.zip",
                         help="train/<class>/<image> and optionally test/<class>/<image>, or <class>/<image>")
recipe = left.selectbox("Recipe", list(RECIPES), index=list(RECIPES).index(DEFAULT_RECIPE),
                        help="fast: this project's recipe; seed: the blog post's, exactly. It sets the defaults below.")
own = RECIPES[recipe]  # the inputs' keys name the recipe: choosing another one starts them at its values
batch_size = left.number_input("Batch size", 8, 2048, own.batch_size, step=8, key=f"batch_size-{recipe}")
alpha = right.slider("α", 0.25, 2.0, 1.0, 0.05, help="width multiplier")
beta = right.slider("β", 0.5, 2.0, 1.0, 0.125, help="resolution multiplier: input side round(32 × β)")
epochs = right.number_input("Epochs", 1, app.MAX_EPOCHS, own.epochs, key=f"epochs-{recipe}")
lr = right.number_input("Learning rate", 0.0001, 5.0, own.lr, format="%.4f", key=f"lr-{recipe}")
overrides = app.recipe_overrides(recipe, epochs=int(epochs), batch_size=int(batch_size), lr=float(lr))
if note := app.overrides_note(recipe, overrides):
    st.caption(note)
start = st.button("Start", type="primary", disabled=not allowed, help=locked)

if start and allowed:
    data = "cifar10" if source.startswith("CIFAR") else folder.strip()
    problem = app.data_problem(data)
    try:
        if problem:
            st.error(problem)
        else:
            cfg = app.new_run_config(data=data, recipe=recipe, alpha=float(alpha), beta=float(beta), **overrides)
            st.success(f"Started {manager.start(cfg).name}.")
    except (JobError, ValueError) as e:
        st.error(app.for_visitors(str(e)))


page_snapshot = app.runs_snapshot()
watching_a_job = page_snapshot.job is not None
finished = app.finished_runs(page_snapshot)  # as the sidebar's model selector was drawn with them
STOPPING_KEY = "stopping"  # the job (its run path) this visitor asked to stop, in st.session_state


@st.fragment(run_every=app.REFRESH_S if watching_a_job else app.IDLE_REFRESH_S)
def live() -> None:
    snapshot = app.runs_snapshot()
    job, runs = snapshot.job, snapshot.runs
    if (job is not None) != watching_a_job or app.finished_runs(snapshot) != finished:
        st.rerun(scope="app")  # the whole app: the refresh rate follows the job, the model selector its runs
    running = next((r for r in runs if job and str(r.path.resolve()) == job.get("run")), None)
    if running is not None:
        rows = running.folder.read_metrics()
        stopping = st.session_state.get(STOPPING_KEY) == job["run"]  # this visitor asked it to stop
        done, text = app.job_progress(running, rows, stopping)
        st.progress(done, text=text)
        if rows:
            st.vega_lite_chart(app.training_chart(running), width="stretch")
        if not stopping and st.button("Stop", disabled=not allowed, help=locked) and allowed:
            if manager.stop():
                st.session_state[STOPPING_KEY] = job["run"]
            st.rerun()  # the whole page says "stopping…" until the job has saved and ended
    elif job:
        st.caption("A job is starting…")
    else:
        st.session_state.pop(STOPPING_KEY, None)  # it has stopped: a resumed run starts afresh
        st.caption("No training job is running.")

    for name in snapshot.skipped:
        st.warning(f"{name} is left out: it holds no readable run.")
    if not runs:
        return
    st.subheader("Runs")
    st.dataframe(app.runs_table(runs), hide_index=True, column_config={
        "best validation accuracy": st.column_config.NumberColumn(format="percent")})
    latest = runs[0]
    if latest is not running:
        if latest.error:
            st.error(f"{latest.name} failed: {app.for_visitors(latest.error)}")
        result = app.report_of(latest)
        if result:
            listed = ("it is in the model selector now" if app.in_model_selector(latest)
                      else "its checkpoint does not load, so it is not in the model selector")
            st.markdown(f"**{latest.name}**: validation accuracy {result.accuracy:.2%}; {listed}.")
            per_class, confusion = st.columns(2)
            per_class.altair_chart(charts.per_class(result), width="stretch")
            confusion.altair_chart(charts.confusion(result), width="stretch")
            if app.downloadable(latest.folder.best):
                st.download_button("Download its checkpoint", latest.folder.best.read_bytes,
                                   file_name=f"{latest.name}.pt", mime="application/octet-stream", on_click="ignore")
    resumable = [r.name for r in runs if r.resumable]
    if resumable and job is None:
        chosen = st.selectbox("Stopped or interrupted run", resumable)
        if st.button("Resume", disabled=not allowed, help=locked) and allowed:
            try:
                manager.resume(next(r.path for r in runs if r.name == chosen))
            except JobError as e:
                st.error(app.for_visitors(str(e)))
            else:
                st.rerun()  # the whole page follows the job: "starting…" until it trains


live()
st.page_link(st.Page(Path(__file__).with_name("runs.py")), label="Every run: its report and curves, overlays, CSV",
             icon=":material/stacked_line_chart:")
