"""Edit-friendly DDPM noise maps (Huberman-Spiegelglas, Kulikov and Michaeli, CVPR 2024, sec. 3-4).

Every x_t is drawn independently from the image (eq. 6: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps_t,
fresh eps_t at each t), then the noise z_t of each DDPM step (eta = 1) is solved so that sampling with
it lands on the next x (eq. 5 solved for z_t). Replaying the stored z_t reproduces the image exactly;
editing replays them under a target prompt, from the stored x_t at T - T_skip (`Controls.skip_steps`).

In the chain's notation (`core.ddim`): step i goes from noise level a = a_i to a' = a_{i+1} (abar_t to
abar_{t-1}), sigma_i^2 = (1 - a') / (1 - a) (1 - a / a') (DDPM's posterior variance, DDIM eq. 16 at
eta = 1), mu_i = sqrt(a') x0_hat + sqrt(1 - a' - sigma_i^2) eps_hat, x_{i+1} = mu_i + sigma_i z_i.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..core import ddim
from ..core.ddim import Schedule
from ..core.sampling import CountedUNet, guided_output


def sigma(schedule: Schedule, i: int, eta: float = 1.0) -> float:
    """eta sigma_i of step i (DDIM eq. 16; eta = 1: DDPM). 0 where the step ends at a' = 1."""
    a, a_next = schedule.alphas[i], schedule.alphas[i + 1]
    if a_next >= 1:
        return 0.0
    return eta * ((1 - a_next) / (1 - a) * (1 - a / a_next)) ** 0.5


def direction(schedule: Schedule, i: int, eps: torch.Tensor, z: torch.Tensor, eta: float = 1.0) -> torch.Tensor:
    """The noise e that `ddim.noised(x0, e, a')` needs to give mu_i + sigma_i z_i: the DDPM step written
    as a `denoise` noise hook, (sqrt(1 - a' - sigma^2) eps + sigma z) / sqrt(1 - a') (DDIM eq. 12)."""
    a_next, s = schedule.alphas[i + 1], sigma(schedule, i, eta)
    if a_next >= 1:
        return eps  # the step ends on x0 itself: sqrt(1 - a') = 0 multiplies whatever is returned
    return ((1 - a_next - s * s) ** 0.5 * eps + s * z) / (1 - a_next) ** 0.5


def sample_xts(schedule: Schedule, x0: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """x_t of every state, drawn independently (eq. 6): [N + 1, B, C, H, W] in sampling order, the last
    x0 itself. The noise is drawn on the CPU from `seed`, the same for every image of a batch."""
    shape = (schedule.steps, 1, *x0.shape[1:])
    eps = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(x0)
    a = torch.tensor(schedule.alphas[:-1], dtype=x0.dtype, device=x0.device).view(-1, 1, 1, 1, 1)
    return torch.cat([a.sqrt() * x0 + (1 - a).sqrt() * eps, x0[None]])


@torch.no_grad()
def noise_maps(model: CountedUNet, schedule: Schedule, xts: torch.Tensor, cond: torch.Tensor,
               uncond: torch.Tensor, guidance_scale: float, eta: float = 1.0,
               progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-step noise z_i (eq. 5 solved for z_t, official `inversion_forward_process`), with the
    source prompt at `guidance_scale` (cfg_src). Returns (x, z): x [N + 1, B, ...] with each x_{i+1}
    corrected to mu_i + sigma_i z_i as the sampler computes it (so no error accumulates), z [N, B, ...].
    Where sigma_i = 0 (a step onto a' = 1) z_i is 0. 2 UNet passes per step (1 at guidance 1).
    """
    xs, zs = [xts[0]], []
    for i in tqdm(range(schedule.steps), desc="edit-friendly inversion", disable=not progress, leave=False):
        x = xts[i]
        output = guided_output(model, x, schedule.timesteps[i], cond, uncond, guidance_scale, step=i)
        x0, eps = ddim.predict_x0_eps(output, x, schedule.alphas[i], schedule.prediction_type)
        a_next, s = schedule.alphas[i + 1], sigma(schedule, i, eta)
        mu = ddim.noised(x0, direction(schedule, i, eps, torch.zeros_like(eps), eta), a_next)
        z = (xts[i + 1] - mu) / s if s > 0 else torch.zeros_like(x)
        zs.append(z)
        xs.append(ddim.noised(x0, direction(schedule, i, eps, z, eta), a_next))  # the correction
    return torch.stack(xs), torch.stack(zs)


def replay_noise(schedule: Schedule, zs: torch.Tensor, eta: float = 1.0):
    """A `denoise` noise hook that takes DDPM steps with the stored z_i (zs [N, B, ...], B the batch's
    rows or 1 for all of them): sampling with it from x_{T - skip} reproduces (or edits) the image."""

    def noise(i: int, eps: torch.Tensor) -> torch.Tensor:
        return direction(schedule, i, eps, zs[i].to(eps).expand_as(eps), eta)

    return noise
