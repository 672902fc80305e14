"""LocalBlend (Hertz et al. 2023, sec. 3.2 "local editing"): only the edited words' region may change."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import InputError
from . import tokens as W
from .attention import AttentionControl


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

    @classmethod
    def from_controls(cls, tokenizer, prompts: Sequence[str], controls, control: AttentionControl,
                      steps: int) -> "LocalBlend | None":
        """The blend `controls` ask for (`Controls.blend`, `blend_exclude` and their settings), or None."""
        if not (controls.blend or controls.blend_exclude):
            return None
        return cls(tokenizer, prompts, controls.blend, control, steps, threshold=controls.blend_threshold,
                   start=controls.blend_start, resolution=controls.blend_resolution,
                   exclude_words=controls.blend_exclude, stop=controls.blend_stop)

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
