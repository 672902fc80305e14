"""What the editors that borrow the source branch's attention (MasaCtrl, Plug-and-Play) need to know of
the UNet and of the batch: its self-attention layers in the order they run, and each row's source row.

The sampling loop lays a batch out as [unconditional rows that need a pass..., conditional rows of every
latent...] (`core.sampling.guided_output`), latent 0 being the source branch; `AttentionControl.cond_rows`
says where the conditional rows are.
"""

from __future__ import annotations

import re

import torch

_PART = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}


def self_attention_layers(unet) -> list[str]:
    """The processor names of the UNet's self-attention layers (`attn1`, one per transformer block) in the
    order a forward pass runs them: encoder, middle, decoder (SD 1.x/2.x: 6 + 1 + 9 = 16)."""
    names = [n for n in unet.attn_processors if n.split(".")[-2] == "attn1"]

    def order(name: str):
        return _PART.get(name.split(".")[0], 3), [int(x) for x in re.findall(r"\.(\d+)(?=\.)", name)]

    return sorted(names, key=order)


def decoder_layers(unet) -> list[str]:
    """The decoder's self-attention layers (SD: 9), in the order they run."""
    return [n for n in self_attention_layers(unet) if n.startswith("up_blocks.")]


def source_rows(cond: slice, batch: int) -> torch.Tensor:
    """[batch] long: for each row, the row of the source branch in the same half of the batch (itself for
    the source's rows). Unconditional rows take the source's unconditional row when every latent has one,
    else the source's conditional row (the source needs no unconditional pass when its null embedding is
    its prompt: negative-prompt inversion)."""
    rows = torch.arange(batch)
    rows[cond] = cond.start
    uncond, latents = cond.start, cond.stop - cond.start
    if uncond:
        rows[:uncond] = 0 if uncond == latents else cond.start
    return rows


def latent_of_rows(cond: slice, batch: int) -> torch.Tensor:
    """[batch] long: the latent (0 the source, 1.. the edits) each row belongs to. Unconditional rows are
    those of the last latents when fewer than all have one (the source's is the one skipped)."""
    rows = torch.arange(batch)
    latents = cond.stop - cond.start
    rows[cond] = torch.arange(latents)
    if cond.start:
        rows[:cond.start] = torch.arange(cond.start) + (latents - cond.start)
    return rows


def active(control, window: torch.Tensor | None, query: torch.Tensor) -> bool:
    """Whether an editor acts in this call: a sampling step (not a replay outside the loop) inside
    `window` (None: every step), at least one edit beside the source, and no gradient pass (layout
    guidance measures the edits' own attention)."""
    step, cond = control.step, control.cond_rows
    return step is not None and (window is None or bool(window[step])) and cond.stop - cond.start >= 2 \
        and not query.requires_grad
