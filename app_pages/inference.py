"""Inference: classify uploads, a camera photo, an image URL or the shipped examples, with class activation maps."""

import streamlit as st

from mobilenet import answers, app_models, app_uploads, charts, ood
from mobilenet.display import percents_apart
from mobilenet.intake import ImageError
from mobilenet.visual import enlarge

st.title("Inference")
entry = app_models.require_model()
clf = app_models.classifier(entry)
side = clf.card.resolution
threshold = ood.threshold(entry.path)
st.caption(f"{entry.key} tells apart {', '.join(clf.classes)}. Every image is centre-cropped and resized to "
           f"{side}×{side}, as in training.")

app_uploads.default_choices()
files, other = st.columns(2)
returning = app_uploads.UPLOADER_KEY not in st.session_state  # Streamlit drops the uploader's state on leaving the page
uploaded = files.file_uploader("Upload images", type=app_uploads.UPLOAD_TYPES, accept_multiple_files=True,
                               key=app_uploads.UPLOADER_KEY)
url = other.text_input("Or paste an image URL", placeholder="https://…", key=app_uploads.URL_KEY).strip()
photo = None
if other.toggle("Take a photo with the camera", key=app_uploads.CAMERA_ON_KEY):
    photo = other.camera_input("Photo", key=app_uploads.CAMERA_KEY)
    if note := app_uploads.lost_photo_note():
        other.warning(note)
kept, left_out = app_uploads.keep_uploads(uploaded, returning, photo)
if left_out:
    files.warning(app_uploads.left_out_note(left_out))
if kept and not uploaded:
    files.caption(f"Showing {len(kept)} image(s) you uploaded before: {', '.join(u.name for u in kept)}. "
                  f"Uploading others replaces them.")
    if files.button("Clear them", icon=":material/delete:"):
        app_uploads.forget_uploads()
        st.rerun()

examples = {path.stem: path for path in answers.examples()}
with st.expander("Or try an example (CIFAR-10 training images: the models have seen them)", expanded=True):
    st.image(answers.example_thumbnails(tuple(examples.values())), caption=list(examples), output_format="PNG")
    chosen = st.pills("Examples", list(examples), selection_mode="multi", label_visibility="collapsed",
                      key=app_uploads.EXAMPLES_KEY)

topk, show_cam, opacity_column = st.columns(3)
if len(clf.classes) > 1:
    st.session_state[app_uploads.TOP_K_KEY] = min(st.session_state[app_uploads.TOP_K_KEY], len(clf.classes))
    k = topk.slider("Classes to show", 1, len(clf.classes), key=app_uploads.TOP_K_KEY)
else:
    k = 1
gradcam = show_cam.toggle("Class activation map: where the network found its evidence", key=app_uploads.GRADCAM_KEY)
opacity = opacity_column.slider("Map opacity", 0.0, 1.0, step=0.05, disabled=not gradcam,
                                key=app_uploads.MAP_OPACITY_KEY)

uploads = [*kept, *([answers.Upload(photo.name, photo.getvalue())] if photo else [])]
uploads += [answers.Upload(path.name, path.read_bytes()) for name, path in examples.items() if name in chosen]
try:
    if from_url := app_uploads.url_image(url):
        uploads.append(from_url)
except ImageError as e:
    st.error(f"**{url}**: {e}")
    if st.button("Try this URL again", icon=":material/refresh:"):  # its failure is kept, so that reruns wait not
        app_uploads.forget_url_image()
        st.rerun()
uploads, dropped = answers.first_images(uploads)
if dropped:
    st.warning(dropped)

results = app_uploads.answers_for(clf, uploads, k, threshold)
app_uploads.forget_map_classes_but({app_uploads.map_class_key(i, r) for i, r in enumerate(results)
                                    if isinstance(r, answers.Result)})
for i, result in enumerate(results):
    if isinstance(result, answers.Failure):
        st.error(f"**{result.name}**: {result.message}")
        continue
    prediction = result.prediction
    st.markdown(f"**{result.name}**: {prediction.label} ({prediction.prob:.0%})")
    if result.foreign:
        prob, limit = percents_apart(prediction.prob, threshold)
        st.warning(f"Not sure: this does not look like any of the {len(clf.classes)} classes. The top class has "
                   f"{prob}, below the {limit} that {ood.KEEP:.0%} of CIFAR-10 validation images reach.",
                   icon=":material/help:")
    shown, seen, heat, bars = st.columns([3, 2, 3, 4])
    shown.image(result.photo, caption="the photo")
    seen.image(enlarge(prediction.image), caption=f"what the network saw ({side}×{side})")
    if gradcam:
        label = heat.selectbox("Map for class", clf.classes, index=clf.classes.index(prediction.label),
                               key=app_uploads.map_class_key(i, result))
        overlay = answers.heatmap(clf, result, label, opacity)
        if overlay is None:
            heat.info(f"Nothing in this image speaks for {label}: its map is zero everywhere.")
        else:
            heat.image(overlay, caption=f"evidence for {label}")
    bars.vega_lite_chart(charts.top_k(prediction.top), width="stretch")
    bars.caption(f"{prediction.ms:.1f} ms for this image, on {app_models.device_label()}")

if results:
    table = answers.predictions_table(results)
    csv, json_file = st.columns(2)
    csv.download_button("Download predictions (CSV)", table.to_csv(index=False), "predictions.csv", "text/csv",
                        icon=":material/download:")
    json_file.download_button("Download predictions (JSON)", answers.predictions_json(results), "predictions.json",
                              "application/json", icon=":material/download:")
if threshold is None and results:
    st.caption("This model has no calibrated out-of-distribution threshold (only the shipped models do), "
               "so no answer is marked \"not sure\".")
