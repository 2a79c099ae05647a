"""The records every loader produces: one `Sample` per image, a `Dataset` of them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Sample:
    """One image and its ground truth (paths only; nothing is decoded here)."""

    image_path: str
    mask_path: str | None  # None for good images (their mask is all zero)
    label: int  # 0 good, 1 anomalous
    category: str
    defect: str  # "good" for normal images
    split: str  # "train" | "test"


@dataclass
class Dataset:
    """An ordered list of samples plus where they came from.

    `name` is the spec the dataset was opened from (e.g. "mvtec:/data/mvtec",
    "synthetic-a"); `root` is the folder the image paths live under.
    """

    name: str
    root: str
    samples: list[Sample] = field(default_factory=list)

    @property
    def categories(self) -> list[str]:
        """Sorted distinct category names."""
        return sorted({s.category for s in self.samples})

    @property
    def defects(self) -> list[str]:
        """Sorted distinct defect names (including "good" when present)."""
        return sorted({s.defect for s in self.samples})

    def filter(
        self, categories: str | Iterable[str] | None = None, split: str | None = None, label: int | None = None
    ) -> Dataset:
        """A new Dataset keeping samples that match every given criterion (order preserved).

        `split` "all" (or None) keeps both splits.
        """
        cats = None if categories is None else ({categories} if isinstance(categories, str) else set(categories))
        keep = [
            s
            for s in self.samples
            if (cats is None or s.category in cats)
            and (split is None or split == "all" or s.split == split)
            and (label is None or s.label == label)
        ]
        return Dataset(name=self.name, root=self.root, samples=keep)

    def counts(self) -> dict[str, dict[str, int]]:
        """{category: {defect: number of images}}, for summaries and tests."""
        out: dict[str, Counter[str]] = {}
        for s in self.samples:
            out.setdefault(s.category, Counter())[s.defect] += 1
        return {c: dict(sorted(v.items())) for c, v in sorted(out.items())}

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]

    def __repr__(self) -> str:
        n_anom = sum(s.label for s in self.samples)
        return f"Dataset({self.name!r}, {len(self)} images, {n_anom} anomalous, categories={self.categories})"
