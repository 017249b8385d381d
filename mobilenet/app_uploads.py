"""A visitor's images on the Inference page: which uploads are kept in the session and which leave the server, the
image of a pasted URL, fetched once, and their answers, made once."""

from __future__ import annotations

import weakref
from typing import Any, Iterable

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx
from streamlit.runtime.uploaded_file_manager import DeletedFile

from . import answers
from .admin import client_address
from .answers import MAX_IMAGES, Failure, Result, Upload
from .data import IMAGE_SUFFIXES
from .infer import Classifier
from .intake import ImageError
from .memo import Memo

UPLOAD_TYPES = sorted(suffix.lstrip(".") for suffix in IMAGE_SUFFIXES)
UPLOADER_KEY = "uploader"
CAMERA_KEY = "camera"
TOP_K_KEY = "top_k"
URL_KEY = "image_url"
CAMERA_ON_KEY = "camera_on"
EXAMPLES_KEY = "examples"
GRADCAM_KEY = "gradcam"
MAP_OPACITY_KEY = "map_opacity"
# The Inference page's other choices, by widget key, with their defaults: kept when the visitor opens another page
# and comes back, as the uploads are (app_views.keep_choices).
CHOICES = {URL_KEY: "", CAMERA_ON_KEY: False, EXAMPLES_KEY: [], GRADCAM_KEY: True, TOP_K_KEY: 5, MAP_OPACITY_KEY: 0.6}
# What the uploads a session keeps may weigh together: a dozen phone photos, not 16 files at the 25 MB limit.
MAX_KEPT_BYTES = 64 * 2**20
# What a session's uploads may weigh in the server's store as they arrive, before any page has run (a client that
# uploads and never runs a page, a script, would otherwise pile them up): beyond it its oldest files are dropped.
MAX_SESSION_UPLOAD_BYTES = 2 * MAX_KEPT_BYTES
# A file that has arrived is in its uploader's value only once every file the browser is uploading with it has
# (minutes, for a phone's photos on a slow line): until then a page run must not take it for one no widget holds.
UPLOAD_GRACE_S = 600


# Each answer's "Map for class" choice, keyed by its place, image and top class (app_pages/inference.py).
MAP_CLASS_PREFIX = "map-class-"


def map_class_keys() -> list[str]:
    """The keys of the map classes chosen in this session: kept across pages like CHOICES."""
    return [key for key in st.session_state if isinstance(key, str) and key.startswith(MAP_CLASS_PREFIX)]


def map_class_key(place: int, result: Result) -> str:
    """The key of an answer's "Map for class" choice: another model's answer, or another image in this place, starts
    from its own top class instead of inheriting a choice made for a different one."""
    return f"{MAP_CLASS_PREFIX}{place}-{hash(result.upload):x}-{result.prediction.label}"


def forget_map_classes_but(keys: set[str]) -> None:
    """Forget the map classes chosen for answers no longer shown: a key an image and top class would otherwise pile
    up over a long session, and be kept on every page run of every page."""
    for key in map_class_keys():
        if key not in keys:
            del st.session_state[key]


def default_choices() -> None:
    """The page's part, before its widgets: each choice at its default until the visitor makes it."""
    for key, default in CHOICES.items():
        st.session_state.setdefault(key, default)


def keep_uploads(files: list, returning: bool, photo: object | None = None) -> tuple[list[Upload], list[str]]:
    """The uploader's first files, at most MAX_IMAGES of them and MAX_KEPT_BYTES together, remembered in the
    session, and the names of the ones beyond them.

    Streamlit forgets a page's uploader when the visitor opens another page, so on returning the images of the
    last visit stand in until replaced or removed. Files beyond the first are never read nor kept, and every file
    of the session but those and the camera's photo leaves the server's memory.
    """
    state = st.session_state
    kept, left_out = state.get("kept_uploads", []), state.get("left_out_uploads", [])
    held = _first_that_fit(files)
    # Files left out leave the server at once, but the uploader lists them (as a DeletedFile) until removed.
    listed = [f.file_id for f in state.get(UPLOADER_KEY) or []]
    if files or listed:
        held_ids = [f.file_id for f in held]
        if held_ids != state.get("kept_file_ids"):
            kept = [Upload(f.name, f.getvalue()) for f in held]
            state.kept_file_ids = held_ids
        dropped = {i: name for i, name in state.get("dropped_uploads", {}).items() if i in listed}
        present = {f.file_id for f in files}
        lost = [i for i in listed if i not in present and i not in dropped]  # dropped as they arrived (the cap)
        dropped |= {i: _dropped_on_arrival.get(i) or "a file the server could not keep" for i in lost}
        state.dropped_uploads = dropped | {f.file_id: f.name for f in files[len(held):]}
        left_out = list(state.dropped_uploads.values())
    elif not returning and state.get("uploader_had_files"):
        kept, left_out, state.kept_file_ids, state.dropped_uploads = [], [], None, {}  # the visitor removed them
    else:  # back on the page: the uploader lists nothing, so there is nothing left out to remove from it
        left_out, state.dropped_uploads = [], {}
    state.kept_uploads, state.left_out_uploads, state.uploader_had_files = kept, left_out, bool(files)
    _keep_only_held_uploads([*held, *([photo] if photo else [])], listed)
    return kept, left_out


def lost_photo_note() -> str | None:
    """What to tell a visitor whose camera photo left the server while the camera still shows it (the upload cap
    dropped it for files uploaded after it); None when there is nothing to tell."""
    if not isinstance(st.session_state.get(CAMERA_KEY), DeletedFile):
        return None
    return (f"Your photo is no longer on the server: it keeps the newest {MAX_SESSION_UPLOAD_BYTES / 2**20:.0f} MB "
            f"of a visitor's uploads, and the files uploaded after the photo took its room. Take it again to "
            f"classify it.")


def _first_that_fit(files: list) -> list:
    held, weight = [], 0
    for f in files[:MAX_IMAGES]:
        weight += f.size
        if weight > MAX_KEPT_BYTES:
            break
        held.append(f)
    return held


def left_out_note(left_out: list[str]) -> str:
    return (f"At most {MAX_IMAGES} uploaded images, {MAX_KEPT_BYTES / 2**20:.0f} MB together, are kept and "
            f"classified; left out: {', '.join(left_out)}. The first ones listed are kept, and the server does not "
            f"keep files it left out: to classify one, remove it and some of the kept ones, then upload it again.")


def url_image(url: str) -> Upload | None:
    """The image at the URL the visitor pasted, fetched once: the page's reruns (a slider, another class map) reuse
    it, or its failure, instead of asking the web again (a silent host would cost each rerun its timeout). None
    without a URL; ImageError for a URL that failed. The session keeps the last URL's outcome only (at most
    intake.MAX_BYTES)."""
    state = st.session_state
    if not url:
        state.pop("url_image", None)
        return None
    if state.get("url_image", (None,))[0] != url:
        state.pop("url_image", None)
        try:
            state.url_image = (url, answers.fetch(url, client_address()))
        except ImageError as e:
            state.url_image = (url, str(e))
    fetched = state.url_image[1]
    if isinstance(fetched, str):
        raise ImageError(fetched)
    return fetched


def forget_url_image() -> None:
    """Forget the pasted URL's outcome: the next run fetches it again (a host that was down or slow may answer)."""
    st.session_state.pop("url_image", None)


def answers_for(clf: Classifier, uploads: list[Upload], topk: int, threshold: float | None) -> list[Result | Failure]:
    """answers.classify, remembered in the session: the page's reruns (an opacity, a class map, the classes to
    show, one more image) do not decode and predict the images it has answered already. The session keeps this
    run's answers only, with every class, for one model and threshold (the photos at display size: at most
    MAX_IMAGES × 384×384 pixels)."""
    state = st.session_state
    model, answered_for, known = state.get("answers", (None, None, {}))
    if model is None or model() is not clf or answered_for != threshold:
        known = {}
    new = [u for u in dict.fromkeys(uploads) if u not in known]
    known |= dict(zip(new, answers.classify(clf, new, len(clf.classes), threshold)))
    known = {u: known[u] for u in uploads}
    state.answers = (weakref.ref(clf), threshold, known)
    return [answers.top_k(known[u], topk) for u in uploads]


def forget_uploads() -> None:
    """Forget the images kept from an earlier visit (the visitor cleared them)."""
    state = st.session_state
    state.kept_uploads, state.left_out_uploads, state.kept_file_ids = [], [], None


def drop_files_no_widget_holds(manager: object, session_id: str, held: set[str], listed: Iterable[str] = ()) -> int:
    """Remove a session's uploaded files that no widget holds any more; returns how many went. `listed`: the files
    the uploader's value names (those it holds and those left out); a file it does not name yet is kept while it may
    still be on its way into that value (UPLOAD_GRACE_S since it arrived in the capped store).

    Streamlit keeps every file a session uploads until the browser sends a delete or the session ends. A client
    that never deletes (a script; a page that lost the delete) could then fill the server's memory with one long
    session (the load benchmark grew it by 0.9 MB per upload). Managers without per-session storage are left
    alone."""
    storage = getattr(manager, "file_storage", {}).get(session_id, {})
    listed = set(listed)
    gone = [file_id for file_id in list(storage)
            if file_id not in held and (file_id in listed or _arriving.get(file_id) is None)]
    for file_id in gone:
        manager.remove_file(session_id, file_id)
    return len(gone)


# The names of files the cap dropped as they arrived (file ids are unique across sessions): the page gets such a file
# as a DeletedFile, which has no name, and names it among those left out.
_dropped_on_arrival: Memo[str] = Memo(size=4096)
# The files that arrived lately, by id: room for the grace's worth of uploads at 50 a second (a 2-core server
# answers 11-14; a few MB at most), so that a busy server's other uploads do not push one out before its time.
_arriving: Memo[bool] = Memo(size=50 * UPLOAD_GRACE_S, max_age_s=UPLOAD_GRACE_S)


def cap_session_uploads(manager: object) -> None:
    """Make Streamlit's upload store keep at most MAX_SESSION_UPLOAD_BYTES per session, the newest files: done
    where files arrive, since the page's own clean-up (drop_files_no_widget_holds) needs a page run. Once per store;
    a store without per-session storage is left alone."""
    if getattr(manager, "_capped", False) or not hasattr(manager, "file_storage"):
        return
    add = manager.add_file

    def add_file(session_id: str, file: Any) -> None:
        add(session_id, file)
        _arriving.put(file.file_id, True)
        # A copy: a page run may remove files meanwhile (remove_file of one already gone does nothing).
        stored = dict(list(manager.file_storage.get(session_id, {}).items()))
        over = sum(len(f.data) for f in stored.values()) - MAX_SESSION_UPLOAD_BYTES
        for file_id, dropped in stored.items():  # oldest first
            if over <= 0:
                break
            if file_id != file.file_id:
                over -= len(dropped.data)
                _dropped_on_arrival.put(file_id, dropped.name)
                manager.remove_file(session_id, file_id)

    manager.add_file = add_file
    manager._capped = True


def cap_uploads() -> None:
    """The entry script's part: cap this server's upload store (see cap_session_uploads)."""
    ctx = get_script_run_ctx()
    if ctx is not None and ctx.uploaded_file_mgr is not None:
        cap_session_uploads(ctx.uploaded_file_mgr)


def _keep_only_held_uploads(held: list, listed: list[str]) -> None:
    """On the page with the session's only upload widgets, given the files they hold and the uploader lists: drop
    the session's others."""
    ctx = get_script_run_ctx()
    if ctx is None or ctx.uploaded_file_mgr is None:
        return
    drop_files_no_widget_holds(ctx.uploaded_file_mgr, ctx.session_id, {f.file_id for f in held}, listed)
