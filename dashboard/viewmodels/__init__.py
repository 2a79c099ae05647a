"""View models of SPG Studio: the non-UI logic the pages need, one module per topic.

Plain Python and pandas over run artifacts (no Streamlit), tested without it:

- `health`      which artifacts a run has, its status, the runs overview
- `tables`      metric tables (per category, paper comparison, runs side by side, ablation)
- `sweeps`      sweep folders and their tables
- `targets`     target images at a threshold: outcomes, filters, patch picking, score formats
- `attribution` per-atom contributions to a patch or image, the guides' atom table
- `atom_detail` an atom's top patches, category profile and activation sample

Path confinement (`spg_core.run_paths`) and upload validation (`spg_core.uploads`) stay in the
engine: they guard inputs, and the launcher needs them too.
"""
