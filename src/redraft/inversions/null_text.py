"""Null-text inversion (Mokady et al. 2023, sec. 3.2, Algorithm 1): per-step unconditional ("null")
embeddings that make guided sampling follow the DDIM pivot."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..core import ddim
from ..core.ddim import Schedule
from ..core.sampling import CountedUNet


@dataclass
class Adam:
    """Adam (Kingma & Ba 2015) on a batch of embeddings, one independent optimiser per row.

    Rows converge at different inner steps; a row that stopped must not move, and must not let the
    others change its update: torch.optim.Adam over the whole tensor would do both.
    """

    m: torch.Tensor
    v: torch.Tensor
    k: torch.Tensor  # per-row step count
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    @classmethod
    def like(cls, x: torch.Tensor) -> "Adam":
        return cls(torch.zeros_like(x), torch.zeros_like(x), torch.zeros(len(x), dtype=x.dtype, device=x.device))

    def update(self, x: torch.Tensor, grad: torch.Tensor, rows: torch.Tensor, lr: float) -> None:
        """x[rows] -= lr * m_hat / (sqrt(v_hat) + eps), in place, for the given rows only."""
        b1, b2 = self.betas
        self.k[rows] += 1
        self.m[rows] = b1 * self.m[rows] + (1 - b1) * grad
        self.v[rows] = b2 * self.v[rows] + (1 - b2) * grad * grad
        shape = (-1,) + (1,) * (x.dim() - 1)
        m_hat = self.m[rows] / (1 - b1 ** self.k[rows]).view(shape)
        v_hat = self.v[rows] / (1 - b2 ** self.k[rows]).view(shape)
        x[rows] -= lr * m_hat / (v_hat.sqrt() + self.eps)


def null_text_optimisation(model: CountedUNet, schedule: Schedule, pivots: torch.Tensor, cond: torch.Tensor,
                           null_init: torch.Tensor, guidance_scale: float = 7.5, *, inner_steps: int = 10,
                           lr: float = 1e-2, tolerance: tuple[float, float] = (1e-5, 2e-5),
                           shared: bool = False, from_source: bool = False, progress: bool = True) -> torch.Tensor:
    """Null-text inversion (Mokady et al. 2023, Algorithm 1), batched over images.

    For each step i, starting from the previous step's embedding (first: `null_init`, the empty
    prompt's embedding in the paper, or the source prompt's in the negative-prompt-initialised
    variant), minimise || step(z_i, f_u + w (f_c - f_u)) - z*_{i+1} ||^2 over the null embedding with
    Adam at lr (1 - i / 100) for up to `inner_steps` updates, stopping once the loss is below
    tolerance[0] + i * tolerance[1]. The conditional output f_c is computed once per step; the loss is
    checked before each update, so a converged row costs no extra pass. Embedding and optimiser stay
    in fp32 whatever the UNet's dtype. Returns [N, B, L, D], or [1, B, L, D] when `shared` (one
    embedding carried through all steps: the paper's "global null-text" ablation).

    `from_source` (warm start): every step starts from the source prompt's embedding `cond`, where
    guided sampling is negative-prompt inversion's step (Miyake et al. 2023), so that its first pass is
    also f_c; the step keeps the best embedding it evaluated, so it never ends worse than NPI's. Each
    update costs one backward and one forward pass: 1 + 2 * inner_steps samples a step at most.
    """
    batch = pivots.shape[1]
    null = null_init.float().clone()
    z = pivots[0].clone()
    per_step = []
    bar = tqdm(range(schedule.steps), desc="null-text inversion", disable=not progress, leave=False)
    for i in bar:
        t, a, a_next = schedule.timesteps[i], schedule.alphas[i], schedule.alphas[i + 1]
        target = pivots[i + 1]
        threshold = tolerance[0] + i * tolerance[1]
        if from_source:
            null, f_c = cond.float().clone(), None  # NPI's null; its pass below gives f_c
            best = torch.full((batch,), float("inf"), device=z.device)
            best_null = null.clone()
        else:
            with torch.no_grad():
                f_c = model(z, t, cond)
        adam = Adam.like(null)
        z_next = torch.empty_like(z)
        active = torch.arange(batch, device=z.device)
        for j in range(inner_steps + 1):
            last = j == inner_steps
            u = null[active].clone().requires_grad_(not last)
            with torch.set_grad_enabled(not last):
                f_u = model(z[active], t, u)
                if f_c is None:
                    f_c = f_u.detach()
                guided = f_u + guidance_scale * (f_c[active] - f_u)
                stepped = ddim.step(z[active], guided, a, a_next, schedule.prediction_type)
                loss = (stepped - target[active]).pow(2).flatten(1).mean(dim=1)
            if from_source:  # keep the best seen: never worse than NPI's step
                better = loss.detach() < best[active]
                rows = active[better]
                best[rows], best_null[rows], z_next[rows] = loss.detach()[better], null[rows], stepped.detach()[better]
            done = (loss < threshold) | last
            if not from_source:
                z_next[active[done]] = stepped[done].detach()
            if done.all():
                break
            grad = torch.autograd.grad(loss[~done].sum(), u)[0]
            model.backward += len(active)
            with torch.no_grad():
                adam.update(null, grad[~done], active[~done], lr * (1 - i / 100))
            active = active[~done]
        if from_source:
            null = best_null
        per_step.append(null.clone())
        z = z_next
        bar.set_postfix(loss=f"{float(loss.detach().max()):.2e}")
    return null[None].clone() if shared else torch.stack(per_step)
