"""Config fingerprints: every artifact records the hash of the settings it was made with, and a
run whose artifacts disagree with its config.json is *inconsistent*.

A fingerprint is the SHA-256 of the canonical JSON of the config keys that decide a stage:

    sae      aux, backbone, weights, method, protocol and the `sae` section
    guides   the SAE's keys and the `guides` section
    target   the SAE's keys and `target` (the guides behind the maps are tracked by their
             file hash instead: `RunDir.stale_artifacts`, so new guides make maps *stale*)
    run      every setting of the run (what a re-run of the same command must match to resume)

`device` is never part of one: the same run on another device is the same run. Runs made
before fingerprints record none and are never called inconsistent.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .atomic import read_json, safetensors_metadata
from .errors import SPGError
from .runs import (
    GUIDES_FILE,
    GUIDES_RECORD_FILE,
    METRICS_FILE,
    PATCH_MAPS_FILE,
    SAE_FILE,
    SAE_RECORD_FILE,
    RunDir,
)

FINGERPRINT_KEY = "config_sha256"
_SAE_KEYS = ("aux", "backbone", "weights", "method", "protocol", "sae")
STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "sae": _SAE_KEYS,
    "guides": (*_SAE_KEYS, "guides"),
    "target": (*_SAE_KEYS, "target"),
    "run": (*_SAE_KEYS, "target", "guides", "score"),
}
# Which stage each artifact belongs to, and where it keeps its fingerprint: in a JSON record's top
# level ("json"), in metrics.json's provenance ("provenance"), in a safetensors file's metadata ("meta")
# or in the metadata's provenance ("meta-provenance").
ARTIFACT_STAGES: dict[str, tuple[str, str]] = {
    SAE_FILE: ("sae", "meta"),
    SAE_RECORD_FILE: ("sae", "json"),
    GUIDES_FILE: ("guides", "meta"),
    GUIDES_RECORD_FILE: ("guides", "json"),
    PATCH_MAPS_FILE: ("target", "meta-provenance"),
    METRICS_FILE: ("target", "provenance"),
}


def fingerprint(config: dict[str, Any], stage: str) -> str:
    """Hex SHA-256 of the config keys that decide `stage` (a config.json dict or `RunConfig.to_dict()`)."""
    part = {k: config.get(k) for k in STAGE_KEYS[stage]}
    text = json.dumps(part, sort_keys=True, separators=(",", ":"), default=list)
    return hashlib.sha256(text.encode()).hexdigest()


def recorded_fingerprint(run: RunDir, name: str) -> str | None:
    """The fingerprint artifact `name` records (None when absent or recorded by an older version)."""
    _, where = ARTIFACT_STAGES[name]
    path = run.file(name)
    if not path.is_file():
        return None
    if where.startswith("meta"):
        record = safetensors_metadata(path)
    else:
        record = read_json(path, what=name)
    if where.endswith("provenance"):
        record = record.get("provenance") or {}
    value = record.get(FINGERPRINT_KEY) if isinstance(record, dict) else None
    return value if isinstance(value, str) else None


def inconsistent_artifacts(run: RunDir) -> list[str]:
    """The run's artifacts made with other settings than its config.json says (empty when consistent).

    Raises SPGError when config.json or a record cannot be read."""
    config = run.read_config()
    wrong = []
    for name, (stage, _) in ARTIFACT_STAGES.items():
        recorded = recorded_fingerprint(run, name)
        if recorded is not None and recorded != fingerprint(config, stage):
            wrong.append(name)
    return wrong


def inconsistency_text(folder: str | Path, wrong: list[str]) -> str:
    """One sentence saying what is inconsistent and what to do."""
    return (
        f"inconsistent run: {', '.join(wrong)} made with other settings than its config.json "
        f"(two runs wrote {folder}, or a command was cut off); re-run that command, or the whole run with "
        "--overwrite"
    )


def require_consistent(run: RunDir, stages: tuple[str, ...] = ("sae", "guides", "target")) -> None:
    """SPGError naming the artifacts of `stages` made with other settings than config.json."""
    wrong = [name for name in inconsistent_artifacts(run) if ARTIFACT_STAGES[name][0] in stages]
    if wrong:
        raise SPGError(
            inconsistency_text(run.path, wrong).split(";")[0],
            path=str(run.path),
            fix="re-run the command that was cut off, or the whole run with --overwrite (or into a new --out)",
        )
