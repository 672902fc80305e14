"""Re-noising: one stochastic step among the edit's deterministic ones (DDIM eq. 12)."""

from __future__ import annotations

import torch

from ..errors import InputError


class Renoise:
    """`noise(i, eps)` for `sampling.denoise`: at step `at`, the edits' predicted noise eps becomes
    sqrt(1 - s^2) eps + s xi with fresh xi ~ N(0, I) and s = `strength`. That step is then DDIM eq. 12
    with sigma_t = s sqrt(1 - alpha_{t-1}) (Song et al. 2021; s = 1: the predicted x0 noised afresh).
    The source (row 0) keeps its own eps, so it still reconstructs. Every other step stays deterministic."""

    def __init__(self, renoise_step: float, steps: int, strength: float = 1.0, seed: int = 0, start: int = 0):
        if not 0 <= renoise_step < 1:
            raise InputError(f"renoise_step is the fraction of the steps after which the edits are re-noised once, "
                             f"0 <= renoise_step < 1 (None: never); got {renoise_step}.")
        if not 0 <= strength <= 1:
            raise InputError(f"renoise_strength is the share of fresh noise in the re-noised step, 0 to 1; got {strength}.")
        self.at, self.strength, self.seed = int(renoise_step * steps + 1e-9), strength, seed
        if self.at < start:
            raise InputError(f"renoise_step {renoise_step} is step {self.at}, before the edit's first step {start} "
                             f"(skip_steps): re-noise at a later step, or skip fewer.")

    def __call__(self, i: int, eps: torch.Tensor) -> torch.Tensor:
        if i != self.at:
            return eps
        fresh = torch.randn(eps[1:].shape, generator=torch.Generator().manual_seed(self.seed)).to(eps)  # drawn on the CPU
        s = self.strength
        return torch.cat([eps[:1], (1 - s * s) ** 0.5 * eps[1:] + s * fresh])
