"""Direct Inversion (Ju et al., ICLR 2024, sec. 4): the source branch is put back on its DDIM pivot
after every step (adding the offset z*_{i+1} - step(z_i)), with no optimisation; the edit branches
then see the source's exact trajectory through the attention they share."""

from __future__ import annotations

import torch


def on_pivot(pivots: torch.Tensor):
    """A `denoise` callback that sets row 0 (the source branch) to pivots[i + 1] after step i."""

    def callback(i: int, z: torch.Tensor) -> torch.Tensor:
        z = z.clone()
        z[0] = pivots[i + 1]
        return z

    return callback
