"""What the editor returns: small dataclasses, nothing left behind on the `Editor`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from .p2p.attention import AttentionControl
from .p2p.region import Region
from .p2p.controls import Controls


@dataclass
class EditResult:
    """The images of one `Editor.edit` or `Editor.generate` call, and how they were made.

    images[0] is the source branch (an edit's reconstruction of the input, or generation's source
    prompt), images[k] the edit towards prompts[k]. It indexes and unpacks like that list of images:
    `source, edit = editor.edit(inv, target)`, `result[-1]` the last edit. `attention` is the cross-
    attention store of the run (maps per prompt: `Editor.word_maps(result, row=k)`); `blend_mask`
    [B, 1, h, w] is LocalBlend's last region (True: may change), None without LocalBlend. With a user
    mask, `region` holds it (`p2p.region.Region`) and the edits' pixels outside its band are the input's,
    so that `images[k]` is then no longer exactly the decoded `latents[k]`.
    """

    images: list[Image.Image]
    prompts: list[str]
    controls: Controls
    attention: AttentionControl = field(repr=False)
    latents: torch.Tensor = field(repr=False)  # [B, C, h, w], what `images` decode
    blend_mask: torch.Tensor | None = field(default=None, repr=False)
    unet_forward: int = 0  # UNet passes, one latent each (the floor of an edit of B prompts: B per step)
    unet_backward: int = 0
    seconds: float = 0.0
    region: "Region | None" = field(default=None, repr=False)  # the user's mask (`p2p.region`), None without one
    direct: bool = False  # the edits kept the source branch on the inversion's pivots (Direct Inversion)
    parts: list["EditResult"] = field(default_factory=list, repr=False)  # `joined`: the runs, each its own controls
    rows: list[list[int]] = field(default_factory=list, repr=False)  # `joined`: which edits each part made

    @classmethod
    def joined(cls, parts: list["EditResult"], rows: list[list[int]]) -> "EditResult":
        """One result of several runs of the same source (edits the model's recipe treats apart):
        part p made edits rows[p] (0-based among the edits). Images, prompts and latents are in the
        edits' order; `controls` is the first part's (`controls_of(k)` gives edit k's); the attention of
        edit k is its part's (`part_of`)."""
        order = sorted((k, p, j) for p, ks in enumerate(rows) for j, k in enumerate(ks))
        first = parts[0]
        images = [first.images[0], *(parts[p].images[j + 1] for _, p, j in order)]
        latents = torch.cat([first.latents[:1], *(parts[p].latents[j + 1:j + 2] for _, p, j in order)])
        return cls(images, [first.prompts[0], *(parts[p].prompts[j + 1] for _, p, j in order)], first.controls,
                   first.attention, latents, None, sum(r.unet_forward for r in parts),
                   sum(r.unet_backward for r in parts), sum(r.seconds for r in parts), first.region, first.direct,
                   parts, rows)

    def part_of(self, row: int) -> tuple["EditResult", int]:
        """The run that made image `row` (0: the source branch) and the row there."""
        if not self.parts or row == 0:
            return self, row
        p, ks = next((p, ks) for p, ks in enumerate(self.rows) if row - 1 in ks)
        return self.parts[p], ks.index(row - 1) + 1

    def controls_of(self, row: int) -> Controls:
        """The controls image `row` was made with."""
        return self.part_of(row)[0].controls

    def __getitem__(self, index):
        return self.images[index]

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[Image.Image]:
        return iter(self.images)

    def metadata(self, **more) -> dict:
        """What reproduces this result (prompts and controls), as JSON values; `more` adds to it."""
        per_edit = {"controls_per_edit": [self.controls_of(k).to_json() for k in range(1, len(self.images))],
                    "direct_per_edit": [self.part_of(k)[0].direct for k in range(1, len(self.images))]} if self.parts else {}
        return {"prompts": self.prompts, "controls": self.controls.to_json(), **per_edit, "direct": self.direct,
                "unet_forward": self.unet_forward, "seconds": round(self.seconds, 3), **more}


@dataclass
class WordMaps:
    """Per-word cross-attention over an image: maps[k] is word k's map (its tokens averaged), [h, w]."""

    words: list[str]
    maps: np.ndarray
    image: Image.Image
    resolution: int | None

    @classmethod
    def read(cls, tokenizer, source: "EditResult | AttentionControl", prompt: str | None = None,
             image: Image.Image | None = None, resolution: int | None = None, row: int = 0) -> "WordMaps":
        """One map per word of prompt `row`, from an `EditResult` (its prompt and image by default) or
        an attention store (its maps at `resolution`, None: all averaged)."""
        from .p2p.tokens import word_tokens

        if isinstance(source, EditResult):
            prompt = source.prompts[row] if prompt is None else prompt
            image = source.images[row] if image is None else image
            part, row = source.part_of(row)
            source = part.attention
        maps = source.cross_maps(resolution)[row]  # [h, w, L]
        per_word = torch.stack([maps[..., p].mean(-1) for p in word_tokens(tokenizer, prompt)]).cpu().numpy()
        return cls(prompt.split(), per_word, image, resolution)

    def draw(self, cell: int = 256) -> Image.Image:
        from .io.draw import word_maps

        return word_maps(self.image, self.words, self.maps, cell=cell)
