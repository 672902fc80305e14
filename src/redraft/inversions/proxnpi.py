"""ProxEdit: proximal guidance for negative-prompt inversion (Han et al., WACV 2024, sec. 3.2-3.3).

The inversion is NPI's (Miyake et al. 2023): the DDIM pivot at guidance 1 and the source prompt's
embedding as every step's negative one. Editing then changes two things (official code,
`phymhan/prompt-to-prompt` `ptp_utils.diffusion_step`):

1. the proximal operator on the guidance difference d = f_c - f_neg (eq. 8, "l0" as the code has it):
   tau = quantile(|d|, q), d <- d - clamp(d, -tau, tau) (soft shrinkage), f = f_neg + w d;
2. inversion guidance (eq. 10) at timesteps t < recon_t: the mask M = 1[|d| > tau] (after the operator,
   dilated by a max-pool of radius `dilate`) marks what the edit changes, and elsewhere the latent is
   pulled to the pivot: z_{i+1} <- z_{i+1} - recon_lr (z_{i+1} - z*_{i+1}) (1 - M).

The code takes the quantile over the whole batch [source, target]; the source row's d is 0 (its prompt
is its negative prompt), so for each target row the quantile here is over [0, d_row], which is the
official value for one target and does not change with the number of targets. The source row has no
edit (M = 0): with recon_lr 1 it follows its pivot from recon_t on, in the edit and in `reconstruct`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..core.ddim import Schedule

DEFAULTS = {"prox": "l0", "quantile": 0.7, "recon_t": 400, "recon_lr": 1.0, "dilate": 1,
            "inversion_guidance": True}  # the README's ProxNPI example (SPDInv's edit defaults too)


@dataclass
class ProximalGuidance:
    """`rule` and `callback` of `denoise` for ProxNPI (eqs. 8 and 10); `pivots` [N + 1, B, ...] are z*."""

    schedule: Schedule
    pivots: torch.Tensor
    prox: str = "l0"
    quantile: float = 0.7
    recon_t: int = 400
    recon_lr: float = 1.0
    dilate: int = 1
    inversion_guidance: bool = True
    mask: torch.Tensor | None = None  # M of the last step, [B, C, H, W]

    def threshold(self, d: torch.Tensor) -> torch.Tensor:
        """tau per row: quantile q of |d| over [the source row's zeros, the row] (a negative q: tau = -q)."""
        if self.quantile <= 0:
            return torch.full((len(d),), -self.quantile, dtype=d.dtype, device=d.device)
        flat = d.abs().flatten(1)
        pooled = torch.cat([torch.zeros_like(flat), flat], dim=1)
        return torch.quantile(pooled.float(), self.quantile, dim=1).to(d.dtype)

    def rule(self, i: int, f_u: torch.Tensor, f_c: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """f_neg + w prox(f_c - f_neg) (eq. 8), and the edit mask M for `callback`."""
        d = f_c - f_u
        shape = (-1,) + (1,) * (d.dim() - 1)
        tau = self.threshold(d).view(shape)
        d = d - torch.maximum(torch.minimum(d, tau), -tau)
        if self.prox == "l1":  # the code's "l1" shrinks the survivors a second time
            d = torch.where(d > 0, d - tau, torch.where(d < 0, d + tau, d))
        mask = (d.abs() > tau).float()
        if self.dilate > 0:
            r = int(self.dilate)
            mask = F.max_pool2d(mask, 2 * r + 1, stride=1, padding=r)
        self.mask = mask
        return f_u + w.view(shape) * d

    def callback(self, i: int, z: torch.Tensor) -> torch.Tensor | None:
        """Inversion guidance (eq. 10) after step i, at its timestep t_i < recon_t."""
        if not self.inversion_guidance or self.mask is None or not self.schedule.timesteps[i] < self.recon_t:
            return None
        target = self.pivots[i + 1].to(z).expand_as(z)
        return z - self.recon_lr * (z - target) * (1 - self.mask)
