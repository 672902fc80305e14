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

from . import words as W
from .attention import AttentionControl, EditPlan
from .errors import InputError

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


class Renoise:
    """`noise(i, eps)` for `sampling.denoise`: at step `at`, the edits' predicted noise eps becomes
    sqrt(1 - s^2) eps + s xi with fresh xi ~ N(0, I) and s = `strength`. That step is then DDIM eq. 12
    with sigma_t = s sqrt(1 - alpha_{t-1}) (Song et al. 2021; s = 1: the predicted x0 noised afresh).
    The source (row 0) keeps its own eps, so it still reconstructs. Every other step stays deterministic."""

    def __init__(self, renoise_step: float, steps: int, strength: float = 1.0, seed: int = 0, start: int = 0):
        if not 0 <= renoise_step < 1:
            raise InputError(f"renoise_step is the fraction of the steps after which the edits are re-noised once, "
                             f"0 <= renoise_step < 1 (None: never); got {renoise_step}.")
        if not 0 <= strength <= 1:
            raise InputError(f"renoise_strength is the share of fresh noise in the re-noised step, 0 to 1; got {strength}.")
        self.at, self.strength, self.seed = int(renoise_step * steps + 1e-9), strength, seed
        if self.at < start:
            raise InputError(f"renoise_step {renoise_step} is step {self.at}, before the edit's first step {start} "
                             f"(skip_steps): re-noise at a later step, or skip fewer.")

    def __call__(self, i: int, eps: torch.Tensor) -> torch.Tensor:
        if i != self.at:
            return eps
        fresh = torch.randn(eps[1:].shape, generator=torch.Generator().manual_seed(self.seed)).to(eps)  # drawn on the CPU
        s = self.strength
        return torch.cat([eps[:1], (1 - s * s) ** 0.5 * eps[1:] + s * fresh])


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


def default_resolution(control: AttentionControl) -> int:
    """The map resolution P2P uses: 1/4 of the latent (16 for SD's 64), but at least 8 cells when the
    model has it (the shapes model's 16 x 16 latents would otherwise give 4 x 4 maps)."""
    available = control.resolutions()
    wanted = max(control.latent_hw[0] // 4, min(8, max(available)))
    return min(available, key=lambda r: (abs(r - wanted), -r))


class LocalBlend:
    """P2P's local blending (reference.md): outside the blend words' attention region, every edit's
    latent is reset to the source's, from `start` of the steps until `stop` (P2P: 0.2 to the end).
    The region of edit b is the union of the source words' region in prompt 0 and the target words'
    region in prompt b, each from the stored cross-attention (averaged over layers and heads), 3x3
    max-pooled, resized to the latent, normalised by its max and thresholded. `exclude_words` (the P2P
    code's `substruct_words`) take their region, found the same way but not pooled, out of the mask;
    with no blend words the mask is everything but that region (excluding the object's noun changes
    the background and keeps the object). Works for any number of target prompts."""

    def __init__(self, tokenizer, prompts: Sequence[str], blend_words: Sequence[str], control: AttentionControl,
                 steps: int, threshold: float = 0.3, start: float = 0.2, resolution: int | None = None,
                 exclude_words: Sequence[str] = (), stop: float = 1.0):
        self.tokens = _word_tokens_per_prompt(tokenizer, prompts, blend_words, "blend")
        self.exclude = _word_tokens_per_prompt(tokenizer, prompts, exclude_words, "excluded blend") \
            if exclude_words else None
        self.control, self.threshold, self.resolution = control, threshold, resolution
        if not 0 <= start <= stop <= 1:
            raise InputError(f"blend_start and blend_stop are fractions of the steps, 0 <= start <= stop <= 1; "
                             f"got {start} and {stop}.")
        self.start, self.stop = int(start * steps), int(round(stop * steps))
        self.mask: torch.Tensor | None = None

    def region(self, maps: torch.Tensor, tokens: list[list[int]], size, pool: bool) -> torch.Tensor:
        """[B, 1, h, w] booleans: where prompt b's tokens, or the source's, attend above the threshold."""
        region = torch.stack([maps[b, :, :, t].sum(-1) if t else torch.zeros_like(maps[b, :, :, 0])
                              for b, t in enumerate(tokens)])[:, None]
        if pool:
            region = F.max_pool2d(region, 3, stride=1, padding=1)
        region = F.interpolate(region, size=size, mode="bilinear", align_corners=False)
        region = region / region.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
        inside = region > self.threshold
        return inside[:1] | inside

    def __call__(self, i: int, z: torch.Tensor) -> torch.Tensor | None:
        if not self.start <= i < self.stop:
            return None
        resolution = self.resolution or default_resolution(self.control)
        maps = self.control.cross_maps(resolution).to(z.device)  # [B, h, w, L]
        if any(self.tokens):
            self.mask = self.region(maps, self.tokens, z.shape[-2:], pool=True)
        else:
            self.mask = torch.ones((len(z), 1, *z.shape[-2:]), dtype=torch.bool, device=z.device)
        if self.exclude is not None:
            self.mask = self.mask & ~self.region(maps, self.exclude, z.shape[-2:], pool=False)
        return z[:1] + self.mask * (z - z[:1])


def _word_tokens_per_prompt(tokenizer, prompts: Sequence[str], words: Sequence[str], what: str) -> list[list[int]]:
    """For each prompt, the token positions of those of `words` it contains; each word must be in one."""
    missing = [w for w in words if not any(word_in(tokenizer, p, w) for p in prompts)]
    if missing:
        raise InputError(f"{what} word(s) {missing} appear in none of the prompts {list(prompts)}; "
                         "use words of the source or target prompt.")
    return [[t for word in words if word_in(tokenizer, p, word) for t in W.find_word(tokenizer, p, word)]
            for p in prompts]


def word_in(tokenizer, prompt: str, word: str) -> bool:
    try:
        W.find_word(tokenizer, prompt, word)
        return True
    except InputError:
        return False
