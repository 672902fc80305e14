"""From prompts and `Controls` to an `EditPlan` (Prompt-to-Prompt, Hertz et al. 2023, sec. 3.2).

Word swap, refinement and re-weighting all become one token mapper, per-token mixing weights and a
re-weighting vector (see `attention.EditPlan`).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import InputError
from . import tokens as W
from .attention import EditPlan
from .blend import word_in
from .controls import KINDS, Controls


def skipped_steps(skip_steps: float, steps: int) -> int:
    """The step an edit starts at (`Controls.skip_steps` of `steps`)."""
    if not 0 <= skip_steps < 1:
        raise InputError(f"skip_steps is the fraction of the first steps an edit skips, 0 <= skip_steps < 1; got {skip_steps}.")
    return int(skip_steps * steps + 1e-9)  # rounded down, so at least one step is left


def self_max_side(latent_hw: tuple[int, int], inverted: bool) -> int:
    """The side of the largest self-attention layer P2P injects in when `self_max_resolution` is unset.

    The reference notebooks (reference.md, P2P): generation injects in layers of at most 16 x 16 cells
    (prompt-to-prompt_stable, `<= 16 ** 2`), real-image editing in layers of at most 32 x 32
    (null_text_w_ptp, `<= 32 ** 2`). On SD 1.x at 512 px (a 64 x 64 latent) these are a quarter and half
    of the latent's side, which is what redraft uses on every model, so that other latent sizes select
    the same levels of the UNet (the reference's absolute counts would select others: stated deviation).
    """
    h, w = latent_hw
    side = int(round((h * w) ** 0.5))
    return side // 2 if inverted else side // 4


def plan(tokenizer, prompts: Sequence[str], controls: Controls, steps: int, latent_hw: tuple[int, int],
         *, inverted: bool = True) -> EditPlan:
    """The EditPlan that turns source prompt 0 into each of prompts 1..B-1 (`inverted`: an edit of an
    inverted image, which sets the self-attention layers of `self_max_side`)."""
    source, targets = prompts[0], list(prompts[1:])
    L = tokenizer.model_max_length
    kind = controls.kind
    if kind is not None and kind not in KINDS:
        raise InputError(f"unknown edit kind {kind!r}; choose one of {', '.join(KINDS)} (or leave it unset).")
    for word in controls.reweight:  # each re-weighted word must be in some target; it applies where it is
        if not any(word_in(tokenizer, t, word) for t in targets):
            W.find_word(tokenizer, targets[0], word)  # raises the error that names the prompt's words
    mappers, alphas, equalizers, windows = [], [], [], []
    for target in targets:
        k = kind or W.edit_kind(tokenizer, source, target)
        if k == "refine":
            index, a = W.refinement_mapper(tokenizer, source, target, L)
            mapper = F.one_hot(index, L).T.float()  # column t is one-hot at the source token aligned to t
        elif k == "replace":
            mapper, a = W.replacement_mapper(tokenizer, source, target, L), torch.ones(L)
        else:  # reweight: the same words, so the identity
            if len(W.word_tokens(tokenizer, source)) != len(W.word_tokens(tokenizer, target)):
                raise InputError("a pure re-weighting needs the target prompt to have the source's words; "
                                 "to change words too, leave kind unset (or use replace / refine).")
            mapper, a = W.replacement_mapper(tokenizer, source, target, L), torch.ones(L)
        mappers.append(mapper)
        alphas.append(a)
        weights = {w: f for w, f in controls.reweight.items() if word_in(tokenizer, target, w)}
        equalizers.append(W.reweight_vector(tokenizer, target, weights, L))
        windows.append(W.step_windows(controls.cross_replace_steps, steps, tokenizer, target, L))
    self_window = W.step_window(controls.self_replace_steps, steps)
    side = controls.self_max_resolution
    if side is not None and side < 0:
        raise InputError(f"self_max_resolution is a layer's side in pixels (0 or more, or None for P2P's rule); got {side}.")
    side = self_max_side(latent_hw, inverted) if side is None else side
    return EditPlan(torch.stack(mappers), torch.stack(alphas), torch.stack(equalizers), torch.stack(windows),
                    self_window, self_max_pixels=side * side)
