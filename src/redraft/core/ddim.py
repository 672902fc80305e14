"""DDIM, both ways: the deterministic sampler (Song et al. 2021, eq. 12 with eta = 0) and its inversion.

The chain has N + 1 states in sampling order: z_0 = x_T at timestep t_0 (981 for SD 1.x at 50 steps)
down to z_N, the clean latent. State i has noise level a_i = alpha-bar(t_i); the last one, a_N, is
alpha-bar of the timestep after t_{N-1} (or the scheduler's final alpha), as in diffusers' DDIMScheduler.

    sampling  step i: z_{i+1} = step(z_i,     f(z_i, t_i),     a_i     -> a_{i+1})
    inversion step i: z_i     = step(z_{i+1}, f(z_{i+1}, t_i), a_{i+1} -> a_i)

where f is the UNet. Inversion evaluates the model at the latent it has, with the timestep it goes to:
the usual approximation z_i ~ z_{i+1} (reference.md, "DDIM inversion"), the same as diffusers'
DDIMInverseScheduler. One `step` function serves both directions: only the two noise levels swap.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Schedule:
    """Timesteps t_0 > ... > t_{N-1} and noise levels a_0 < ... < a_N of an N-step DDIM chain."""

    timesteps: tuple[int, ...]
    alphas: tuple[float, ...]  # a_0 ... a_N (alpha-bar, float64 precision kept in Python floats)
    prediction_type: str  # "epsilon" | "v_prediction" | "sample"

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    @classmethod
    def from_scheduler(cls, scheduler, steps: int) -> "Schedule":
        """Read the chain off a diffusers DDIMScheduler configured from the model.

        If the schedule ends at t = 0 and the final noise level is alpha-bar(0) again, its last step
        would be an identity step (the wasted step of the reference code): then the chain ends at
        a_N = 1, the clean image, instead.
        """
        scheduler.set_timesteps(steps)
        timesteps = [int(t) for t in scheduler.timesteps]
        ac = scheduler.alphas_cumprod.double()
        ratio = scheduler.config.num_train_timesteps // steps
        alphas = [float(ac[t]) for t in timesteps]
        last = timesteps[-1] - ratio
        final = float(ac[last]) if last >= 0 else float(scheduler.final_alpha_cumprod)
        if final == alphas[-1]:
            final = 1.0
        return cls(tuple(timesteps), tuple(alphas + [final]), scheduler.config.prediction_type)


def predict_x0_eps(output: torch.Tensor, z: torch.Tensor, a: float, prediction_type: str):
    """The model's output at noise level a, as (predicted clean latent x0, predicted noise eps).

    z = sqrt(a) x0 + sqrt(1 - a) eps;  v = sqrt(a) eps - sqrt(1 - a) x0  (Salimans & Ho 2022, sec. 4).
    """
    sa, sb = a**0.5, (1 - a) ** 0.5
    if prediction_type == "epsilon":
        return (z - sb * output) / sa, output
    if prediction_type == "v_prediction":
        return sa * z - sb * output, sa * output + sb * z
    if prediction_type == "sample":
        return output, (z - sa * output) / sb
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def noised(x0: torch.Tensor, eps: torch.Tensor, a: float) -> torch.Tensor:
    """The latent at noise level a: z = sqrt(a) x0 + sqrt(1 - a) eps."""
    return a**0.5 * x0 + (1 - a) ** 0.5 * eps


def step(z: torch.Tensor, output: torch.Tensor, a: float, a_next: float, prediction_type: str) -> torch.Tensor:
    """One deterministic DDIM step from noise level a to a_next (either direction): DDIM eq. 12, eta = 0."""
    return noised(*predict_x0_eps(output, z, a, prediction_type), a_next)
