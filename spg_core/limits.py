"""Limits the dashboard launcher needs, in a module with no heavy imports (the launcher starts the server
before anything imports torch, so `spg dashboard` answers within seconds)."""

from __future__ import annotations

MAX_UPLOAD_BYTES = 25 * 1024 * 1024  # an uploaded file; uploads.decode_upload enforces it, Streamlit too
RUNS_ENV = "SPG_RUNS_ROOT"  # the environment variable that hands the runs root to the app
