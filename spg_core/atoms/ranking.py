"""Which atoms the guides use, and how each patch's logit splits over them.

With unit-norm atoms d_j and non-negative coefficients c (SPG_METHOD.md, Stage 2):

    g   = W_dec c = sum_j c[j] d_j
    l   = <f/|f|, g/|g|> = sum_{j in A} c[j] <f/|f|, d_j> / |g|

so a patch's logit is exactly the sum of one contribution per active atom, for
the anomaly guide (l_a) and the normal guide (l_n) alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import SPGError
from ..guides import GuideSet
from ..scoring import NORM_EPS as _EPS
from ..scoring import atom_logit_weights, unit

GUIDES = ("anomaly", "normal")
_ROW = {"normal": 0, "anomaly": 1}  # row order of GuideSet.coefficients()


def guide_row(guide: str) -> int:
    """Row of `GuideSet.coefficients()` holding `guide` ('normal' -> 0, 'anomaly' -> 1)."""
    if guide not in _ROW:
        raise SPGError(f"unknown guide {guide!r}", fix="use 'anomaly' or 'normal'")
    return _ROW[guide]


def require_atoms(pair: GuideSet) -> None:
    """Free guides (the no-dictionary ablation) live in R^D: they have no atoms to interpret."""
    if pair.variant == "free":
        raise SPGError(
            "this run's guides are free vectors (method free_guides): they are not made of atoms",
            fix="interpret a run trained with --method spg (or random_dict)",
        )


def rank_atoms(pair: GuideSet) -> dict[str, list[dict[str, float | int]]]:
    """Active atoms of each guide, largest coefficient first (ties: smaller atom id first).

    Returns {"anomaly": [{"atom": j, "coef": c[j], "share": c[j] / sum(c)}, ...], "normal": [...]};
    the shares of a guide sum to 1 (atoms are unit-norm, so the coefficient is the atom's
    weight in the guide vector before normalisation).
    """
    require_atoms(pair)
    coef = pair.coefficients().detach().double().cpu().numpy()
    out: dict[str, list[dict[str, float | int]]] = {}
    for guide in GUIDES:
        c = coef[guide_row(guide)]
        active = np.flatnonzero(c > 0)
        order = active[np.lexsort((active, -c[active]))]
        total = float(c[active].sum())
        out[guide] = [{"atom": int(j), "coef": float(c[j]), "share": float(c[j] / total)} for j in order]
    return out


@dataclass
class Attribution:
    """Per-atom contributions to each patch's logits, for `B` images of `N` patches.

    atoms_a `[A_a]`, contrib_a `[B, N, A_a]`: contrib_a[..., i] = c_a[j] <f/|f|, d_j> / |g_a| with
    j = atoms_a[i]; the same for the normal guide. `tau` is the run's softmax temperature.
    """

    atoms_a: torch.Tensor
    contrib_a: torch.Tensor
    atoms_n: torch.Tensor
    contrib_n: torch.Tensor
    tau: float

    @property
    def logit_a(self) -> torch.Tensor:
        """`[B, N]` anomaly logits l_a (the sum of the contributions)."""
        return self.contrib_a.sum(-1)

    @property
    def logit_n(self) -> torch.Tensor:
        """`[B, N]` normal logits l_n."""
        return self.contrib_n.sum(-1)

    @property
    def probs(self) -> torch.Tensor:
        """`[B, N]` patch anomaly probabilities p_a = sigmoid((l_a - l_n) / tau)."""
        return torch.sigmoid((self.logit_a - self.logit_n) / self.tau)

    def net(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Contributions to l_a - l_n (what p_a depends on) over the union of both active sets.

        Returns (atoms `[U]` sorted, contributions `[B, N, U]`); an atom in both guides counts
        its anomaly contribution minus its normal one.
        """
        atoms = torch.unique(torch.cat([self.atoms_a, self.atoms_n]))
        out = self.contrib_a.new_zeros(*self.contrib_a.shape[:2], len(atoms))
        out[..., torch.searchsorted(atoms, self.atoms_a)] += self.contrib_a
        out[..., torch.searchsorted(atoms, self.atoms_n)] -= self.contrib_n
        return atoms, out

    def guide(self, guide: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(atoms, contributions `[B, N, A]`) for 'anomaly', 'normal' or 'net'."""
        if guide == "net":
            return self.net()
        return (self.atoms_a, self.contrib_a) if guide_row(guide) == 1 else (self.atoms_n, self.contrib_n)


@torch.no_grad()
def attribute(tokens: torch.Tensor, dictionary: torch.Tensor, pair: GuideSet, tau: float = 0.07) -> Attribution:
    """Split every patch's l_a and l_n into per-atom contributions.

    tokens `[B, N, D]` (any image: auxiliary, target or new, e.g. `Predictor.predict_images`'s
    "tokens"), dictionary `[D, M]`. Runs on the tokens' device, in float32.
    """
    require_atoms(pair)
    f = unit(tokens)
    dic = dictionary.to(f.device).float()
    coef = pair.coefficients().detach().to(f.device).float()
    weights = atom_logit_weights(dic, coef)  # [2, M]: c / |g|
    parts = []
    for row in (1, 0):
        atoms = coef[row].nonzero().flatten()
        parts += [atoms, (f @ dic[:, atoms]) * weights[row, atoms]]
    return Attribution(*parts, tau=tau)


def top_atoms_per_patch(attr: Attribution, guide: str = "anomaly", k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest contributions of each patch: (atom ids `[B, N, k']`, values `[B, N, k']`), k' = min(k, A)."""
    atoms, contrib = attr.guide(guide)
    top = contrib.topk(min(k, contrib.shape[-1]), dim=-1)
    return atoms[top.indices], top.values


def top_atoms_per_image(
    attr: Attribution, guide: str = "anomaly", k: int = 5, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k atoms contributing most to each image: (atom ids `[B, k']`, values `[B, k']`).

    An image's value for an atom is its contribution averaged over patches with `weights` `[B, N]`
    (normalised per image). By default the weights are the patch anomaly probabilities, so the
    ranking explains the patches the model calls anomalous rather than the background.
    """
    atoms, contrib = attr.guide(guide)
    w = attr.probs if weights is None else weights.to(contrib).reshape(contrib.shape[:2])
    w = w / w.sum(dim=1, keepdim=True).clamp_min(_EPS)
    per_image = torch.einsum("bn,bna->ba", w, contrib)
    top = per_image.topk(min(k, per_image.shape[-1]), dim=-1)
    return atoms[top.indices], top.values


@torch.no_grad()
def guide_cosines(dictionary: torch.Tensor, pair: GuideSet) -> dict[str, torch.Tensor]:
    """Cosine of every atom's decoder direction with each guide direction g = D c:
    {"anomaly": `[M]`, "normal": `[M]`} (dictionary `[D, M]`; columns need not be unit)."""
    require_atoms(pair)
    dic = dictionary.detach().float().cpu()
    coef = pair.coefficients().detach().float().cpu()
    atoms = unit(dic.t())  # [M, D]
    return {guide: atoms @ unit(dic @ coef[guide_row(guide)]) for guide in GUIDES}
