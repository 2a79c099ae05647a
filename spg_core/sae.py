"""TopK sparse autoencoder (SPG Stage 1): the model only, no data or training loop.

    z  = W_enc (f - b_dec) + b_enc        z in R^M
    s  = ReLU(TopK_k(z))                  exactly k candidates, non-negative
    f^ = W_dec s + b_dec                  columns d_j of W_dec are the atoms

Two forms. The studio form (`bias=True`) has both biases. The official form
(`bias=False`, riips/SPG `src/modules/sae/sae.py`) has neither, starts from atoms
drawn N(0, 1/M) and normalised with the encoder tied to them, and normalises the
atoms again inside every forward (`atoms()`), besides after every optimiser step.

An SAE may carry a dead-atom mask (`dead` `[M]` bool, True = never fired on the
auxiliary set), computed after training and saved with it; guides zero those atoms.

Knows nothing of images: it sees tokens `[T, D]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .atomic import load_tensors, save_tensors
from .errors import SPGError


@dataclass
class SparseCode:
    """The k non-zero candidates of each token's code: values and indices, both `[T, k]`."""

    values: torch.Tensor
    indices: torch.Tensor

    def dense(self, width: int) -> torch.Tensor:
        """`[T, M]` dense code with zeros outside the top k."""
        out = self.values.new_zeros(self.values.shape[0], width)
        return out.scatter_(1, self.indices, self.values)


@torch.no_grad()
def normalise_atoms_(w_dec: torch.Tensor) -> None:
    """Scale every atom (column) of a decoder `[D, M]` to unit norm, in place.

    Works on any column slice of a decoder, e.g. one rank's `[D, M / N]` (sae_sharded.py)."""
    w_dec.div_(w_dec.norm(dim=0, keepdim=True).clamp_min(1e-8))


@torch.no_grad()
def remove_parallel_grad_(w_dec: torch.Tensor) -> None:
    """Drop from `w_dec.grad` `[D, M]` the component along each unit-norm atom (column), in place.

    That component would only change the atom's norm, which `normalise_atoms_` undoes after
    the step anyway, and it distorts Adam's moments. Per column, so a column slice of a
    decoder gets what the whole one would. No gradient: nothing to do."""
    if w_dec.grad is None:
        return
    parallel = (w_dec.grad * w_dec).sum(dim=0, keepdim=True)
    w_dec.grad.sub_(parallel * w_dec)


class TopKSAE(nn.Module):
    """TopK SAE with unit-norm decoder columns. `W_dec` is `[D, M]`; `W_enc` is `[M, D]`."""

    def __init__(self, dim: int, width: int, k: int, *, seed: int = 0, bias: bool = True):
        super().__init__()
        if not 0 < k <= width:
            raise SPGError(
                f"TopK k={k} must be between 1 and the dictionary width M={width}",
                fix="choose --k no larger than --width",
            )
        self.dim, self.width, self.k, self.bias = dim, width, k, bias
        gen = torch.Generator().manual_seed(seed)
        if bias:
            w_dec = torch.randn(dim, width, generator=gen)
        else:  # official: atoms [M, D] ~ N(0, 1/M), then unit rows
            w_dec = (torch.randn(width, dim, generator=gen) / width**0.5).t()
        w_dec = w_dec / w_dec.norm(dim=0, keepdim=True).clamp_min(1e-8)
        self.W_dec = nn.Parameter(w_dec.contiguous())
        # Encoder starts as the decoder's transpose (Gao et al.): every latent begins
        # by detecting the direction it writes, which keeps early dead latents rare.
        self.W_enc = nn.Parameter(w_dec.t().clone())
        if bias:
            self.b_enc = nn.Parameter(torch.zeros(width))
            self.b_dec = nn.Parameter(torch.zeros(dim))
        else:
            self.b_enc = self.b_dec = None
        self.dead: torch.Tensor | None = None  # [M] bool once computed (see sae_train.dead_atom_mask)

    # -- forward pieces -------------------------------------------------------------
    def atoms(self) -> torch.Tensor:
        """The dictionary `[D, M]` as the forward uses it: unit columns, renormalised in the
        forward itself in the official form (official eps 1e-8 added to the norm)."""
        if self.bias:
            return self.W_dec
        return self.W_dec / (self.W_dec.norm(dim=0, keepdim=True) + 1e-8)

    def pre_activation(self, f: torch.Tensor) -> torch.Tensor:
        """`[T, D]` -> `[T, M]` encoder pre-activations z."""
        if not self.bias:
            return f @ self.W_enc.t()
        z = (f - self.b_dec) @ self.W_enc.t()
        # Add the bias in z's dtype: under bf16 autocast an fp32 bias would promote the
        # whole [T, M] pre-activation back to fp32 (a copy, and a slower top-k).
        return z + self.b_enc.to(z.dtype)

    def encode(self, f: torch.Tensor) -> SparseCode:
        """`[T, D]` -> the k largest pre-activations per token, ReLU'd (`[T, k]` each)."""
        top = self.pre_activation(f).topk(self.k, dim=-1, sorted=False)
        return SparseCode(values=torch.relu(top.values), indices=top.indices)

    def encode_dense(self, f: torch.Tensor) -> torch.Tensor:
        """`[T, D]` -> dense codes s `[T, M]` (exactly k candidates, zeros elsewhere)."""
        return self.encode(f).dense(self.width)

    def decode(self, code: SparseCode) -> torch.Tensor:
        """Sparse decode: a weighted sum of the k chosen atoms per token, without multiplying
        by M - k zeros or materialising `[T, k, D]`. `[T, k]` -> `[T, D]`."""
        out = self.decode_atoms(code)
        return out if self.b_dec is None else out + self.b_dec

    def decode_atoms(self, code: SparseCode) -> torch.Tensor:
        """`[T, k]` code -> `[T, D]` weighted sum of its atoms, no decoder bias (AuxK's residual fit)."""
        weight = self.atoms().t()
        return F.embedding_bag(code.indices, weight, per_sample_weights=code.values.to(weight.dtype), mode="sum")

    def decode_dense(self, s: torch.Tensor) -> torch.Tensor:
        """`[T, M]` -> `[T, D]` with a dense matmul (fastest when T*k*D is large on GPUs)."""
        out = s @ self.atoms().t()
        return out if self.b_dec is None else out + self.b_dec

    def forward(self, f: torch.Tensor, *, sparse_decode: bool = False) -> tuple[torch.Tensor, SparseCode]:
        """`[T, D]` -> (reconstruction `[T, D]`, code)."""
        code = self.encode(f)
        recon = self.decode(code) if sparse_decode else self.decode_dense(code.dense(self.width))
        return recon, code

    # -- constraints -----------------------------------------------------------------
    def normalise_decoder(self) -> None:
        """Project decoder columns back onto the unit sphere (after each optimiser step)."""
        normalise_atoms_(self.W_dec)

    def remove_parallel_grad(self) -> None:
        """Drop the gradient component along each atom (`remove_parallel_grad_`). Studio form
        only: the official code keeps the whole gradient."""
        if self.bias:
            remove_parallel_grad_(self.W_dec)

    @torch.no_grad()
    def init_bias(self, tokens: torch.Tensor, how: str = "mean") -> None:
        """Pre-centring: b_dec at the data mean (or coordinate-wise median) of `[T, D]` tokens.
        The bias-free (official) form has no b_dec: nothing to do."""
        if self.b_dec is None:
            return
        x = tokens.float()
        centre = x.median(dim=0).values if how == "median" else x.mean(dim=0)
        self.b_dec.copy_(centre.to(self.b_dec))

    # -- persistence -----------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {"dim": self.dim, "width": self.width, "k": self.k, "bias": self.bias}

    def save(self, path: str, extra: dict[str, Any] | None = None) -> None:
        """safetensors weights (+ the dead-atom mask as uint8 `dead_atoms`) with the config
        (and `extra`, e.g. backbone identity) as metadata."""
        meta = {"config": self.config(), **(extra or {})}
        tensors = {k: v for k, v in self.state_dict().items()}
        if self.dead is not None:
            tensors["dead_atoms"] = self.dead.to(torch.uint8)
        save_tensors(path, tensors, meta)

    @classmethod
    def load(
        cls, path: str, *, expect_dim: int | None = None, map_location: str | torch.device = "cpu"
    ) -> tuple[TopKSAE, dict[str, Any]]:
        """Load weights + metadata; `expect_dim` guards against an SAE from another backbone."""
        tensors, meta = load_tensors(path, what="SAE file")
        cfg = meta.get("config")
        if not isinstance(cfg, dict) or {"dim", "width", "k"} - cfg.keys():
            raise SPGError("SAE file has no config metadata", path=path, fix="re-train it with `spg train-sae`")
        if expect_dim is not None and cfg["dim"] != expect_dim:
            raise SPGError(
                f"SAE was trained on {cfg['dim']}-dim tokens but this backbone gives {expect_dim}-dim tokens "
                f"(SAE backbone: {meta.get('backbone', {}).get('backbone', 'unknown')})",
                path=path,
                fix="use an SAE trained with the same backbone, or re-train with `spg train-sae`",
            )
        sae = cls(cfg["dim"], cfg["width"], cfg["k"], bias=bool(cfg.get("bias", True)))
        dead = tensors.pop("dead_atoms", None)
        if dead is not None:
            if tuple(dead.shape) != (sae.width,):
                raise SPGError(
                    f"dead-atom mask has shape {list(dead.shape)}, expected [{sae.width}]",
                    path=path,
                    fix="the file is damaged: re-train it with `spg train-sae`",
                )
            sae.dead = dead.bool()
        try:
            sae.load_state_dict(tensors)
        except RuntimeError as exc:
            raise SPGError(
                f"SAE file does not match its own config ({exc})",
                path=path,
                fix="the file is damaged: re-train it with `spg train-sae`",
            ) from None
        sae = sae.to(map_location)
        if sae.dead is not None:
            sae.dead = sae.dead.to(map_location)
        return sae, meta
