"""Inference: classify uploads, a camera photo, an image URL or the shipped examples, with Grad-CAM."""

import streamlit as st

from mobilenet import app_support as app
from mobilenet import charts
from mobilenet.intake import ImageError
from mobilenet.visual import enlarge

st.title("Inference")
entry = app.require_model()
clf = app.classifier(entry)
side = clf.card.resolution
st.caption(f"{entry.key} tells apart {', '.join(clf.classes)}. Every image is centre-cropped and resized to "
           f"{side}×{side}, as in training.")

files, other = st.columns(2)
uploaded = files.file_uploader("Upload images", type=app.UPLOAD_TYPES, accept_multiple_files=True)
examples = {path.stem: path for path in app.examples()}
chosen = other.pills("Or try an example", list(examples), selection_mode="multi", wrap=True)
url = other.text_input("Or paste an image URL", placeholder="https://…")
photo = other.camera_input("Photo") if other.toggle("Take a photo with the camera") else None
topk, show_cam = st.columns(2)
k = topk.slider("Classes to show", 1, len(clf.classes), min(5, len(clf.classes)))
gradcam = show_cam.toggle("Grad-CAM: where the network looked for its answer", value=True)

uploads = [app.Upload(f.name, f.getvalue()) for f in [*uploaded, *([photo] if photo else [])]]
uploads += [app.Upload(path.name, path.read_bytes()) for name, path in examples.items() if name in chosen]
if url:
    try:
        uploads.append(app.fetch(url))
    except ImageError as e:
        st.error(f"**{url}**: {e}")
if len(uploads) > app.MAX_IMAGES:
    st.warning(f"Only the first {app.MAX_IMAGES} of {len(uploads)} images are classified.")
    uploads = uploads[:app.MAX_IMAGES]

for result in app.classify(clf, uploads, k, gradcam):
    if isinstance(result, app.Failure):
        st.error(f"**{result.name}**: {result.message}")
        continue
    prediction = result.prediction
    st.markdown(f"**{result.name}**: {prediction.label} ({prediction.prob:.0%})")
    shown, seen, heat, bars = st.columns([3, 2, 3, 4])
    shown.image(result.photo, caption="the photo")
    seen.image(enlarge(prediction.image), caption=f"what the network saw ({side}×{side})")
    if result.heatmap is not None:
        heat.image(result.heatmap, caption=f"Grad-CAM for {prediction.label}")
    bars.altair_chart(charts.top_k(prediction.top), width="stretch")
    bars.caption(f"{prediction.ms:.1f} ms per image, on {app.device_label()}")
