"""EDICT: exact diffusion inversion via coupled transformations (Wallace, Gokul and Naik, CVPR 2023).

Two latents x and y update each other in turn and are then mixed by an invertible affine layer
(sec. 3, eqs. 14-15, with the official code's alternating "leapfrog" order), so that every denoising
step has an exact algebraic inverse: inversion is that inverse, and reconstruction is exact up to
float error. The latents and the coupling run in float64 (the paper casts the whole model; here the
UNet keeps its dtype and sees the same inputs in both directions, so its outputs match exactly).

EDICT has its own small loop (`coupled_denoise`) rather than `core.sampling.denoise`: each step
evaluates the model twice, once at each chain, and the two updates depend on each other, which the
one-latent loop cannot express. It uses the same `guided_output` and the same per-call attention
control, so Prompt-to-Prompt's edit batch [source, target...] works as in every other loop.

Notation: one DDIM step z' = A z + B f(z) with f the guided model output (`coefficients`), p the mixing
weight (0.93). Step i, from state i to i + 1 (i even; odd i swaps the roles of x and y):
    x' = A x + B f(y);  y' = A y + B f(x');  x+ = p x' + (1 - p) y';  y+ = p y' + (1 - p) x+.
"""

from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import tqdm

from ..core import ddim
from ..core.ddim import Schedule
from ..core.sampling import CountedUNet, guided_output
from ..errors import InputError

MIX = 0.93  # the official mix_weight p (paper: 0.93; [0.9, 0.97] works at 50 steps)


def coefficients(schedule: Schedule, i: int) -> tuple[float, float]:
    """(A, B) with `ddim.step(z, f, a_i, a_{i+1}) = A z + B f` (DDIM eq. 12 is linear in z and in f for
    epsilon, v and sample prediction alike): EDICT's a_t and b_t (eq. 14), for any prediction type."""
    a, a_next = schedule.alphas[i], schedule.alphas[i + 1]
    one, zero = torch.ones((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    A = float(ddim.step(one, zero, a, a_next, schedule.prediction_type))
    B = float(ddim.step(zero, one, a, a_next, schedule.prediction_type))
    return A, B


def _f(model, z, i, schedule, cond, uncond, w, step):
    u = uncond[i] if uncond.dim() == 4 else uncond
    return guided_output(model, z, schedule.timesteps[i], cond, u, w, step=step).double()


@torch.no_grad()
def edict_inversion(model: CountedUNet, schedule: Schedule, latent: torch.Tensor, cond: torch.Tensor,
                    uncond: torch.Tensor, guidance_scale: float, mix: float = MIX,
                    progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """EDICT's inversion (eq. 15: the exact inverse of each coupled step, undone in reverse order), from
    x = y = the image's latent. Returns the sequences (x, y), each [N + 1, B, ...] in sampling order,
    float64. 4 UNet passes per step at guidance > 1 (2 per chain: uncond and cond), 2 at guidance 1."""
    x = y = latent.double()
    xs, ys = [x], [y]
    p = mix
    for i in tqdm(reversed(range(schedule.steps)), total=schedule.steps, desc="EDICT inversion",
                  disable=not progress, leave=False):
        A, B = coefficients(schedule, i)
        y1 = (y - (1 - p) * x) / p  # un-mix
        x1 = (x - (1 - p) * y1) / p
        if i % 2 == 0:  # x was updated first: undo y's update, then x's
            y = (y1 - B * _f(model, x1, i, schedule, cond, uncond, guidance_scale, i)) / A
            x = (x1 - B * _f(model, y, i, schedule, cond, uncond, guidance_scale, i)) / A
        else:
            x = (x1 - B * _f(model, y1, i, schedule, cond, uncond, guidance_scale, i)) / A
            y = (y1 - B * _f(model, x, i, schedule, cond, uncond, guidance_scale, i)) / A
        xs.append(x)
        ys.append(y)
    return torch.stack(xs[::-1]), torch.stack(ys[::-1])


def coupled_denoise(model: CountedUNet, schedule: Schedule, z: torch.Tensor, cond: torch.Tensor,
                    uncond: torch.Tensor, guidance_scale, *, y: torch.Tensor, mix: float = MIX,
                    callback: Callable | None = None, guide=None, noise=None, rule=None, start: int = 0,
                    progress: bool = True, desc: str = "sampling") -> torch.Tensor:
    """EDICT's denoising (eq. 14 and the mixing layer) from (x, y) = (z, y) at step `start`; returns x
    (the paper's pair is nearly identical). Takes `denoise`'s arguments; `callback(i, z)` (LocalBlend)
    acts on both chains. A layout guide, a noise hook or a guidance rule has no coupled inverse here."""
    if guide is not None or noise is not None or rule is not None:
        raise InputError("EDICT's coupled steps take no layout guidance, re-noised step or proximal guidance; "
                         "leave layout_guidance at 0 and renoise_step unset, or invert with another method.")
    x, y, p = z.double(), y.double().expand_as(z), mix
    for i in tqdm(range(start, schedule.steps), desc=desc, disable=not progress, leave=False):
        A, B = coefficients(schedule, i)
        with torch.no_grad():
            if i % 2 == 0:
                x1 = A * x + B * _f(model, y, i, schedule, cond, uncond, guidance_scale, i)
                y1 = A * y + B * _f(model, x1, i, schedule, cond, uncond, guidance_scale, i)
            else:
                y1 = A * y + B * _f(model, x, i, schedule, cond, uncond, guidance_scale, i)
                x1 = A * x + B * _f(model, y1, i, schedule, cond, uncond, guidance_scale, i)
        x = p * x1 + (1 - p) * y1
        y = p * y1 + (1 - p) * x
        if callback is not None:
            x, y = (z1 if (z1 := callback(i, c)) is not None else c for c in (x, y))
    return x.float()
