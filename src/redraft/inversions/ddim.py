"""DDIM inversion (Mokady et al. 2023, sec. 3.1): the pivot trajectory z*_0 (= x_T) ... z*_N (= the
image's latent), run backwards with the source prompt only (guidance 1)."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..core import ddim
from ..core.ddim import Schedule
from ..core.sampling import CountedUNet


@torch.no_grad()
def ddim_inversion(model: CountedUNet, schedule: Schedule, latent: torch.Tensor, cond: torch.Tensor,
                   progress: bool = True) -> torch.Tensor:
    """DDIM inversion at guidance 1: returns the pivots [N + 1, B, C, H, W] in sampling order.

    pivots[N] is the image's latent, pivots[0] = x_T. Step i runs z*_{i+1} -> z*_i (see `ddim`).
    """
    z = latent.float()
    pivots = [z]
    for i in tqdm(reversed(range(schedule.steps)), total=schedule.steps, desc="DDIM inversion",
                  disable=not progress, leave=False):
        output = model(z, schedule.timesteps[i], cond)
        z = ddim.step(z, output, schedule.alphas[i + 1], schedule.alphas[i], schedule.prediction_type)
        pivots.append(z)
    return torch.stack(pivots[::-1])
