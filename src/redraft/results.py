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

    def __getitem__(self, index):
        return self.images[index]

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[Image.Image]:
        return iter(self.images)

    def metadata(self, **more) -> dict:
        """What reproduces this result (prompts and controls), as JSON values; `more` adds to it."""
        return {"prompts": self.prompts, "controls": self.controls.to_json(),
                "unet_forward": self.unet_forward, "seconds": round(self.seconds, 3), **more}


@dataclass
class WordMaps:
    """Per-word cross-attention over an image: maps[k] is word k's map (its tokens averaged), [h, w]."""

    words: list[str]
    maps: np.ndarray
    image: Image.Image
    resolution: int | None

    def draw(self, cell: int = 256) -> Image.Image:
        from .io.draw import word_maps

        return word_maps(self.image, self.words, self.maps, cell=cell)
