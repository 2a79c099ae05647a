"""The run directory: one aux -> target experiment, written atomically, read with validation.

    RUN/config.json               every setting used (incl. `protocol`), versions, backbone identity, store paths
    RUN/sae.safetensors           TopK SAE weights, dead-atom mask (+ config and backbone identity as metadata)
    RUN/sae.json                  SAE config and training history (loss, FVU, dead latents, dead atoms)
    RUN/guides.safetensors        theta_n, theta_a (pair) or theta [4, M] (official) (EMA), raw theta
    RUN/guides.json               guide config, history, active atom counts, auxiliary fit, sae_sha256
    RUN/target/patch_maps.safetensors   anomaly probabilities on the patch grid [K, h, w] float32 and scores [K]
    RUN/target/scores.csv         one row per target image: path, category, defect, label, score
    RUN/metrics.json              {"mean": {...}, "per_category": {...}, "settings": {...}, "provenance": {...}}
    RUN/per_category.csv, RUN/report.md
    RUN/atoms/                    atom index and statistics (spg atoms)

Full-resolution maps are the bilinear upsampling of the patch maps
(`spg_core.scoring.upsample`), so they are recomputed on demand, not stored.

Provenance: guides.json records the SHA-256 of the SAE it was trained on; the patch
maps' metadata and metrics.json record the guides' hash and the target store's manifest
hash. `stale_artifacts` names what no longer matches what produced it (e.g. maps and
metrics after `spg train-guides` replaced the guides). Runs older than provenance
record nothing and are never called stale.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import torch

from .atomic import check_regular_file, file_sha256, load_tensors, read_json, save_tensors, write_json, write_text
from .config import RunConfig
from .errors import SPGError

CONFIG_FILE = "config.json"
SAE_FILE = "sae.safetensors"
SAE_RECORD_FILE = "sae.json"
GUIDES_FILE = "guides.safetensors"
GUIDES_RECORD_FILE = "guides.json"
PATCH_MAPS_FILE = "target/patch_maps.safetensors"
SCORES_FILE = "target/scores.csv"
METRICS_FILE = "metrics.json"
THRESHOLD_FILE = "threshold.json"  # decision threshold + map scale (thresholds.py)
# scores.csv holds ~60 bytes a target image: 64 MiB is a million images, far beyond any target set.
MAX_SCORES_BYTES = 64 * 2**20


class RunDir:
    """A run directory. Reading methods raise SPGError naming the missing or damaged file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    def exists(self, name: str) -> bool:
        return (self.path / name).is_file()

    # -- config --------------------------------------------------------------------------
    def write_config(self, cfg: RunConfig, extra: dict[str, Any]) -> None:
        write_json(self.file(CONFIG_FILE), {**cfg.to_dict(), **extra})

    def read_config(self) -> dict[str, Any]:
        if not self.path.is_dir():
            raise SPGError(
                "run directory not found",
                path=str(self.path),
                fix="create one with `spg run --aux ... --target ... --out DIR`",
            )
        return read_json(self.file(CONFIG_FILE), what="run config")

    def run_config(self) -> RunConfig:
        return RunConfig.from_dict(self.read_config())

    def update_config(self, **fields: Any) -> None:
        """Set top-level keys of config.json, keeping every other key."""
        cfg = self.read_config()
        cfg.update(fields)
        write_json(self.file(CONFIG_FILE), cfg)

    # -- provenance ------------------------------------------------------------------------
    def digest(self, name: str) -> str | None:
        """SHA-256 of one of the run's files, None when it is absent."""
        return file_sha256(self.file(name)) if self.exists(name) else None

    def stale_artifacts(self) -> list[str]:
        """Files whose recorded producer no longer matches: guides trained on another SAE, maps
        or metrics made with other guides. Empty for consistent runs and for runs without records."""
        stale = []
        guides_rec = (
            read_json(self.file(GUIDES_RECORD_FILE), what="guide record") if self.exists(GUIDES_RECORD_FILE) else {}
        )
        sae_sha = guides_rec.get("provenance", {}).get("sae_sha256")
        if sae_sha and self.exists(SAE_FILE) and sae_sha != self.digest(SAE_FILE):
            stale.append(GUIDES_FILE)
        guides_sha = self.digest(GUIDES_FILE)
        if self.exists(METRICS_FILE):
            recorded = self.read_metrics().get("provenance", {}).get("guides_sha256")
            if recorded and recorded != guides_sha:
                stale.append(METRICS_FILE)
        if self.exists(PATCH_MAPS_FILE):
            _, meta = load_tensors(self.file(PATCH_MAPS_FILE), what="target maps")
            recorded = meta.get("provenance", {}).get("guides_sha256")
            if recorded and recorded != guides_sha:
                stale.append(PATCH_MAPS_FILE)
        return stale

    # -- target outputs --------------------------------------------------------------------
    def write_target(
        self,
        probs: torch.Tensor,
        scores: torch.Tensor,
        records: list[dict[str, Any]],
        grid: tuple[int, int],
        image_size: int,
        provenance: dict[str, Any] | None = None,
    ) -> None:
        """probs `[K, N]`, scores `[K]`, one record per target image; `provenance`: hashes of the
        guides and target store that produced them."""
        h, w = grid
        save_tensors(
            self.file(PATCH_MAPS_FILE),
            {"probs": probs.reshape(-1, h, w).float(), "scores": scores.float()},
            {"grid": [h, w], "image_size": image_size, "provenance": provenance or {}},
        )
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["index", "image_path", "category", "defect", "label", "score"])
        for i, (r, s) in enumerate(zip(records, scores.tolist())):
            writer.writerow([i, r["image_path"], r["category"], r["defect"], r["label"], f"{s:.6f}"])
        write_text(self.file(SCORES_FILE), buf.getvalue())

    def read_target(self) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """(probs `[K, h, w]` float32, scores `[K]`, metadata with grid and image_size), their shapes
        checked against each other, the grid they record and the run's backbone grid."""
        tensors, meta = load_tensors(self.file(PATCH_MAPS_FILE), what="target maps")
        if "probs" not in tensors or "scores" not in tensors:
            raise SPGError(
                "target maps file lacks probs/scores",
                path=str(self.file(PATCH_MAPS_FILE)),
                fix="re-run `spg eval --run DIR`",
            )
        probs, scores = tensors["probs"].float(), tensors["scores"].float()
        grids = {"the grid the file records": meta.get("grid")}
        if self.exists(CONFIG_FILE):
            grids["the run's backbone grid"] = self.read_config().get("backbone_identity", {}).get("grid")
        problem = target_shape_problem(tuple(probs.shape), tuple(scores.shape), grids)
        if problem:
            raise SPGError(
                f"target maps do not fit: {problem}",
                path=str(self.file(PATCH_MAPS_FILE)),
                fix="the file was damaged or comes from another run: re-run `spg eval --run DIR`",
            )
        return probs, scores, meta

    def read_target_rows(self) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any], list[dict[str, Any]]]:
        """`read_target` and `read_scores`, checked to describe the same images, one row per map."""
        probs, scores, meta = self.read_target()
        rows = self.read_scores()
        if len(rows) != probs.shape[0]:
            raise SPGError(
                f"scores.csv has {len(rows)} rows but the maps file has {probs.shape[0]} maps",
                path=str(self.file(SCORES_FILE)),
                fix="the two come from different evaluations: re-run `spg eval --run DIR`",
            )
        return probs, scores, meta, rows

    def read_scores(self) -> list[dict[str, Any]]:
        """scores.csv as rows with int index and label and float score (read only when it is a
        regular file of at most MAX_SCORES_BYTES)."""
        path = self.file(SCORES_FILE)
        if not path.is_file():
            raise SPGError("target scores not found", path=str(path), fix="re-run `spg eval --run DIR`")
        check_regular_file(path, MAX_SCORES_BYTES, what="target scores")
        try:
            with open(path, newline="") as fh:
                rows = list(csv.DictReader(fh))
            for r in rows:
                r["index"], r["label"], r["score"] = int(r["index"]), int(r["label"]), float(r["score"])
        except (KeyError, ValueError, TypeError, csv.Error, UnicodeDecodeError) as exc:
            raise SPGError(
                f"target scores are damaged ({type(exc).__name__}: {exc})",
                path=str(path),
                fix="re-run `spg eval --run DIR`",
            ) from None
        return rows

    def read_metrics(self) -> dict[str, Any]:
        return read_json(self.file(METRICS_FILE), what="metrics")


def target_shape_problem(probs: tuple[int, ...], scores: tuple[int, ...], grids: dict[str, Any]) -> str | None:
    """Why maps of shape `probs` `[K, h, w]` and scores `[K]` do not fit together or with `grids`
    ({what: [h, w] or None}); None when they fit."""
    if len(probs) != 3:
        return f"maps of shape {list(probs)}, not [images, h, w]"
    if scores != (probs[0],):
        return f"{probs[0]} maps but scores of shape {list(scores)}"
    for what, grid in grids.items():
        if grid is not None and tuple(grid) != probs[1:]:
            return f"maps of {probs[1]} x {probs[2]} patches but {what} is {grid[0]} x {grid[1]}"
    return None


def list_runs(root: str | Path) -> list[Path]:
    """Run directories (folders holding a config.json) under `root`, newest first. Hidden folders
    (an overwrite's staging folder, `.NAME.staging`) are not runs."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = {
        p.parent
        for p in root.glob("**/config.json")
        if "tokens" not in p.parts and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }
    return sorted(runs, key=lambda p: p.stat().st_mtime, reverse=True)
