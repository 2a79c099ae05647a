"""The official code's random draws, replayed: initial tensors and the seeded image order of each epoch.

The official trainers (riips/SPG `src/runners/sae_trainer.py`, `trainer.py`) call
`torch.manual_seed(seed)` once, build their modules from the global generator, and iterate a
`DataLoader(shuffle=True)` each epoch. What they draw, in order:

    SAE training    nn.Linear(D, M) kaiming init (uniform, M*D values; overwritten by the tied
                    init), the dictionary randn(M, D) / sqrt(M); then per epoch the loader's
                    base seed and the RandomSampler's seed (one int64 each), whose
                    torch.Generator gives randperm(n_images).
    guide training  the same SAE twice (SAEPipeline, then GuideSAEPipeline), a static weight
                    module's normal_(1, 4) after each, the guide tensor randn(4, M) between
                    the second SAE and the second weight module; then the same per-epoch draws.

Replaying them on a private generator seeded with the same seed gives the same numbers without
touching torch's global generator. Assumed, and true of transformers 4.56 (which builds models
on the meta device): loading the encoder draws nothing. A run that builds its feature cache
first draws one more int64 (that loader's base seed) before the SAE: its order differs; the
order here is that of a run whose cache already exists.
"""

from __future__ import annotations

import torch

_WEIGHT_MODULE_SLOTS = 4  # configs/experiment/guide_sae.yaml: weight_module.num_layers


def _sae_draws(gen: torch.Generator, dim: int, width: int) -> torch.Tensor:
    """Advance `gen` as one official SAE construction does; return its dictionary draw `[M, D]`."""
    torch.empty(width, dim).uniform_(generator=gen)  # nn.Linear's kaiming init, replaced by the tied init
    return torch.randn(width, dim, generator=gen)


def sae_init(seed: int, dim: int, width: int) -> tuple[torch.Tensor, torch.Generator]:
    """The official SAE's raw dictionary draw `[M, D]` (before its / sqrt(M) and unit norm), and the
    generator positioned where the training loader's draws begin."""
    gen = torch.Generator().manual_seed(seed)
    return _sae_draws(gen, dim, width), gen


def guide_init(seed: int, dim: int, width: int) -> tuple[torch.Tensor, torch.Generator]:
    """The official guide tensor's N(0, 1) draw `[4, M]` (theta = 0.01 * draw + 0.1), and the generator
    positioned where the training loader's draws begin."""
    gen = torch.Generator().manual_seed(seed)
    _sae_draws(gen, dim, width)
    torch.empty(1, _WEIGHT_MODULE_SLOTS).normal_(generator=gen)
    _sae_draws(gen, dim, width)
    draw = torch.randn(4, width, generator=gen)
    torch.empty(1, _WEIGHT_MODULE_SLOTS).normal_(generator=gen)
    return draw, gen


def epoch_order(gen: torch.Generator, num_images: int) -> torch.Tensor:
    """The next epoch's image order `[n_images]` as `DataLoader(shuffle=True)` draws it: the loader's
    base seed (unused without workers), the sampler's seed, then randperm from a generator so seeded."""
    torch.empty((), dtype=torch.int64).random_(generator=gen)
    sampler_seed = int(torch.empty((), dtype=torch.int64).random_(generator=gen).item())
    return torch.randperm(num_images, generator=torch.Generator().manual_seed(sampler_seed))


def image_token_rows(images: torch.Tensor, tokens_per_image: int) -> torch.Tensor:
    """Image indices `[B]` -> their token rows `[B * N]` in a `[n_images * N, D]` token matrix."""
    return (images[:, None] * tokens_per_image + torch.arange(tokens_per_image)).flatten()
