"""Runs: every run under the root, and the chosen run's configuration, metrics, paper comparison, sweeps."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from dashboard import glossary, guards, pills, state
from dashboard.charts import run_metrics_figure
from dashboard.page import page_header, require_view
from dashboard.sweep_view import sweep_view
from dashboard.viewmodels.health import config_summary
from dashboard.viewmodels.sweeps import run_sweep_dir
from dashboard.viewmodels.tables import SHORT_TITLES, metrics_frame, paper_comparison, setting_text
from spg_core.report import METRIC_TITLES
from spg_core.report_html import write_report
from spg_core.run_paths import resolve_run
from spg_core.runs import (
    CONFIG_FILE as CONFIG,
)
from spg_core.runs import (
    METRICS_FILE as METRICS,
)
from spg_core.runs import (
    PATCH_MAPS_FILE as PATCH_MAPS,
)
from spg_core.runs import (
    SCORES_FILE as SCORES,
)


def report_button(run, health) -> None:
    """Write RUN/report.html (spg report) and offer it for download: one self-contained file."""
    if not health.has(METRICS, PATCH_MAPS, SCORES):
        st.caption("A report needs an evaluated run: `spg eval --run DIR` first.")
        return
    make_col, get_col = st.columns([1, 3], vertical_alignment="center")
    if make_col.button(
        "Write run report",
        icon=":material/description:",
        key="report_make",
        help="one HTML file with metrics, the worst errors' maps and the top atoms; opens offline",
    ):
        with st.spinner("Writing the report ..."), guards.guard("The report cannot be written"):
            st.session_state["report_path"] = str(write_report(run))
    path = st.session_state.get("report_path")
    if path and Path(path).is_file() and Path(path).parent == run:
        get_col.download_button(
            f"Download {Path(path).name} ({Path(path).stat().st_size / 2**20:.1f} MB)",
            Path(path).read_bytes(),
            file_name=f"{run.name}-report.html",
            mime="text/html",
            key="report_download",
            icon=":material/download:",
        )


root = state.runs_root()
page_header(
    "Runs", "Experiments under the runs root: settings, per-category metrics and how they compare with the paper"
)

overview = state.run_overview(str(root))
if overview.empty:
    guards.empty_state(root)
    st.stop()

st.dataframe(
    overview.fillna({c: "?" for c in overview.columns if overview[c].dtype == object}),
    hide_index=True,
    key="runs_overview",
    width="stretch",
    column_config={
        k: st.column_config.NumberColumn(f"{SHORT_TITLES.get(k, k)} (%)", format="%.1f", help=glossary.say(k))
        for k in overview.columns
        if k in METRIC_TITLES.values()
    },
)

view = require_view()
run = view.path
st.subheader(f"Run {run.name}")
health = guards.run_health(run)
guards.require(health, [CONFIG], "The run's configuration")
report_button(run, health)
tab_metrics, tab_config, tab_paper, tab_sweep = st.tabs(["Metrics", "Configuration", "Paper comparison", "Sweep"])

with tab_metrics, guards.guard("The metrics of this run cannot be shown"):
    if not health.has(METRICS):
        st.info("No metrics yet: evaluate the run with `spg eval --run DIR`.", icon=":material/hourglass:")
    else:
        metrics = view.metrics()
        frame = metrics_frame(metrics)
        pills.metric_cards(frame.loc["mean"].to_dict())
        st.dataframe(
            frame,
            key="metrics_table",
            column_config={
                c: st.column_config.ProgressColumn(c, format="%.1f", min_value=0, max_value=100, help=glossary.say(c))
                for c in frame.columns
            },
        )
        st.plotly_chart(run_metrics_figure(frame), key="metrics_chart", config={"displayModeBar": False})
        for note in metrics.get("warnings", []):
            st.caption(f"Note: {note}")

with tab_config, guards.guard("The configuration of this run cannot be shown"):
    config = view.config()
    summary = config_summary(config)
    cols = st.columns(len(summary))
    for col, (section, values) in zip(cols, summary.items()):
        with col:
            st.markdown(f"**{section}**")
            st.dataframe(
                {
                    "setting": list(values),
                    "value": [setting_text(k, v, str(config.get("backbone", ""))) for k, v in values.items()],
                },
                hide_index=True,
                key=f"config_{section}",
            )

with tab_paper, guards.guard("The paper comparison cannot be shown"):
    comparison = paper_comparison(view.metrics()) if health.has(METRICS) else None
    if comparison is None:
        st.info(
            "No row of the paper matches this run. The paper reports SPG with DINOv3 or OpenCLIP "
            "for MVTec AD -> VisA and VisA -> MVTec AD; other runs have nothing to compare with.",
            icon=":material/info:",
        )
    else:
        name, table = comparison
        st.markdown(f"Ours against **{name}** (values in %).")
        metric = st.segmented_control("Metric", list(METRIC_TITLES.values()), default="Image AUROC", key="paper_metric")
        st.dataframe(
            table[table["metric"] == (metric or "Image AUROC")].drop(columns="metric"),
            hide_index=True,
            key="paper_table",
            column_config={
                c: st.column_config.NumberColumn(c, format="%+.1f" if c == "difference" else "%.1f")
                for c in ("ours", "paper", "difference")
            },
        )

with tab_sweep, guards.guard("The sweep of this run cannot be shown"):
    sweep = run_sweep_dir(run)
    if sweep is None:
        st.info(
            "This run has no sweep (`RUN/sweep/`). Sweeps made with `spg sweep --out DIR` under the runs "
            "root are listed below the tabs.",
            icon=":material/info:",
        )
    else:
        sweep_view(sweep, key="run_sweep")

sweeps = state.sweep_names(str(root))
if sweeps:
    st.subheader("Sweeps")
    name = st.selectbox("Sweep folder", sweeps, key="sweep_pick")
    with guards.guard(f"Sweep {name} cannot be shown"):
        sweep_view(resolve_run(root, name), key="root_sweep")
