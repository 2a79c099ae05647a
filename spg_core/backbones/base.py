"""The one interface every frozen encoder offers: images in, patch tokens out."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Backbone(nn.Module):
    """A frozen image encoder that returns final-block patch tokens.

    `forward(images)` takes `[B, 3, S, S]` float RGB in [0, 1] (S = `image_size`),
    applies the backbone's own normalisation, and returns `[B, N, D]` patch
    tokens with CLS and register tokens removed, N = h * w for `grid = (h, w)`.
    """

    name: str = "backbone"
    image_size: int = 224
    patch_size: int = 16
    dim: int = 0
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    weights: str = ""  # hub id, local path, or "random" / "builtin"
    layer: int = -1  # transformer block the tokens come from (-1 = final)
    has_cls: bool = False  # `forward_with_cls` returns the layer's CLS token
    # "studio" or "official" (protocols.py): which tokens of the layer, and how masks are resized
    # (official: bilinear, binarised at 0.5). Recorded in `identity` only when not studio, so
    # stores extracted before protocols existed keep their key.
    token_mode: str = "studio"

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // self.patch_size
        return (side, side)

    @property
    def num_patches(self) -> int:
        h, w = self.grid
        return h * w

    def identity(self) -> dict[str, Any]:
        """What makes two token extractions interchangeable (the TokenStore key)."""
        ident = {
            "backbone": self.name,
            "weights": self.weights,
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "grid": list(self.grid),
            "dim": self.dim,
            "layer": self.layer,
        }
        if self.token_mode != "studio":
            ident["tokens"] = self.token_mode
        return ident

    @property
    def mask_resize(self) -> str:
        """How ground-truth masks are resized to S: "nearest" (studio) or "bilinear" (official,
        then binarised at 0.5)."""
        return "bilinear" if self.token_mode == "official" else "nearest"

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] in [0, 1] -> normalised with this backbone's mean/std."""
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        return (images - mean) / std

    def check_input(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"{self.name} expects images [B, 3, {self.image_size}, {self.image_size}], got {list(images.shape)}"
            )

    def enable_compile(self) -> Backbone:
        """Run the forward through torch.compile (CUDA: faster extraction after a one-off warm-up).
        Shapes are static, so the last, smaller batch of an extraction compiles once more."""
        self.forward_with_cls = torch.compile(self.forward_with_cls, dynamic=False)  # type: ignore[method-assign]
        return self

    def forward_with_cls(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`[B, 3, S, S]` -> (patch tokens `[B, N, D]`, the layer's CLS token `[B, D]` or None).
        Backbones with a CLS token override this (and set `has_cls`)."""
        return self(images), None

    @torch.no_grad()
    def extract(self, images: torch.Tensor) -> torch.Tensor:
        """Inference entry point: no grad, bf16 autocast on CUDA. Returns float32 `[B, N, D]`."""
        return self.extract_with_cls(images)[0]

    @torch.no_grad()
    def extract_with_cls(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As `extract`, with the CLS token: (float32 `[B, N, D]`, float32 `[B, D]` or None)."""
        self.check_input(images)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=images.device.type == "cuda"):
            tokens, cls = self.forward_with_cls(images)
        return tokens.float(), None if cls is None else cls.float()
