"""Reading and editing the UNet's attention through diffusers attention processors (no monkey-patching).

`ControlProcessor` computes a layer's attention probabilities explicitly only when the controller
needs them (to store or to edit); every other call goes through PyTorch's fused SDPA. A layer's
resolution is read from its tensor shapes (pixels = query length), never from layer indices, so any
UNet of the SD family, any latent size and any number of heads work.

`AttentionControl` sees every UNet call (the sampling loop tells it the step and which rows of the
batch are conditional): it stores head-averaged cross-attention of the conditional rows, and applies
an `EditPlan` (Prompt-to-Prompt, Hertz et al. 2023, sec. 3.2) to the target rows.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class EditPlan:
    """Cross- and self-attention control for T target prompts against source prompt 0.

    target_cross = w * eq * (a * source_cross @ M + (1 - a) * own) + (1 - w) * own    (per token)
    with M [T, L, L] the token mapper (word swap: P2P eq. "M_t = (M_t* @ M)"; refinement: one-hot
    alignment columns), a [T, L] 1 for mapped tokens and 0 for inserted ones, eq [T, L] the
    re-weighting factors, and w [T, N, L] the `cross_replace_steps` window of each token at each step.
    target_self = source_self for steps where `self_window` [N] is on, in layers of at most
    `self_max_pixels` pixels (P2P: up to 32x32 for 64x64 latents).
    """

    mapper: torch.Tensor
    alphas: torch.Tensor
    equalizer: torch.Tensor
    cross_window: torch.Tensor
    self_window: torch.Tensor
    self_max_pixels: int


class AttentionControl:
    def __init__(self, latent_hw: tuple[int, int], *, plan: EditPlan | None = None, store: bool = True):
        self.latent_hw, self.plan, self.store = latent_hw, plan, store
        self.step: int | None = None
        self.cond_rows = slice(0, 0)
        self.maps: dict[int, torch.Tensor] = {}  # pixels -> sum over layers and steps of [B, pixels, L]
        self.counts: dict[int, int] = {}
        self.observer = None  # sees every cross-attention layer's conditional rows before editing (`guidance`)

    # -- called by the sampling loop (via CountedUNet) before every UNet call
    def begin_call(self, step: int | None, cond_rows: slice | None, batch: int) -> None:
        self.step, self.cond_rows = step, cond_rows if cond_rows is not None else slice(0, batch)

    def needs(self, is_cross: bool, pixels: int) -> bool:
        """Whether this layer's probabilities must be computed explicitly in this call."""
        if self.step is None:
            return False
        if is_cross:
            return self.store or self.observer is not None or \
                (self.plan is not None and bool(self.plan.cross_window[:, self.step].any()))
        return self.plan is not None and bool(self.plan.self_window[self.step]) and pixels <= self.plan.self_max_pixels

    # -- called by the processor with probabilities [batch, heads, pixels, keys]
    def __call__(self, probs: torch.Tensor, is_cross: bool, pixels: int) -> torch.Tensor:
        rows = probs[self.cond_rows]
        observed = is_cross and self.observer is not None
        if observed:  # a guidance pass: its maps are the observer's, not stored
            self.observer.observe(rows, pixels)
        source, targets = rows[:1], rows[1:]
        plan, i = self.plan, self.step
        if plan is not None and len(targets):
            if is_cross and plan.cross_window[:, i].any():
                mapped = torch.einsum("hpl,tlm->thpm", source[0], plan.mapper.to(probs.dtype))
                a = plan.alphas[:, None, None, :].to(probs.dtype)
                mixed = plan.equalizer[:, None, None, :].to(probs.dtype) * (a * mapped + (1 - a) * targets)
                w = plan.cross_window[:, i][:, None, None, :].to(probs.dtype)
                targets = w * mixed + (1 - w) * targets
            elif not is_cross:
                targets = source.expand_as(targets)
            if probs.requires_grad:  # layout guidance differentiates through it: keep softmax's output
                probs = probs.clone()
            probs[self.cond_rows] = torch.cat([source, targets])  # else in place: no copy of the whole map
        if is_cross and self.store and not observed:
            mean = probs[self.cond_rows].mean(dim=1).float()  # average over heads
            self.maps[pixels] = self.maps.get(pixels, 0) + mean
            self.counts[pixels] = self.counts.get(pixels, 0) + 1
        return probs

    # -- reading the store
    def resolutions(self) -> list[int]:
        """Side lengths (for a square latent; the latent's height otherwise) with stored maps."""
        h, w = self.latent_hw
        return sorted(int(round((p * h / w) ** 0.5)) for p in self.maps)

    def cross_maps(self, resolution: int | None = None) -> torch.Tensor:
        """[B, h, w, L] cross-attention per prompt and token, averaged over steps, layers and heads, at
        `resolution` (its height in cells), or over every stored resolution resized to the finest."""
        h, w = self.latent_hw
        grids = {}
        for pixels, total in self.maps.items():
            side_h = int(round((pixels * h / w) ** 0.5))
            grids[side_h] = (total / self.counts[pixels]).reshape(total.shape[0], side_h, pixels // side_h, -1)
        if not grids:
            raise RuntimeError("no cross-attention was stored")
        if resolution is not None:
            if resolution not in grids:
                from ..errors import InputError

                raise InputError(f"no cross-attention at {resolution}x{resolution}; this model has {sorted(grids)}.")
            return grids[resolution]
        finest = max(grids)
        resized = [F.interpolate(g.permute(0, 3, 1, 2), size=(finest, grids[finest].shape[2]), mode="bilinear",
                                 align_corners=False).permute(0, 2, 3, 1) for g in grids.values()]
        return torch.stack(resized).mean(0)


class ControlProcessor:
    """A diffusers attention processor: SDPA, or explicit softmax(QK^T / sqrt(d)) V when controlled."""

    def __init__(self, control: AttentionControl):
        self.control = control

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        spatial = hidden_states.ndim == 4
        if spatial:
            b, c, height, width = hidden_states.shape
            hidden_states = hidden_states.view(b, c, height * width).transpose(1, 2)
        batch, pixels, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, encoder_hidden_states.shape[1]
                                                         if encoder_hidden_states is not None else pixels, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        is_cross = encoder_hidden_states is not None
        context = encoder_hidden_states if is_cross else hidden_states
        if is_cross and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (x.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
        if getattr(attn, "norm_q", None) is not None:
            query = attn.norm_q(query)
        if getattr(attn, "norm_k", None) is not None:
            key = attn.norm_k(key)
        out = self.attend(query, key, value, attention_mask, attn.scale, is_cross, pixels)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if spatial:
            out = out.transpose(-1, -2).reshape(b, c, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


    def attend(self, query, key, value, attention_mask, scale: float, is_cross: bool, pixels: int) -> torch.Tensor:
        """[batch, heads, pixels, d]: the attention output of [batch, heads, *, d] queries, keys and values
        (editors that change which keys a query sees override this: `p2p.masactrl`, `p2p.pnp`)."""
        if self.control.needs(is_cross, pixels):
            scores = query @ key.transpose(-1, -2) * scale
            if attention_mask is not None:
                scores = scores + attention_mask
            probs = scores.softmax(dim=-1)
            del scores  # [batch, heads, pixels, keys]: at SDXL's 64 x 64 self-attention, 670 MB a row
            return self.control(probs, is_cross, pixels) @ value
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scale)


@contextmanager
def controlled(model, control: AttentionControl, processors: dict | None = None):
    """Install `control` on a CountedUNet's UNet for the duration of a call; the processors it had come back after.
    `processors`: {layer name: processor} for layers that an editor handles itself (ControlProcessor subclasses)."""
    unet = model.unet
    saved = unet.attn_processors
    unet.set_attn_processor({name: (processors or {}).get(name) or ControlProcessor(control) for name in saved})
    model.controller = control
    try:
        yield control
    finally:
        model.controller = None
        unet.set_attn_processor(saved)
