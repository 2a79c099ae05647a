"""`spg predict`: anomaly maps and scores for new images with a trained run."""

from __future__ import annotations

import csv
import hashlib
import io
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image

from .atomic import atomic_path, write_json, write_text
from .config import ScoreConfig
from .errors import SPGError
from .images import load_image, shape_note
from .inference import Predictor
from .render import overlay


def map_names(images: list[str]) -> list[str]:
    """One distinct `<name>_map.png` per input: the file stem, with as many parent folders
    prefixed as it takes to tell same-named inputs apart (MVTec-style trees repeat 000.png
    in every defect folder); an input given twice gets its position appended."""
    parts = [Path(p).with_suffix("").parts[1 if Path(p).anchor else 0 :] for p in images]
    depth = [1] * len(images)
    while True:
        names = ["_".join(pp[-d:]) for pp, d in zip(parts, depth)]
        count = Counter(names)
        grow = [i for i, n in enumerate(names) if count[n] > 1 and depth[i] < len(parts[i])]
        if not grow:
            break
        for i in grow:
            depth[i] += 1
    names = [f"{n}_map.png" if count[n] == 1 else f"{parts[i][-1]}_{i}_map.png" for i, n in enumerate(names)]
    return [short_name(n, p) for n, p in zip(names, images)]


# File systems allow 255 bytes a name; the temporary file beside a map adds ~20.
MAX_NAME_BYTES = 200


def short_name(name: str, source: str) -> str:
    """`name` if it fits MAX_NAME_BYTES, else its start, a hash of the input's path (so shortened
    names stay distinct) and `_map.png`. scores.csv records the name each input got."""
    if len(name.encode()) <= MAX_NAME_BYTES:
        return name
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    head = name.encode()[: MAX_NAME_BYTES - 40].decode(errors="ignore")
    return f"{head}_{digest}_map.png"


def predict_files(
    run_dir: str | Path,
    images: list[str],
    out: str | Path,
    *,
    device: str = "auto",
    batch: int = 8,
    skip_bad: bool = False,
    max_pixels: int | None = None,
    score: ScoreConfig | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Write one map PNG (image | overlay) per image, named by `map_names`, and `scores.csv`.

    An image that cannot be read, scored or written stops the call with its name, or with
    `skip_bad` is left out and listed (with why) in OUT/skipped.json; scores.csv and skipped.json
    are written whatever happens to one image. OUT is made only when something is written into
    it. `score`: scoring settings (default: the run's own, e.g. with the context on). Returns (one row per
    scored image, skipped)."""
    predictor = Predictor(run_dir, device=device, score=score)
    out = Path(out)
    made = not out.exists()
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    try:
        readable: list[tuple[str, str, Image.Image]] = []
        for path, name in zip(images, map_names(images)):
            try:
                image = load_image(path, max_pixels)
                readable.append((path, name, image))
                note = shape_note(image.size, predictor.backbone.image_size)
                if note:
                    print(f"warning: {path}: {note}", file=sys.stderr)
            except SPGError as exc:
                _skip_or_raise(skipped, path, exc, skip_bad)
            if len(readable) == batch:
                rows += _predict_batch(predictor, readable, out, skipped, skip_bad)
                readable = []
        if readable:
            rows += _predict_batch(predictor, readable, out, skipped, skip_bad)
        _write_tables(out, rows, skipped)
    except BaseException:
        if made and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a refused or failed predict leaves no empty folder behind
        raise
    return rows, skipped


def _skip_or_raise(skipped: list[dict[str, str]], path: str, exc: SPGError, skip_bad: bool) -> None:
    if not skip_bad:
        raise SPGError(f"{exc}\n  (or pass --skip-bad to skip bad images and write a report)") from None
    skipped.append({"image": str(path), "error": str(exc).splitlines()[0]})


def _write_tables(out: Path, rows: list[dict[str, Any]], skipped: list[dict[str, str]]) -> None:
    """OUT/scores.csv (image, score, map file) and, when any image was skipped, OUT/skipped.json."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["image", "score", "map"])
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "scores.csv", buf.getvalue())
    if skipped:
        write_json(out / "skipped.json", skipped)


def _predict_batch(
    predictor: Predictor,
    items: list[tuple[str, str, Image.Image]],
    out: Path,
    skipped: list[dict[str, str]],
    skip_bad: bool,
) -> list[dict[str, Any]]:
    """Score decoded images and write their map PNGs; one row per image written. A map the file
    system refuses is skipped (with `skip_bad`) or stops the call."""
    result = predictor.predict_images([im for _, _, im in items])
    size = predictor.backbone.image_size
    rows = []
    for (path, name, im), m, score in zip(items, result["maps"], result["scores"]):
        side = im.resize((size, size), Image.BICUBIC)
        panel = Image.new("RGB", (2 * size, size))
        panel.paste(side, (0, 0))
        panel.paste(overlay(side, m.numpy(), alpha=0.55), (size, 0))
        target = out / name
        try:
            with atomic_path(target) as tmp:
                panel.save(tmp, format="PNG")
        except SPGError as exc:
            _skip_or_raise(skipped, path, exc, skip_bad)
            continue
        rows.append({"image": str(path), "score": float(score), "map": str(target)})
    return rows
