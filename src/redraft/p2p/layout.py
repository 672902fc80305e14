"""Layout guidance: keep an edit's objects where the source has them, by moving the edit's latent.

Prompt-to-Prompt injects the source's attention maps into the edit, but the edit's own UNet features
can still decide to draw the object elsewhere (the shapes model does, by a few pixels, on most swaps).
Layout guidance updates each edit's latent before a step so that the attention maps the edit computes
itself agree with the source's, as Attend-and-Excite updates the latent from a loss on cross-attention
(Chefer et al., SIGGRAPH 2023, eq. 2: z_t <- z_t - alpha_t grad L) and as Self-Guidance steers an
object's shape through its attention map (Epstein et al., NeurIPS 2023, sec. 3):

    L_b = sum over cross-attention layers and word tokens t of the edit b of
          pixels * || A_b[:, t] / sum A_b[:, t]  -  (A_0 M_b)[:, t] / sum (A_0 M_b)[:, t] ||^2
    z_b <- z_b - scale * grad L_b / rms(grad L_b)

with A_b the edit's own head-averaged map before any injection, A_0 the source's and M_b the P2P token
mapper (a swapped word is compared with the word it replaces). Inserted words (refinement) are free.
The step is normalised, so `scale` is a distance in the latent's units. The source row never moves.
"""

from __future__ import annotations

import torch

from . import tokens as W
from .attention import AttentionControl
from ..errors import InputError


class LayoutGuidance:
    """`guide(i, t, z)` for `sampling.denoise`: one gradient step on the edits' latents at the steps of `window`."""

    def __init__(self, model, control: AttentionControl, cond: torch.Tensor, word_mask: torch.Tensor,
                 scale: float, window: torch.Tensor):
        self.model, self.control, self.cond = model, control, cond
        self.word_mask = word_mask  # [T, L]: the edits' word tokens that have a source counterpart
        self.scale, self.window = scale, window  # window: [steps] bool
        self.loss: torch.Tensor | float = 0.0

    def observe(self, probs: torch.Tensor, pixels: int) -> None:
        """Called by the control with a cross-attention layer's probabilities of the conditional rows
        [1 + T, heads, pixels, L], before the edit plan replaces the targets'."""
        plan = self.control.plan
        own = probs[1:].mean(1)  # [T, P, L]
        mapped = torch.einsum("pl,tlm->tpm", probs[0].mean(0).detach(), plan.mapper.to(probs.dtype))
        own = own / own.sum(1, keepdim=True).clamp_min(1e-8)
        mapped = mapped / mapped.sum(1, keepdim=True).clamp_min(1e-8)
        per_token = ((own - mapped) ** 2).sum(1)  # [T, L]
        self.loss = self.loss + pixels * (per_token * self.word_mask.to(probs.dtype)).sum()

    def __call__(self, i: int, t, z: torch.Tensor) -> torch.Tensor:
        if not self.window[i] or len(z) < 2:
            return z
        latent = z.detach().clone().requires_grad_(True)
        self.loss = 0.0
        self.control.observer = self
        try:
            with torch.enable_grad():
                self.model(latent, t, self.cond, step=i, cond_rows=slice(0, len(z)))
                (grad,) = torch.autograd.grad(self.loss, latent)
            self.loss = self.loss.detach()  # kept for inspection: L at the latent before the step
        finally:
            self.control.observer = None
        self.model.backward += len(z)
        grad[0] = 0  # the source stays on its own trajectory
        rms = grad.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-12)[:, None, None, None]
        return z - self.scale * grad / rms


def layout_guidance(model, control: AttentionControl, tokenizer, prompts, cond: torch.Tensor, scale: float,
                    steps_spec, steps: int) -> LayoutGuidance:
    """The guidance of edits prompts[1:] of source prompts[0] under `control`'s plan (`Controls.layout_guidance`)."""
    if not scale >= 0:
        raise InputError(f"layout_guidance is a step size of 0 or more (0 turns it off); got {scale}.")
    L = control.plan.mapper.shape[-1]
    mask = torch.zeros(len(prompts) - 1, L)
    for b, target in enumerate(prompts[1:]):
        for positions in W.word_tokens(tokenizer, target):
            mask[b, positions] = 1
    mask = mask * control.plan.alphas  # inserted words (refinement) have no source map to follow
    window = W.step_window(steps_spec, steps)
    return LayoutGuidance(model, control, cond, mask.to(cond.device), scale, window)
