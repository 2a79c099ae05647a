"""`spg predict`: anomaly maps and scores for new images with a trained run."""

from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image

from .atomic import atomic_path, write_text
from .images import load_image
from .pipeline import Predictor
from .render import overlay


def map_names(images: list[str]) -> list[str]:
    """One distinct `<name>_map.png` per input: the file stem, with as many parent folders
    prefixed as it takes to tell same-named inputs apart (MVTec-style trees repeat 000.png
    in every defect folder); an input given twice gets its position appended."""
    parts = [Path(p).with_suffix("").parts[1 if Path(p).anchor else 0:] for p in images]
    depth = [1] * len(images)
    while True:
        names = ["_".join(pp[-d:]) for pp, d in zip(parts, depth)]
        count = Counter(names)
        grow = [i for i, n in enumerate(names) if count[n] > 1 and depth[i] < len(parts[i])]
        if not grow:
            break
        for i in grow:
            depth[i] += 1
    return [f"{n}_map.png" if count[n] == 1 else f"{parts[i][-1]}_{i}_map.png" for i, n in enumerate(names)]


def predict_files(run_dir: str | Path, images: list[str], out: str | Path, *, device: str = "auto",
                  batch: int = 8) -> list[dict[str, Any]]:
    """Write one map PNG (image | overlay) per image, named by `map_names`, and `scores.csv`;
    return one row per image."""
    predictor = Predictor(run_dir, device=device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    names = map_names(images)
    for start in range(0, len(images), batch):
        paths = images[start:start + batch]
        pil = [load_image(p) for p in paths]
        result = predictor.predict_images(pil)
        for path, name, im, m, score in zip(paths, names[start:start + batch], pil, result["maps"], result["scores"]):
            size = predictor.backbone.image_size
            side = im.resize((size, size), Image.BICUBIC)
            panel = Image.new("RGB", (2 * size, size))
            panel.paste(side, (0, 0))
            panel.paste(overlay(side, m.numpy(), alpha=0.55), (size, 0))
            target = out / name
            with atomic_path(target) as tmp:
                panel.save(tmp, format="PNG")
            rows.append({"image": str(path), "score": float(score), "map": str(target)})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["image", "score", "map"])
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "scores.csv", buf.getvalue())
    return rows
