"""`spg predict`: anomaly maps and scores for new images with a trained run."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from PIL import Image

from .atomic import atomic_path, write_text
from .images import load_image
from .pipeline import Predictor
from .render import overlay


def predict_files(run_dir: str | Path, images: list[str], out: str | Path, *, device: str = "auto",
                  batch: int = 8) -> list[dict[str, Any]]:
    """Write `<stem>_map.png` (image | overlay) per image and `scores.csv`; return one row per image."""
    predictor = Predictor(run_dir, device=device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for start in range(0, len(images), batch):
        paths = images[start:start + batch]
        pil = [load_image(p) for p in paths]
        result = predictor.predict_images(pil)
        for path, im, m, score in zip(paths, pil, result["maps"], result["scores"]):
            size = predictor.backbone.image_size
            side = im.resize((size, size), Image.BICUBIC)
            panel = Image.new("RGB", (2 * size, size))
            panel.paste(side, (0, 0))
            panel.paste(overlay(side, m.numpy(), alpha=0.55), (size, 0))
            target = out / f"{Path(path).stem}_map.png"
            with atomic_path(target) as tmp:
                panel.save(tmp, format="PNG")
            rows.append({"image": str(path), "score": float(score), "map": str(target)})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["image", "score", "map"])
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "scores.csv", buf.getvalue())
    return rows
