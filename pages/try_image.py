"""Try an image: upload images, get each one's anomaly map, score and top atoms under the chosen run."""

from __future__ import annotations

import hashlib
from pathlib import Path

import streamlit as st

from dashboard import guards, pills, region_panel
from dashboard.charts import contribution_figure
from dashboard.map_figure import patch_map_figure
from dashboard.page import run_page
from dashboard.upload_view import Prediction, predict_upload, upload_region_atoms
from dashboard.viewmodels.targets import format_score, peak_patch
from spg_core.errors import SPGError
from spg_core.render import PROBABILITY_SCALE, fitted_scale, sigmoid
from spg_core.runs import GUIDES_FILE as GUIDES
from spg_core.runs import SCORES_FILE as SCORES
from spg_core.thresholds import best_f1_threshold
from spg_core.uploads import MAX_UPLOAD_BYTES, UPLOAD_TYPES, read_image_file

view, health = run_page(
    "Try an image",
    "Score your own images with this run: anomaly map, image score and the atoms behind it",
    needs=[GUIDES],
    purpose="Scoring new images",
)
limit_mb = MAX_UPLOAD_BYTES // 2**20


def run_threshold() -> tuple[float | None, str]:
    """The run's decision threshold (chosen on its auxiliary set, RUN/threshold.json) and where it comes
    from; the target's own best-F1 (an oracle) only when the run has no auxiliary store."""
    try:
        return view.threshold()["image"]["threshold"], "chosen on the auxiliary set"
    except SPGError:
        pass
    if not health.has(SCORES):
        return None, ""
    try:
        rows = view.target_outputs().rows
    except SPGError:
        return None, ""
    return best_f1_threshold([r["score"] for r in rows], [r["label"] for r in rows]), "oracle: target best F1"


def map_look():
    """(colour scale, contour level, legend): the run's fitted scale and its normal-pixel contour when
    the run has an auxiliary threshold record, else 0-1 and p = 0.5."""
    try:
        record = view.threshold()
    except SPGError:
        return PROBABILITY_SCALE, 0.5, PROBABILITY_SCALE.legend + "; white outline where p >= 0.5"
    contour = sigmoid(record["pixel_scale"]["vmax"])
    return (
        fitted_scale(record["pixel_scale"]),
        contour,
        fitted_scale(record["pixel_scale"]).legend + f"; white outline where the map reaches p {contour:.2g}",
    )


def upload_key(position: int, data: bytes) -> str:
    """Widget keys of one uploaded file: its position and a digest of its bytes, never its name (MVTec-style
    folders all hold a `000.png`, and two files of one name must both render)."""
    return f"try_{position}_{hashlib.sha1(data).hexdigest()[:10]}"


def show(
    uid: str, name: str, data: bytes, result: Prediction, threshold: float | None, source: str, opacity: float
) -> None:
    with st.container(border=True):
        verdict = ""
        if threshold is not None:
            kind = "anomalous" if result.score >= threshold else "normal"
            verdict = pills.pill(f"{kind} at threshold {format_score(threshold)} ({source})", kind)
        st.markdown(f"**{name}** {verdict}", unsafe_allow_html=True)
        left, middle, right = st.columns([1, 1.2, 1.1], gap="medium")
        has_atoms = result.atoms is not None and not result.atoms.empty
        rkey, chart, opens = f"{uid}_region::", f"{uid}_map", f"{uid}_region_open"
        grid, peak = result.probs.shape, peak_patch(result.probs, result.probs.shape)
        region = region_panel.current_region(rkey, grid, peak) if has_atoms else None
        middle.caption(
            "Anomaly map (white box: the most anomalous patch"
            + ("; drag a box for the region's atoms below)" if has_atoms else ")")
        )
        left.image(result.image, caption="as the backbone sees it", width="stretch")
        scale, contour, legend = map_look()
        fig = patch_map_figure(
            result.image,
            result.probs,
            opacity=opacity,
            scale=scale,
            smoothing_sigma=view.smoothing_sigma(),
            contour_level=contour,
            selected=peak,
            region=region,
            height=400,
            box_select=has_atoms,
        )
        if has_atoms:
            middle.plotly_chart(
                fig,
                key=chart,
                selection_mode=("points", "box"),
                config={"displayModeBar": False},
                on_select=region_panel.on_region_select(rkey, chart, grid, opens=opens),
            )
        else:
            middle.plotly_chart(fig, key=chart, config={"displayModeBar": False})
        middle.caption(legend)
        with right:
            st.metric("Image score", format_score(result.score), border=True)
            if not has_atoms:
                st.caption("This run has no dictionary (free guides): no atoms to show.")
            else:
                st.plotly_chart(
                    contribution_figure(result.atoms, height=300),
                    key=f"{uid}_atoms",
                    config={"displayModeBar": False},
                )
        if has_atoms:
            # Opens by itself once a box is drawn on the map (the selection is the question asked): the map's
            # callback sets this expander's state, which Streamlit honours on the rerun.
            with st.expander(
                "Region -> atoms: which atoms fire in a part of this image, and why it is flagged",
                key=opens,
                on_change="rerun",
            ):
                region = region_panel.region_sliders(rkey, grid, peak)
                region_panel.region_panel(
                    rkey,
                    view,
                    lambda r, c: upload_region_atoms(view, name, data, r, c),
                    *region,
                )


# No `type=` filter: Streamlit would refuse other files with an exception; decode_upload refuses
# them with a message instead (and also checks size, pixel count and that the file decodes).
uploads = st.file_uploader(
    f"Images ({', '.join(UPLOAD_TYPES)}; up to {limit_mb} MB each)", accept_multiple_files=True, key="uploads"
)
samples = []
if health.has(SCORES):
    with guards.guard("The run's sample images cannot be listed"):
        rows = view.target_outputs().rows
        samples = [r["image_path"] for r in rows if r["label"]][:: max(1, len(rows) // 40)][:12]


def sample_label(path: str | None) -> str:
    """'category · defect/file.png': file names repeat across categories, so the label names the category."""
    if path is None:
        return "none"
    parts = Path(path).parts
    category = parts[-4] if len(parts) >= 4 else ""
    return f"{category} · {parts[-2]}/{parts[-1]}" if category else f"{parts[-2]}/{parts[-1]}"


sample_col, opacity_col = st.columns([3, 1])
sample = sample_col.selectbox(
    "... or try a sample from the target set", [None] + samples, key="try_sample", format_func=sample_label
)
opacity = opacity_col.slider("Map opacity", 0.0, 1.0, 0.55, 0.05, key="try_opacity")

files = [(f.name, f.getvalue()) for f in uploads or []]
if sample:
    try:
        files.append((Path(sample).name, read_image_file(sample)))
    except SPGError as exc:
        guards.error_box(exc, f"{Path(sample).name} cannot be read")
if not files:
    st.info("Upload one or more images to see their anomaly maps.", icon=":material/upload:")
    st.stop()

threshold, source = run_threshold()
for position, (name, data) in enumerate(files):
    try:
        show(upload_key(position, data), name, data, predict_upload(view, name, data), threshold, source, opacity)
    except SPGError as exc:
        guards.error_box(exc, f"{name} was refused")
