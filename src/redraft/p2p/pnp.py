"""Plug-and-Play (Tumanyan, Geyer, Bagon, Dekel, CVPR 2023): the source's structure injected into the edit.

Sec. 4.1: the output of one ResNet block of the decoder (SD's "layer 4", `up_blocks.1.resnets.1`) carries
the image's spatial structure; `p2p.features` copies the source's onto the edits' for the first tau_f of
the steps (`Controls.pnp_f_t`, official 0.8). Sec. 4.2: the self-attention *affinities* of the decoder
carry how its parts relate; the source's queries and keys replace the edits' in the decoder's
self-attention layers but the first of the lowest resolution (SD: 8 of 9, "decoder layers 4-11") for the
first tau_A of the steps (`pnp_attn_t`, official 0.5), while the edits keep their own values:

    A_edit = softmax(Q_source K_source^T / sqrt(d)),   out_edit = A_edit V_edit.

Each half of the guidance batch takes its own half of the source (`branches.source_rows`). The official
port's source branch is the inversion's latent at every step; with `direct=True` (Direct Inversion) the
source branch here is that too, otherwise it is the source's regeneration from x_T. The edit costs one
pass per branch and guidance half (3 per step for one edit with negative-prompt inversion, as the
port's [source, uncond, cond]; 4 with null-text inversion).
"""

from __future__ import annotations

import torch

from . import tokens as W
from .attention import AttentionControl, ControlProcessor
from .branches import active, decoder_layers, source_rows


class QueryKeyInjection(ControlProcessor):
    """A decoder self-attention layer under Plug-and-Play: the source's Q and K in the edits' rows (sec. 4.2)."""

    def __init__(self, control: AttentionControl, window: torch.Tensor):
        super().__init__(control)
        self.window = window

    def attend(self, query, key, value, attention_mask, scale, is_cross, pixels):
        if not is_cross and active(self.control, self.window, query):
            src = source_rows(self.control.cond_rows, len(query)).to(query.device)
            query, key = query[src], key[src]
        return super().attend(query, key, value, attention_mask, scale, is_cross, pixels)


def injection_layers(unet) -> list[str]:
    """PnP's self-attention layers: the decoder's, but its first (SD: up_blocks.1.attentions.1 and .2, and
    every one of up_blocks.2 and .3)."""
    return decoder_layers(unet)[1:]


def pnp_processors(unet, control: AttentionControl, controls, steps: int) -> dict:
    """{processor name: processor} for `controlled`: Q/K injection for the first `pnp_attn_t` of the steps."""
    window = W.step_window(controls.pnp_attn_t, steps, "pnp_attn_t")
    processor = QueryKeyInjection(control, window)
    return {name: processor for name in injection_layers(unet)}
