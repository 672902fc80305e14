"""Prompt-to-Prompt editing controls (Hertz et al., ICLR 2023): from prompts and options to an `EditPlan`.

Word swap, refinement and re-weighting all become one token mapper, per-token mixing weights and a
re-weighting vector (see `attention.EditPlan`); `LocalBlend` keeps the latents outside the edited
words' region equal to the source's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from . import tokens as W
from .attention import EditPlan
from .blend import word_in
from ..errors import InputError

KINDS = ("replace", "refine", "reweight")


@dataclass
class Controls:
    """What a user can set on an edit (defaults: the P2P paper's).

    kind: "replace" (word swap), "refine" (words added or removed), "reweight", or None to choose
    from the prompts. cross_replace_steps / self_replace_steps: a fraction of the steps, a (start,
    end) pair of fractions, or (cross only) a dict {word: fraction or pair, "default_": ...}.
    reweight: {word: factor} applied to the target prompts (negative allowed). blend: words whose
    attention marks the region that may change (LocalBlend), with its threshold, start and stop
    (fractions of the steps: P2P blends from 0.2 to the end; steps left unblended after `blend_stop`
    let the model mend the seam between kept and changed latents); blend_exclude: words whose region
    is kept from the source, taken out of the blend words' region or, without blend words, out of the
    whole image (P2P's substruct_words).
    self_max_resolution: self-attention is injected in layers whose side is at most this
    (None: P2P's rule, half the latent's side: 32 for SD's 64 x 64 latents); a model whose objects span
    a few latent cells (the shapes model) keeps its layout only with the latent's full side.
    layout_guidance: the step size (latent units) of layout guidance (`redraft.guidance`), which moves
    each edit's latent so that its own cross-attention maps agree with the source's, at the steps of
    `layout_guidance_steps` (a fraction or a (start, end) pair); 0 (the default, as in P2P) turns it off.
    skip_steps: the fraction of the first steps the edit skips: every branch starts from the
    inversion's pivot at that step instead of x_T (edit-friendly DDPM inversion's T_skip,
    Huberman-Spiegelglas et al. 2024, sec. 4; SDEdit's strength is 1 - skip_steps). The injection
    windows stay fractions of all the steps. 0 (the default, as in P2P) starts from x_T.
    feature_replace_steps: the fraction of the first steps (or a (start, end) pair) in which the source's
    output of the UNet blocks `feature_layers` replaces the edits' (`redraft.features`: Plug-and-Play's
    feature injection, Tumanyan et al. 2023, tau_f; its layer is SD's `up_blocks.1.resnets.1`). It keeps
    objects in place; 0 (the default, as in P2P) turns it off.
    renoise_step: the fraction of the steps after which the edits take one stochastic step (`Renoise`):
    a share `renoise_strength` of the noise that points them to the next step's level is fresh. The
    predicted noise of a deterministic step carries the layout the edit has drawn so far, the source's
    object included; a change of size keeps its place best when the injection windows end there and the
    edit then finishes from its own prediction (docs/shapes-model.md). None (the default, as in P2P)
    keeps every step deterministic. renoise_seed: the seed of the fresh noise.
    """

    kind: str | None = None
    cross_replace_steps: float | tuple | dict = 0.8
    self_replace_steps: float | tuple = 0.4
    reweight: dict[str, float] = field(default_factory=dict)
    blend: Sequence[str] = ()
    blend_threshold: float = 0.3
    blend_start: float = 0.2
    blend_stop: float = 1.0
    blend_resolution: int | None = None
    blend_exclude: Sequence[str] = ()
    self_max_resolution: int | None = None
    layout_guidance: float = 0.0
    layout_guidance_steps: float | tuple = 0.5
    skip_steps: float = 0.0
    feature_replace_steps: float | tuple = 0.0
    feature_layers: Sequence[str] = ("up_blocks.1.resnets.1",)
    renoise_step: float | None = None
    renoise_strength: float = 1.0
    renoise_seed: int = 0


def skipped_steps(skip_steps: float, steps: int) -> int:
    """The step an edit starts at (`Controls.skip_steps` of `steps`)."""
    if not 0 <= skip_steps < 1:
        raise InputError(f"skip_steps is the fraction of the first steps an edit skips, 0 <= skip_steps < 1; got {skip_steps}.")
    return int(skip_steps * steps + 1e-9)  # rounded down, so at least one step is left


def plan(tokenizer, prompts: Sequence[str], controls: Controls, steps: int, latent_hw: tuple[int, int]) -> EditPlan:
    """The EditPlan that turns source prompt 0 into each of prompts 1..B-1."""
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
    h, w = latent_hw
    side = controls.self_max_resolution
    if side is not None and side < 0:
        raise InputError(f"self_max_resolution is a layer's side in pixels (0 or more, or None for P2P's rule); got {side}.")
    self_max_pixels = (h * w) // 4 if side is None else side * side
    return EditPlan(torch.stack(mappers), torch.stack(alphas), torch.stack(equalizers), torch.stack(windows),
                    self_window, self_max_pixels=self_max_pixels)
