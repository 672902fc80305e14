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

    # -- called by the processor with the conditional rows' probabilities [rows, heads, pixels, keys]
    def __call__(self, rows: torch.Tensor, is_cross: bool, pixels: int) -> torch.Tensor:
        """The conditional rows' attention probabilities (`cond_rows` of the batch; row 0 the source),
        edited by the plan; cross-attention is stored (head-averaged) or shown to the observer."""
        observed = is_cross and self.observer is not None
        if observed:  # a guidance pass: its maps are the observer's, not stored
            self.observer.observe(rows, pixels)
        source, targets = rows[:1], rows[1:]
        plan, i = self.plan, self.step
        if plan is not None and len(targets):
            if is_cross and plan.cross_window[:, i].any():
                mapped = torch.einsum("hpl,tlm->thpm", source[0], plan.mapper.to(rows.dtype))
                a = plan.alphas[:, None, None, :].to(rows.dtype)
                mixed = plan.equalizer[:, None, None, :].to(rows.dtype) * (a * mapped + (1 - a) * targets)
                w = plan.cross_window[:, i][:, None, None, :].to(rows.dtype)
                targets = w * mixed + (1 - w) * targets
            elif not is_cross:
                targets = source.expand_as(targets)
            if rows.requires_grad:  # layout guidance differentiates through it: keep softmax's output
                rows = rows.clone()
            rows[1:] = targets  # else in place: no copy of the whole map
        if is_cross and self.store and not observed:
            mean = rows.mean(dim=1).float()  # average over heads
            self.maps[pixels] = self.maps.get(pixels, 0) + mean
            self.counts[pixels] = self.counts.get(pixels, 0) + 1
        return rows

    def shares_self(self, is_cross: bool, pixels: int) -> bool:
        """Whether this self-attention layer's targets take the source's probabilities in this call (P2P's
        self-attention injection): then only the source's map is computed (`ControlProcessor.attend`)."""
        return not is_cross and self.needs(is_cross, pixels) and self.plan is not None

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
        (editors that change which keys a query sees override this: `p2p.masactrl`, `p2p.pnp`).

        Fused SDPA wherever no map is read: for every layer the controller does not need, and for the
        unconditional rows of those it does (it reads and edits only the conditional rows). In a
        self-attention layer whose targets take the source's map, only the source's map is computed,
        a few heads at a time, and every conditional row reads its values through it."""
        control = self.control
        if not control.needs(is_cross, pixels):
            return F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scale)
        rows = range(len(query))[control.cond_rows]
        cond = slice(rows.start, rows.stop)
        mask = attention_mask[cond] if attention_mask is not None and len(attention_mask) == len(query) else attention_mask
        if control.shares_self(is_cross, pixels):
            out = shared_source_attention(query[cond], key[cond.start], value[cond], mask, scale)
        else:
            scores = query[cond] @ key[cond].transpose(-1, -2) * scale
            if mask is not None:
                scores = scores + mask
            probs = scores.softmax(dim=-1)
            del scores
            out = control(probs, is_cross, pixels) @ value[cond]
        if len(rows) == len(query):
            return out
        parts = [(slice(0, cond.start), True), (cond, False), (slice(cond.stop, len(query)), True)]
        return torch.cat([F.scaled_dot_product_attention(query[r], key[r], value[r], scale=scale, attn_mask=(
            attention_mask[r] if attention_mask is not None and len(attention_mask) == len(query) else attention_mask))
            if bare else out for r, bare in parts if r.stop > r.start])


MAP_ELEMENTS = 2 ** 26  # the largest [heads, pixels, pixels] chunk of a self-attention map held at once (256 MB fp32)


def shared_source_attention(query: torch.Tensor, source_key: torch.Tensor, value: torch.Tensor,
                            mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """P2P's self-attention injection, softmax(Q_s K_s^T) V_r for every conditional row r ([rows, heads,
    pixels, d]; row 0 the source, whose queries make the map): the rows' own maps are never computed and
    the source's is made a few heads at a time (`MAP_ELEMENTS`), not whole (at SDXL's 64 x 64 layers, 670 MB
    a row)."""
    heads, pixels = query.shape[1], query.shape[2]
    chunk = max(1, MAP_ELEMENTS // (pixels * source_key.shape[-2]))
    outs = []
    for h in range(0, heads, chunk):
        scores = query[0, h:h + chunk] @ source_key[h:h + chunk].transpose(-1, -2) * scale
        if mask is not None:
            scores = scores + (mask[0, h:h + chunk] if mask.dim() == 4 else mask)
        outs.append(scores.softmax(dim=-1) @ value[:, h:h + chunk])
    return torch.cat(outs, dim=1)


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
