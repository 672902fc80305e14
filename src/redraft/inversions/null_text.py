"""Null-text inversion (Mokady et al. 2023, sec. 3.2, Algorithm 1): per-step unconditional ("null")
embeddings that make guided sampling follow the DDIM pivot.

Two rules, their values in one place (`PAPER`, `WARM`):

- `PAPER`, Algorithm 1 as published (reference.md): start from the empty prompt's embedding, carry it
  from step to step, Adam at lr 1e-2 (1 - i / 100), at most 10 updates a step, stop a step once its
  loss is below 1e-5 + i 2e-5.
- `WARM`, redraft's default: every step starts at negative-prompt inversion's null (the source
  prompt's embedding, Miyake et al. 2023) and keeps the best embedding it evaluates, so it never ends a
  step worse than NPI would from the same latent. Its stopping tolerance is relative to the target
  latent's variance and does not loosen with i, and its updates come from a budget of `inner_steps` a
  step on average that a step which converges early leaves to the later ones.

Why it stopped short of the VAE ceiling (docs/experiments/null_text_budget.py, validation seed 11; the
final latent's error is the last step's residual, since each step starts where the previous one ended,
as in the paper, and the replay reproduces it):

- the tolerance: absolute, in latent units (this model's latents have std 0.9 to 1.2, SD's ~1), and
  loosening 100-fold to 9.9e-4 at step 49, where NPI's own per-step error already is 0.9e-3 to 2.3e-3.
  Warm-started from NPI with up to 5 updates a step, that tolerance let 17, 58 and 123 of the 250 run
  on three scenes (the first: 0 / 0 / 17 in the first / middle / last third of the steps), -0.11 /
  -0.48 / -0.22 dB from the ceiling, final latent error 1.0e-3; all 250 run: -0.01 / -0.06 / -0.06 dB,
  final latent error 4e-4 to 5e-4.
- not the learning rate: 5e-2 instead of 1e-2 changed those by at most 0.02 dB (the prompt embeddings'
  RMS is 0.93, SD's ~1: the paper's lr is the same relative step here).
- the paper's start: from the empty prompt at guidance 4 its steps run 10 updates without converging
  (490 and 500 of 500 on two scenes), their loss 10x the DDIM step's own size in the middle of the chain; it ends at 1.1e-3
  to 1.8e-3, 1.0 dB under the ceiling on average and 5.55 dB under NPI on one scene, in 1144 samples.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from tqdm.auto import tqdm

from ..core import ddim
from ..core.ddim import Schedule
from ..core.sampling import CountedUNet


@dataclass(frozen=True)
class Rule:
    """How each step's null embedding is optimised.

    inner_steps: updates a step at most (`burst` 0), or on average over the steps (`burst` > 0: a step
    may use up to burst x inner_steps, drawing on what earlier steps left). budget: with `burst`, at least
    this many updates in all, however few the steps (fewer steps leave more error to each: `per_step`). lr: Adam's step at step 0, times
    (1 - lr_decay i) at step i. tolerance (a, b): a step stops once its loss < a + i b, in latent units
    squared, or in units of the target latent's variance when `relative`.
    """

    inner_steps: int
    lr: float = 1e-2
    lr_decay: float = 1 / 100
    tolerance: tuple[float, float] = (1e-5, 2e-5)
    relative: bool = False
    burst: int = 0
    budget: int = 0

    def threshold(self, i: int, target: torch.Tensor) -> torch.Tensor:
        """Per row of `target` ([B, ...]): the loss below which step i stops."""
        base = torch.full((len(target),), self.tolerance[0] + i * self.tolerance[1], device=target.device)
        return base * target.flatten(1).var(dim=1) if self.relative else base

    def per_step(self, steps: int) -> float:
        """The updates a step gets on average over `steps` steps."""
        return max(self.inner_steps, self.budget / steps)

    def with_inner_steps(self, inner_steps: int | None) -> "Rule":
        """The rule with another inner step count, exactly that many a step (None: its own)."""
        return self if inner_steps is None else replace(self, inner_steps=inner_steps, budget=0)


PAPER = Rule(inner_steps=10)  # Mokady et al. 2023, Algorithm 1 and its official code (reference.md)
# The paper's tightest tolerance (its step 0 on SD's unit-variance latents), relative and kept at every
# step; 2 updates a step on average and 100 in all (so more a step below 50 steps), a step up to twice its
# share where the earlier steps left some: at most 300 UNet samples per 50 steps, the pivot's included.
# Chosen on validation seed 11 (docs/experiments/null_text_budget.py, 8 scenes, 50 steps: 1 / 2 / 3 updates
# a step 35.68 / 35.77 / 35.77 dB against the VAE's 35.79; NPI 33.20).
WARM = Rule(inner_steps=2, tolerance=(1e-5, 0.0), relative=True, burst=2, budget=100)


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


@dataclass
class Step:
    """What one step's optimisation gives: per row its null, the latent it steps to, its loss and the
    number of updates it used."""

    null: torch.Tensor
    z_next: torch.Tensor
    loss: torch.Tensor
    updates: torch.Tensor


def optimise_step(model: CountedUNet, schedule: Schedule, i: int, z: torch.Tensor, target: torch.Tensor,
                  cond: torch.Tensor, start: torch.Tensor, guidance_scale: float, rule: Rule,
                  allowance: torch.Tensor, keep_best: bool) -> Step:
    """Step i of Algorithm 1 for a batch: minimise ||step(z, f_u + w (f_c - f_u)) - target||^2 over the
    null embedding from `start`, with at most allowance[b] updates for row b, stopping a row once its
    loss is below `rule.threshold`. The loss is checked before each update, so a converged row costs no
    extra pass; each update costs one backward and one forward pass. f_c is computed once; when
    `keep_best`, `start` must be `cond` (NPI's null), whose pass is then f_c itself, and the step returns
    the best embedding it evaluated, never one worse than NPI's."""
    t, a, a_next = schedule.timesteps[i], schedule.alphas[i], schedule.alphas[i + 1]
    batch = len(z)
    null = start.float().clone()
    f_c = None
    if not keep_best:
        with torch.no_grad():
            f_c = model(z, t, cond)
    best = torch.full((batch,), float("inf"), device=z.device)
    out = Step(null.clone(), torch.empty_like(z), best, torch.zeros(batch, dtype=torch.long, device=z.device))
    threshold = rule.threshold(i, target)
    adam, lr = Adam.like(null), rule.lr * (1 - rule.lr_decay * i)
    active = torch.arange(batch, device=z.device)
    for j in range(int(allowance.max()) + 1):
        last = j >= allowance[active]
        u = null[active].clone().requires_grad_(not bool(last.all()))
        with torch.set_grad_enabled(u.requires_grad):
            f_u = model(z[active], t, u)
            if f_c is None:
                f_c = f_u.detach()
            guided = f_u + guidance_scale * (f_c[active] - f_u)
            stepped = ddim.step(z[active], guided, a, a_next, schedule.prediction_type)
            loss = (stepped - target[active]).pow(2).flatten(1).mean(dim=1)
        seen = loss.detach()
        done = (seen < threshold[active]) | last
        record = seen < out.loss[active] if keep_best else done  # Algorithm 1: where the step stopped
        rows = active[record]
        out.loss[rows], out.null[rows], out.z_next[rows] = seen[record], null[rows], stepped.detach()[record]
        if done.all():
            break
        grad = torch.autograd.grad(loss[~done].sum(), u)[0]
        model.backward += len(active)
        with torch.no_grad():
            adam.update(null, grad[~done], active[~done], lr)
        out.updates[active[~done]] += 1
        active = active[~done]
    return out


def null_text_optimisation(model: CountedUNet, schedule: Schedule, pivots: torch.Tensor, cond: torch.Tensor,
                           null_init: torch.Tensor, guidance_scale: float = 7.5, *, rule: Rule = PAPER,
                           shared: bool = False, from_source: bool = False, progress: bool = True,
                           latents: list | None = None) -> torch.Tensor:
    """Null-text inversion (Mokady et al. 2023, Algorithm 1), batched over images: [N, B, L, D].

    Without `from_source` (rule `PAPER`): for each step i, starting from the previous step's embedding
    (first: `null_init`, the empty prompt's in the paper, or the source prompt's), minimise
    || step(z_i, f_u + w (f_c - f_u)) - z*_{i+1} ||^2 over the null embedding (`optimise_step`), then
    step on from where it stopped (not from the pivot z*_{i+1}, as in the paper).

    `from_source` (rule `WARM`): every step starts from the source prompt's embedding `cond` and keeps
    the best embedding it evaluated; row b may use at most min(burst x rule.per_step(N), round(left_b / steps left)) updates at
    a step, where left_b starts at `rule.per_step(N)` N, so in all at most that many updates.

    UNet samples per image (forward + backward, as `CountedUNet` counts them; the pivot's N forwards
    not included): `PAPER` 2 N + 2 U, `WARM` N + 2 U, for U updates in all (`WARM`: U <= max(2 N, 100)).
    Embedding and optimiser stay in fp32 whatever the UNet's dtype. `shared`: `global_null`. `latents`,
    if given, receives the clean latents [B, ...] of the trajectory that was optimised (what a replay
    of the returned embeddings must reproduce).
    """
    if shared:
        return global_null(model, schedule, pivots, cond, null_init, guidance_scale, rule, progress, latents)
    batch, steps = pivots.shape[1], schedule.steps
    null, z = null_init.float().clone(), pivots[0].clone()
    share = rule.per_step(steps)
    left = torch.full((batch,), round(share * steps), device=z.device)
    per_step = []
    bar = tqdm(range(steps), desc="null-text inversion", disable=not progress, leave=False)
    for i in bar:
        if rule.burst:
            allowance = torch.clamp(torch.round(left / (steps - i)).long(), max=round(rule.burst * share))
        else:
            allowance = torch.full((batch,), rule.inner_steps, device=z.device)
        out = optimise_step(model, schedule, i, z, pivots[i + 1], cond, cond if from_source else null,
                            guidance_scale, rule, allowance, keep_best=from_source)
        left = left - out.updates
        null, z = out.null, out.z_next
        per_step.append(null.clone())
        bar.set_postfix(loss=f"{float(out.loss.max()):.2e}")
    if latents is not None:
        latents.append(z)
    return torch.stack(per_step)


def global_null(model: CountedUNet, schedule: Schedule, pivots: torch.Tensor, cond: torch.Tensor,
                null_init: torch.Tensor, guidance_scale: float, rule: Rule, progress: bool = True,
                latents: list | None = None) -> torch.Tensor:
    """One null embedding for every step (the paper's "global null-text" ablation, sec. 4), [1, B, L, D].

    Optimised on the trajectory it generates itself, so that the replay (the same embedding at every
    step) is the trajectory that was optimised: each of `rule.inner_steps` sweeps runs the whole chain
    from x_T with the current embedding, sums the gradients of every step's loss to its pivot latent
    (each step's start held fixed) and takes one Adam step; a last sweep evaluates the final embedding.
    Returns, per row, the embedding of the sweep whose clean latent came closest to the image's. Costs
    (2 N + N) per sweep, 2 N for the last."""
    null = null_init.float().clone()
    batch, rows = len(null), torch.arange(len(null), device=null.device)
    adam = Adam.like(null)
    best = torch.full((batch,), float("inf"), device=null.device)
    best_null, best_z = null.clone(), pivots[-1].clone()
    bar = tqdm(range(rule.inner_steps + 1), desc="global null-text", disable=not progress, leave=False)
    for k in bar:
        train = k < rule.inner_steps
        z, grad = pivots[0].clone(), torch.zeros_like(null)
        for i in range(schedule.steps):
            t, a, a_next = schedule.timesteps[i], schedule.alphas[i], schedule.alphas[i + 1]
            with torch.no_grad():
                f_c = model(z, t, cond)
            u = null.clone().requires_grad_(train)
            with torch.set_grad_enabled(train):
                f_u = model(z, t, u)
                z_next = ddim.step(z, f_u + guidance_scale * (f_c - f_u), a, a_next, schedule.prediction_type)
                loss = (z_next - pivots[i + 1]).pow(2).flatten(1).mean(dim=1)
            if train:
                grad += torch.autograd.grad(loss.sum(), u)[0]
                model.backward += batch
            z = z_next.detach()
        final = loss.detach()  # the clean latent's error: what the replay reconstructs
        better = final < best
        best[better], best_null[better], best_z[better] = final[better], null[better], z[better]
        if train:
            with torch.no_grad():
                adam.update(null, grad, rows, rule.lr)
        bar.set_postfix(loss=f"{float(best.max()):.2e}")
    if latents is not None:
        latents.append(best_z)
    return best_null[None]
