"""Runs: every run under the root, and the chosen run's configuration, metrics, paper comparison, sweeps."""

from __future__ import annotations

import streamlit as st

from dashboard import state, widgets
from dashboard.viewmodels.health import config_summary
from dashboard.viewmodels.tables import metrics_frame, paper_comparison
from dashboard.viewmodels.sweeps import run_sweep_dir
from spg_core.run_paths import resolve_run
from spg_core.report import METRIC_TITLES
from spg_core.runs import CONFIG, METRICS

root = state.runs_root()
widgets.page_header("Runs", "Experiments under the runs root: settings, per-category metrics and how they "
                            "compare with the paper")

overview = state.run_overview(str(root))
if overview.empty:
    widgets.empty_state(root)
    st.stop()

st.dataframe(overview, hide_index=True, key="runs_overview",
             column_config={k: st.column_config.NumberColumn(k, format="%.1f")
                            for k in overview.columns if k.endswith(("AUROC", "AP", "AUPRO"))})

run = widgets.require_run()
st.subheader(f"Run {run.name}")
health = widgets.run_health(run)
widgets.require(health, [CONFIG], "The run's configuration")

sig = state.signature(run)
tab_metrics, tab_config, tab_paper, tab_sweep = st.tabs(["Metrics", "Configuration", "Paper comparison", "Sweep"])

with tab_metrics, widgets.guard("The metrics of this run cannot be shown"):
    if not health.has(METRICS):
        st.info("No metrics yet: evaluate the run with `spg eval --run DIR`.", icon=":material/hourglass:")
    else:
        metrics = state.run_metrics(str(run), sig)
        frame = metrics_frame(metrics)
        widgets.metric_cards(frame.loc["mean"].to_dict())
        st.dataframe(frame, key="metrics_table",
                     column_config={c: st.column_config.ProgressColumn(c, format="%.1f", min_value=0, max_value=100)
                                    for c in frame.columns})
        st.plotly_chart(widgets.run_metrics_figure(frame), key="metrics_chart", config={"displayModeBar": False})
        for note in metrics.get("warnings", []):
            st.caption(f"Note: {note}")

with tab_config, widgets.guard("The configuration of this run cannot be shown"):
    summary = config_summary(state.run_config(str(run), sig))
    cols = st.columns(len(summary))
    for col, (section, values) in zip(cols, summary.items()):
        with col:
            st.markdown(f"**{section}**")
            st.dataframe({"setting": list(values), "value": [str(v) for v in values.values()]},
                         hide_index=True, key=f"config_{section}")

with tab_paper, widgets.guard("The paper comparison cannot be shown"):
    comparison = paper_comparison(state.run_metrics(str(run), sig)) if health.has(METRICS) else None
    if comparison is None:
        st.info("No row of the paper matches this run. The paper reports SPG with DINOv3 or OpenCLIP "
                "for MVTec AD -> VisA and VisA -> MVTec AD; other runs have nothing to compare with.",
                icon=":material/info:")
    else:
        name, table = comparison
        st.markdown(f"Ours against **{name}** (values in %).")
        metric = st.segmented_control("Metric", list(METRIC_TITLES.values()), default="Image AUROC",
                                      key="paper_metric")
        st.dataframe(table[table["metric"] == (metric or "Image AUROC")].drop(columns="metric"),
                     hide_index=True, key="paper_table",
                     column_config={c: st.column_config.NumberColumn(c, format="%+.1f" if c == "difference" else "%.1f")
                                    for c in ("ours", "paper", "difference")})

with tab_sweep, widgets.guard("The sweep of this run cannot be shown"):
    sweep = run_sweep_dir(run)
    if sweep is None:
        st.info("This run has no sweep (`RUN/sweep/`). Sweeps made with `spg sweep --out DIR` under the runs "
                "root are listed below the tabs.", icon=":material/info:")
    else:
        widgets.sweep_view(sweep, key="run_sweep")

sweeps = state.sweep_names(str(root))
if sweeps:
    st.subheader("Sweeps")
    name = st.selectbox("Sweep folder", sweeps, key="sweep_pick")
    with widgets.guard(f"Sweep {name} cannot be shown"):
        widgets.sweep_view(resolve_run(root, name), key="root_sweep")
