"""The one sampling loop: generation, reconstruction and editing all run `denoise`."""

from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import tqdm

from . import ddim
from .conditioning import XLLayout
from .ddim import Schedule


class CountedUNet:
    """Calls the UNet on fp32 latents in the UNet's own dtype, and counts what it costs.

    A pass is one latent through the UNet: a batch of b latents costs b passes. `backward` counts
    the latents whose pass was also back-propagated (null-text optimisation). A conditioning packed
    for SDXL (`conditioning.XLLayout`) is unpacked into the token embeddings and `added_cond_kwargs`.
    """

    def __init__(self, unet):
        self.unet, self.forward, self.backward = unet, 0, 0
        self.dtype = next(unet.parameters()).dtype
        self.controller = None  # an attention controller sees every call (see `redraft.attention`)
        self.layout = XLLayout.of(unet)  # None: SD 1.x / 2.x, the context is the token embeddings

    def __call__(self, z: torch.Tensor, t: int, context: torch.Tensor, *, step: int | None = None,
                 cond_rows: slice | None = None) -> torch.Tensor:
        self.forward += z.shape[0]
        if self.controller is not None:
            self.controller.begin_call(step=step, cond_rows=cond_rows, batch=z.shape[0])
        if self.layout is None:
            out = self.unet(z.to(self.dtype), t, encoder_hidden_states=context.to(self.dtype)).sample
        else:
            tokens, added = self.layout.unpack(context)
            added = {k: v.to(self.dtype) for k, v in added.items()}
            out = self.unet(z.to(self.dtype), t, encoder_hidden_states=tokens.to(self.dtype),
                            added_cond_kwargs=added).sample
        return out.float()

    def reset(self) -> None:
        self.forward = self.backward = 0


def rows_equal(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per batch row, whether two embeddings are identical (bool tensor of shape [B])."""
    return (a == b).flatten(1).all(dim=1)


def guided_output(model: CountedUNet, z: torch.Tensor, t: int, cond: torch.Tensor, uncond: torch.Tensor,
                  guidance_scale: float | torch.Tensor, step: int | None = None,
                  rule: Callable | None = None) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022): f_u + w (f_c - f_u), in one batched UNet call.

    Where the unconditional embedding equals the conditional one (negative-prompt inversion) or
    w = 1, the guided output is f_c itself: those rows skip their unconditional pass. The batch is
    laid out [uncond rows that need a pass..., cond rows for every latent...]. `guidance_scale` is one
    w or one per row ([B]); `rule(step, f_u, f_c, w)` replaces the combination (ProxEdit's proximal
    guidance), with f_u = f_c in the rows that skipped their pass.
    """
    w = torch.as_tensor(guidance_scale, dtype=torch.float32).expand(len(z)).to(z.device)
    need = ~rows_equal(uncond, cond).to(z.device) & (w != 1)
    n = int(need.sum())
    out = model(torch.cat([z[need], z]), t, torch.cat([uncond[need], cond]), step=step,
                cond_rows=slice(n, n + len(z)))
    f_c = out[n:]
    f_u = f_c.clone()
    f_u[need] = out[:n]
    if rule is not None:
        return rule(step, f_u, f_c, w)
    return f_u + w.view(-1, *[1] * (z.dim() - 1)) * (f_c - f_u)


def denoise(model: CountedUNet, schedule: Schedule, z: torch.Tensor, cond: torch.Tensor,
            uncond: torch.Tensor, guidance_scale: float, *,
            callback: Callable[[int, torch.Tensor], torch.Tensor | None] | None = None,
            guide: Callable[[int, int, torch.Tensor], torch.Tensor] | None = None,
            noise: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
            rule: Callable | None = None, start: int = 0, progress: bool = True, desc: str = "sampling") -> torch.Tensor:
    """Run the DDIM chain from z_start (shape [B, C, H, W]; x_T when `start` is 0) to the clean latent z_N.

    `cond` is [B, L, D]; `uncond` is [B, L, D] for all steps or [N, B, L, D], one per step (null-text
    inversion's per-step embeddings). `callback(i, z)` may return a replacement for z after step i
    (LocalBlend, Direct Inversion's offsets); `guide(i, t, z)` returns z moved before step i (layout
    guidance); `noise(i, eps)` returns the noise step i points z at, in place of the predicted eps
    (`edit.Renoise`, edit-friendly DDPM's noise maps; without it every step is deterministic DDIM);
    `rule` is `guided_output`'s (ProxEdit). `guidance_scale`: one, or one per row.
    """
    z = z.float()
    for i in tqdm(range(start, schedule.steps), desc=desc, disable=not progress, leave=False):
        t = schedule.timesteps[i]
        u = uncond[i] if uncond.dim() == 4 else uncond
        if guide is not None:
            z = guide(i, t, z)
        output = guided_output(model, z, t, cond, u, guidance_scale, step=i, rule=rule)
        x0, eps = ddim.predict_x0_eps(output, z, schedule.alphas[i], schedule.prediction_type)
        z = ddim.noised(x0, eps if noise is None else noise(i, eps), schedule.alphas[i + 1])
        if callback is not None:
            replaced = callback(i, z)
            z = z if replaced is None else replaced
    return z
