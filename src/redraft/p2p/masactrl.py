"""MasaCtrl: mutual self-attention control (Cao et al., ICCV 2023) for non-rigid edits (pose, shape).

Sec. 3.2 ("mutual self-attention"): from step S and transformer block L on, the edit's self-attention
queries read the *source* branch's keys and values in place of its own,

    Attention(Q_edit, K_source, V_source) = softmax(Q_edit K_source^T / sqrt(d)) V_source,

so the edit draws the layout its own prompt asks for (its queries, made early in sampling before S) with
the source's content: its colours, textures and background. The source's rows attend to themselves and
reconstruct it. Each half of the classifier-free-guidance batch reads its own half of the source.

Sec. 3.3 (mask-guided mutual self-attention): masks of the object, from the cross-attention of the words
`masactrl_mask` in each prompt at the previous step (averaged over heads and layers at one resolution,
summed over the words' tokens, min-max normalised, above `masactrl_mask_threshold`), keep the object and
the background apart: an edit's query reads the source's foreground keys and, separately, its background
keys, and the two outputs are composed with the edit's own mask, m_t * O_fg + (1 - m_t) * O_bg.

Layers are counted as the official code counts them: transformer blocks in the order a forward pass runs
them (SD 1.x/2.x: 16, L = 10 the decoder's last 6, at 32 x 32 and 64 x 64 for 512 px). Another UNet
starts at the same fraction of its own blocks, round(L * n / 16): the built-in model has 7 blocks, so
L = 10 starts at its block 4 (its decoder's last 3, at 8 x 8 and 16 x 16). The edit costs one pass per
branch and guidance half (4 per step for one edit with null-text inversion), as the plain edit does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import InputError
from . import tokens as W
from .attention import AttentionControl, ControlProcessor
from .blend import word_in
from .branches import active, latent_of_rows, self_attention_layers, source_rows

SD_LAYERS = 16  # transformer blocks of SD 1.x/2.x's UNet, the count MasaCtrl's L refers to


def start_layer(layer: int, n_layers: int) -> int:
    """MasaCtrl's start layer L (of SD's 16 blocks) for a UNet with `n_layers` blocks: the same fraction."""
    return int(math.floor(layer * n_layers / SD_LAYERS + 0.5))


class MutualSelfAttention:
    """The state MasaCtrl's processors share: the start step, the object's tokens per prompt (mask-guided
    variant) and the previous step's cross-attention maps, read from the `AttentionControl`'s store."""

    def __init__(self, control: AttentionControl, start_step: int, tokens: list[list[int]] | None = None,
                 threshold: float = 0.1):
        self.control, self.start_step, self.tokens, self.threshold = control, start_step, tokens, threshold
        self._step, self._sums, self.previous = None, {}, None  # previous: [B, pixels] object maps of the last step

    def begin(self) -> None:
        """At the first self-attention layer of each UNet call: a new step makes the maps stored since the
        last one the previous step's (sec. 3.3 reads the masks of step t from the maps of step t + 1)."""
        step = self.control.step
        if self.tokens is None or step is None or step == self._step:
            return
        maps, counts = self.control.maps, self.control.counts
        side_h, side_w = self.control.latent_hw
        target = max(side_h // 4, 8)  # SD at 512 px: 16 x 16, as the official code
        done = {p: (maps[p], counts[p]) for p in maps}
        fresh = {p: (s - self._sums[p][0], c - self._sums[p][1]) if p in self._sums else (s, c)
                 for p, (s, c) in done.items()}
        fresh = {p: s / c for p, (s, c) in fresh.items() if c}
        self.previous = None
        if fresh:
            pixels = min(fresh, key=lambda p: abs(math.sqrt(p * side_h / side_w) - target))
            per_latent = fresh[pixels]  # [B, pixels, L]
            self.previous = torch.stack([per_latent[b][:, t].sum(-1) for b, t in enumerate(self.tokens)])
        self._step, self._sums = step, done

    def masks(self, pixels: int) -> torch.Tensor | None:
        """[B, pixels] bool: each latent's object mask at a layer of `pixels` cells (None: no maps yet)."""
        if self.previous is None:
            return None
        h, w = self.control.latent_hw
        grid_h = int(round(math.sqrt(self.previous.shape[1] * h / w)))
        layer_h = int(round(math.sqrt(pixels * h / w)))
        m = self.previous.reshape(len(self.previous), 1, grid_h, -1)
        low = m.amin(dim=(2, 3), keepdim=True)
        m = (m - low) / (m.amax(dim=(2, 3), keepdim=True) - low).clamp_min(1e-8)
        m = F.interpolate(m, size=(layer_h, pixels // layer_h), mode="bilinear", align_corners=False)
        return m.flatten(1) > self.threshold


class MasaCtrlProcessor(ControlProcessor):
    """A self-attention layer under MasaCtrl (`mutual` None: a layer before L, which only marks the start
    of a UNet call when it is the first)."""

    def __init__(self, control: AttentionControl, state: MutualSelfAttention, mutual: bool, first: bool):
        super().__init__(control)
        self.state, self.mutual, self.first = state, mutual, first

    def attend(self, query, key, value, attention_mask, scale, is_cross, pixels):
        if self.first:
            self.state.begin()
        if not self.mutual or is_cross or not active(self.control, None, query) or \
                self.control.step < self.state.start_step:
            return super().attend(query, key, value, attention_mask, scale, is_cross, pixels)
        src = source_rows(self.control.cond_rows, len(query)).to(query.device)
        key, value = key[src], value[src]  # Q_edit with K_source, V_source (sec. 3.2)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scale)
        masks = self.state.masks(pixels) if self.state.tokens is not None else None
        if masks is None:
            return out
        latent = latent_of_rows(self.control.cond_rows, len(query)).to(query.device)
        fg_source = masks[0]
        if fg_source.all() or not fg_source.any():  # no object and background to keep apart
            return out
        zero = torch.zeros((), dtype=query.dtype, device=query.device)
        block = torch.tensor(float("-inf"), dtype=query.dtype, device=query.device)
        outs = []
        for keep in (fg_source, ~fg_source):  # foreground queries read foreground keys, background background
            bias = torch.where(keep, zero, block)[None, None, None, :]
            if attention_mask is not None:
                bias = bias + attention_mask
            outs.append(F.scaled_dot_product_attention(query, key, value, attn_mask=bias, scale=scale))
        m_t = masks[latent].to(query.dtype)[:, None, :, None]  # each row's own mask over its queries
        composed = m_t * outs[0] + (1 - m_t) * outs[1]
        edits = (latent != 0)[:, None, None, None]
        return torch.where(edits, composed, out)


def masactrl_processors(unet, control: AttentionControl, controls, tokenizer, prompts) -> dict:
    """{processor name: processor} for `controlled`: MasaCtrl on the self-attention layers from L on."""
    layers = self_attention_layers(unet)
    first = start_layer(controls.masactrl_layer, len(layers))
    tokens = None
    if controls.masactrl_mask:
        tokens = [object_tokens(tokenizer, p, controls.masactrl_mask) for p in prompts]
    state = MutualSelfAttention(control, controls.masactrl_step, tokens, controls.masactrl_mask_threshold)
    return {name: MasaCtrlProcessor(control, state, mutual=k >= first, first=k == 0) for k, name in enumerate(layers)}


def object_tokens(tokenizer, prompt: str, words) -> list[int]:
    """The token positions of the `words` in `prompt` (MasaCtrl's ref_token_idx / cur_token_idx)."""
    present = [w for w in words if word_in(tokenizer, prompt, w)]
    if not present:
        raise InputError(f"none of the masactrl_mask words {list(words)} is in the prompt {prompt!r}; name the "
                         "object's word in each prompt (e.g. --masactrl-mask circle --masactrl-mask square).")
    return [i for w in present for i in W.find_word(tokenizer, prompt, w)]
