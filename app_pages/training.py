"""Training: one background job per server, streamed live to every visitor.

Starting, stopping, resuming and deleting runs sit behind the admin gate."""

from pathlib import Path

import streamlit as st

from mobilenet import admin, app_runs, app_views, data, explore, settings
from mobilenet.config import DEFAULT_RECIPE, RECIPES, TrainConfig
from mobilenet.jobs import JobError, RunInfo

st.title("Training")
manager = app_runs.job_manager()

refused = admin.training_refused()
if refused:
    st.warning(refused)
gated = not refused and admin.admin_password() is not None
allowed = admin.may_train()
with st.container():  # one slot, whatever it shows: the controls below keep their place in the page, so a
    # sign-in redraws them in place instead of adding them anew beside their stale copies
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
source = left.selectbox("Data", app_runs.training_data(admin=allowed), format_func=lambda s: s.label,
                        help=f"The image folders and .zip files in {app_views.visible_folder(settings.data_root())}/ "
                             f"that hold training images ({data.LAYOUT}), and CIFAR-10.")
typed = (left.text_input("Data folder", placeholder="/path/to/images or /path/to/images.zip", help=data.LAYOUT)
         if source == app_runs.OTHER_DATA else "")
recipe = left.selectbox("Recipe", list(RECIPES), index=list(RECIPES).index(DEFAULT_RECIPE),
                        help="fast: this project's recipe; seed: the blog post's, exactly. It sets the defaults below.")
own = RECIPES[recipe]  # the inputs' keys name the recipe: choosing another one starts them at its values
batch_size = left.number_input("Batch size", 8, app_runs.MAX_BATCH_SIZE, own.batch_size, step=8,
                               key=f"batch_size-{recipe}")
alpha = right.slider("α", explore.ALPHA_MIN, explore.ALPHA_MAX, 1.0, explore.ALPHA_STEP, help="width multiplier")
beta = right.slider("β", app_runs.BETA_MIN, app_runs.BETA_MAX, 1.0, app_runs.BETA_STEP,
                    help="resolution multiplier: input side round(32 × β)")
epochs = right.number_input("Epochs", 1, app_runs.MAX_EPOCHS, own.epochs, key=f"epochs-{recipe}")
lr = right.number_input("Learning rate", 0.0001, 5.0, own.lr, format="%.4f", key=f"lr-{recipe}")
overrides = app_runs.recipe_overrides(recipe, epochs=int(epochs), batch_size=int(batch_size), lr=float(lr))
if note := app_runs.overrides_note(recipe, overrides):
    st.caption(note)
start = st.button("Start", type="primary", disabled=not allowed, help=locked)

if start and allowed:
    data = typed.strip() if source == app_runs.OTHER_DATA else source.source
    problem = app_runs.data_problem(data)
    try:
        if problem:
            st.error(problem)
        else:
            cfg = TrainConfig(data=data, recipe=recipe, alpha=float(alpha), beta=float(beta), **overrides)
            st.success(f"Started {manager.start(cfg).name}.")
    except (JobError, ValueError) as e:
        st.error(app_views.for_visitors(str(e)))


page_snapshot = app_runs.runs_snapshot()
watching_a_job = page_snapshot.job is not None
finished = app_runs.finished_names(page_snapshot)  # as the sidebar's model selector was drawn with them
DELETE_KEY = "delete_asked"  # the run this visitor asked to delete, awaiting Confirm or Cancel, in st.session_state


def delete_a_run(runs: list[RunInfo]) -> None:
    """Delete, then Confirm or Cancel: the runs no job or trainer is writing."""
    asked = next((r for r in runs if r.name == st.session_state.get(DELETE_KEY)), None)
    if asked is None:
        st.session_state.pop(DELETE_KEY, None)  # a run no longer deletable (resumed meanwhile) is not asked again
        pick, act = st.columns([3, 1], vertical_alignment="bottom")
        chosen = pick.selectbox("Run to delete", [r.name for r in runs])
        act.button("Delete", disabled=not allowed, help=locked, on_click=st.session_state.__setitem__,
                   args=(DELETE_KEY, chosen))
        return
    st.warning(f"Delete run {asked.name} and its checkpoint? This cannot be undone.")
    confirm, cancel = st.columns(2)
    cancel.button("Cancel", on_click=st.session_state.pop, args=(DELETE_KEY, None))
    if confirm.button("Confirm", type="primary", disabled=not allowed, help=locked) and allowed:
        st.session_state.pop(DELETE_KEY)
        try:
            app_runs.delete_run(asked)
        except JobError as e:
            st.error(app_views.for_visitors(str(e)))
            return
        st.toast(f"Deleted {asked.name}.")
        st.rerun()  # the whole app: the model selector loses a finished run's checkpoint


@st.fragment(run_every=app_runs.REFRESH_S if watching_a_job else app_runs.IDLE_REFRESH_S)
def live() -> None:
    if admin.may_train() != allowed:  # signed out in another tab, expired, a new password: the whole page follows
        st.rerun(scope="app")
    snapshot = app_runs.runs_snapshot()
    job, runs = snapshot.job, snapshot.runs
    if (job is not None) != watching_a_job or app_runs.finished_names(snapshot) != finished:
        st.rerun(scope="app")  # the whole app: the refresh rate follows the job, the model selector its runs
    running = next((r for r in runs if job and job.trains(r.path)), None)
    stopping = bool(job and job.stopping)  # recorded with the job: every visitor sees it
    if running is not None:
        done, text = app_runs.job_progress(running, running.folder.read_metrics(), running.folder.read_status(),
                                           stopping)
        st.progress(done, text=text)
        app_runs.show_run_curves(running)
    elif job and not job.starting:
        st.caption("A job is training a run that is no longer in the runs folder (moved or renamed).")
    elif job:
        st.caption("A job is starting…")
    else:
        st.caption("No training job is running.")
    if job and not job.starting and not stopping and st.button("Stop", disabled=not allowed, help=locked) and allowed:
        try:
            manager.stop(seen=job)
        except JobError as e:
            st.error(app_views.for_visitors(str(e)))
        else:
            st.rerun()  # the whole page says "stopping…" until the job has saved and ended

    app_runs.show_skipped(snapshot)
    if not runs:
        return
    st.subheader("Runs")
    st.dataframe(app_runs.runs_table(runs), hide_index=True, column_config={
        "best validation accuracy": st.column_config.NumberColumn(format="percent")})
    latest = runs[0]
    if latest is not running:
        app_runs.show_run_curves(latest)  # its curves stay when it has ended
        app_runs.show_failure(latest)
        result = app_runs.report_of(latest)
        if result:
            listed = ("it is in the model selector now" if app_runs.in_model_selector(latest)
                      else "its checkpoint does not load, so it is not in the model selector")
            st.markdown(f"**{latest.name}**: validation accuracy {result.accuracy:.2%}; {listed}.")
            app_runs.show_run_report_charts(latest)
            if app_runs.downloadable(latest.folder.best):
                st.download_button("Download its checkpoint", latest.folder.best.read_bytes,
                                   file_name=f"{latest.name}.pt", mime="application/octet-stream", on_click="ignore")
    resumable = [r.name for r in runs if r.resumable]
    if resumable and job is None:
        chosen = st.selectbox("Stopped or interrupted run", resumable)
        if st.button("Resume", disabled=not allowed, help=locked) and allowed:
            try:
                manager.resume(next(r.path for r in runs if r.name == chosen))
            except JobError as e:
                st.error(app_views.for_visitors(str(e)))
            else:
                st.rerun()  # the whole page follows the job: "starting…" until it trains
    if deletable := [r for r in runs if r is not running and not r.state.live]:
        delete_a_run(deletable)


with st.container(key=app_views.LIVE_VIEW_KEY):  # redrawn without fading
    live()
st.page_link(st.Page(Path(__file__).with_name("runs.py")), label="Every run: its report and curves, overlays, CSV",
             icon=":material/stacked_line_chart:")
