"""SPDInv: source-prompt disentangled inversion (Li, Li, Guo and Zhang, ECCV 2024, sec. 3.2, eq. 8).

DDIM inversion approximates the noise of the step it inverts by the noise at the latent it starts from
(`core.ddim`). SPDInv instead solves each inversion step as a fixed point: the z_i whose own predicted
noise, used to invert from z_{i+1}, gives z_i back, z_i = F(z_i) with
F(z) = DDIM-inverse(z_{i+1}; eps(z, t_i)). Starting from the DDIM-inversion estimate, it minimises
||z - F(z)||^2 (mean over elements) with AdamW (lr 1e-3) through the UNet for at most K = 25 rounds,
stopping once the loss is below delta = 5e-6 (official `SPD_loop`, `leeruibin/SPDInv`). The edit is
ProxNPI's (`proxnpi`): the source prompt as negative prompt, proximal guidance, inversion guidance.

F is written with the predicted noise eps, not the raw model output: for epsilon prediction that is the
official step; for v prediction it is what makes the fixed point exactly invertible by the sampler.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..core import ddim
from ..core.ddim import Schedule
from ..core.sampling import CountedUNet
from .null_text import Adam

DEFAULTS = {"rounds": 25, "lr": 1e-3, "delta": 5e-6, "weight_decay": 0.01}  # torch AdamW's decay, as the code


def fixed_point_map(model: CountedUNet, schedule: Schedule, i: int, z: torch.Tensor, z_next: torch.Tensor,
                    cond: torch.Tensor) -> torch.Tensor:
    """F(z) = DDIM-inverse of step i from z_{i+1} = `z_next`, with the noise predicted at z (eq. 8)."""
    a, a_next = schedule.alphas[i], schedule.alphas[i + 1]
    _, eps = ddim.predict_x0_eps(model(z, schedule.timesteps[i], cond), z, a, schedule.prediction_type)
    x0 = (z_next - (1 - a_next) ** 0.5 * eps) / a_next**0.5
    return ddim.noised(x0, eps, a)


def spd_inversion(model: CountedUNet, schedule: Schedule, latent: torch.Tensor, cond: torch.Tensor, *,
                  rounds: int = 25, lr: float = 1e-3, delta: float = 5e-6, weight_decay: float = 0.01,
                  progress: bool = True) -> tuple[torch.Tensor, list[int]]:
    """SPDInv's inversion, batched over images (one AdamW per row, a converged row stops). Returns the
    pivots [N + 1, B, ...] in sampling order and the rounds each step back-propagated (summed over rows).

    Passes per step and image: 1 forward for the DDIM estimate, then per round 1 forward and 1 backward
    (the code updates, then stops if that round's loss was below delta): forward = N + backward.
    """
    z_next = latent.float()
    pivots, used = [z_next], []
    bar = tqdm(reversed(range(schedule.steps)), total=schedule.steps, desc="SPDInv", disable=not progress, leave=False)
    for i in bar:
        t = schedule.timesteps[i]
        with torch.no_grad():
            z = ddim.step(z_next, model(z_next, t, cond), schedule.alphas[i + 1], schedule.alphas[i],
                          schedule.prediction_type)
        adam, active, backward, loss = Adam.like(z), torch.arange(len(z), device=z.device), 0, None
        for _ in range(rounds):
            x = z[active].clone().requires_grad_(True)
            with torch.enable_grad():
                loss = (x - fixed_point_map(model, schedule, i, x, z_next[active], cond[active])).pow(2).flatten(1).mean(1)
                grad = torch.autograd.grad(loss.sum(), x)[0]
            model.backward += len(active)
            backward += len(active)
            with torch.no_grad():
                z[active] *= 1 - lr * weight_decay  # AdamW's decoupled decay
                adam.update(z, grad, active, lr)
            active = active[loss.detach() >= delta]  # the code steps, then stops once the loss was below delta
            if not len(active):
                break
        used.append(backward)
        pivots.append(z.detach())
        z_next = z.detach()
        if loss is not None:  # rounds = 0: the DDIM estimate itself
            bar.set_postfix(loss=f"{float(loss.detach().max()):.1e}")
    return torch.stack(pivots[::-1]), used[::-1]
