"""Region edits: a user's mask confines every edit, and what lies outside it stays as it was.

Two stages (docs/region-edits.md):

1. `LatentBlend`, at every step (Blended Latent Diffusion, Avrahami et al., SIGGRAPH 2023 / ACM TOG 42(4),
   sec. 4.1, Alg. 1): after step i, each edit's latent outside the mask is replaced by the source's latent
   at that step, z_edit <- m * z_edit + (1 - m) * z_src, with the mask m brought to the latent's size by
   area averaging (a cell's share of may-change pixels), so that cells on the mask's edge are mixed and no
   seam appears. The source latent is the inversion's pivot (an edit of an inverted image) or the source
   branch, row 0 (generation). It runs after LocalBlend, so the user's mask bounds LocalBlend's region.
2. `keep_pixels`, once at the end (`keep_outside="pixels"`, the default): the decoded edit is composited
   over the input image with the mask grown by `grow` pixels and feathered over `feather` more, so the
   pixels outside that band are the input's exactly, not its VAE round trip (Blended Latent Diffusion's
   sec. 4.2 does the same with a plain mask). `keep_outside="latents"` stops after stage 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..checks import finite
from ..errors import InputError
from ..io.mask import load_mask

KEEP_OUTSIDE = ("pixels", "latents")
# The pixel band: not grown beyond the feather, which reaches a quarter of a latent cell past the mask (1 px
# on the 64 px shapes model, 2 on SD); chosen on validation scenes (`redraft bench shapes --masks --seed 11`).
GROW_CELLS, FEATHER_CELLS = 0.0, 0.25


def check_keep_outside(keep_outside: str) -> str:
    if keep_outside not in KEEP_OUTSIDE:
        raise InputError(f"keep_outside is 'pixels' (outside the mask: the input's own pixels) or 'latents' "
                         f"(the latent blend only); got {keep_outside!r}.")
    return keep_outside


def stop_step(mask_stop: float, steps: int) -> int:
    """The step at which the latent blend ends: round(mask_stop * steps) (1: it blends after every step)."""
    return round(finite("mask_stop", mask_stop, 0, 1, fix="1 blends at every step (Blended Latent Diffusion)") * steps)


def latent_mask(mask: np.ndarray, latent_hw: tuple[int, int], device=None) -> torch.Tensor:
    """[1, 1, h, w]: the pixel mask [H, W] area-averaged to the latent's cells (Blended Latent Diffusion
    downsamples the mask to the latent; the average keeps a soft edge instead of a staircase)."""
    m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    return F.adaptive_avg_pool2d(m, latent_hw).to(device)


class LatentBlend:
    """Blended Latent Diffusion's per-step blend (Avrahami et al. 2023, Alg. 1 line 6): a `denoise`
    callback that sets every edit row (1, 2, ...) to m * z_edit + (1 - m) * z_src after step i, where
    z_src = `source(i, z)`; row 0, the source branch, is left alone."""

    def __init__(self, mask: torch.Tensor, source: Callable[[int, torch.Tensor], torch.Tensor], stop: int | None = None):
        self.mask, self.source, self.stop = mask, source, stop

    @classmethod
    def on_pivots(cls, mask: torch.Tensor, pivots: torch.Tensor, stop: int | None = None) -> "LatentBlend":
        """The source at step i is the inversion's pivot z*_{i+1} (an edit of an inverted image)."""
        return cls(mask, lambda i, z: pivots[i + 1][None], stop)

    @classmethod
    def on_source_branch(cls, mask: torch.Tensor, stop: int | None = None) -> "LatentBlend":
        """The source at step i is row 0 after that step (generation, which has no pivots)."""
        return cls(mask, lambda i, z: z[:1], stop)

    def __call__(self, i: int, z: torch.Tensor) -> torch.Tensor | None:
        if self.stop is not None and i >= self.stop:
            return None
        source = self.source(i, z)
        z = z.clone()
        z[1:] = source + self.mask * (z[1:] - source)
        return z


def band(mask: np.ndarray, grow: int, feather: int) -> np.ndarray:
    """The pixel-keep weight [H, W] in [0, 1]: the mask grown by `grow` px (a max filter), then
    feathered by a box blur over `feather` px, and never below the mask itself; 0 (the input's pixels
    exactly) farther than grow + feather from the mask."""
    m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    if grow > 0:
        m = F.max_pool2d(m, 2 * grow + 1, stride=1, padding=grow)
    if feather > 0:
        k = 2 * feather + 1
        m = F.avg_pool2d(F.pad(m, (feather,) * 4, mode="replicate"), k, stride=1)
    out = torch.maximum(m[0, 0], torch.from_numpy(np.asarray(mask, dtype=np.float32))).clamp(0, 1).numpy()
    out[out < 1e-6] = 0.0
    return out


def default_band(vae_scale_factor: int) -> tuple[int, int]:
    """(grow, feather) in pixels for a model whose latent cell is `vae_scale_factor` px wide."""
    return round(GROW_CELLS * vae_scale_factor), round(FEATHER_CELLS * vae_scale_factor)


def keep_pixels(edit: Image.Image, original: np.ndarray | Image.Image, weight: np.ndarray) -> Image.Image:
    """weight * edit + (1 - weight) * original, in uint8: where weight is 0 the original's pixels exactly."""
    e = np.asarray(edit, dtype=np.float32)
    o = np.asarray(original, dtype=np.float32)
    if e.shape != o.shape:
        raise InputError(f"the edit is {e.shape[1]}x{e.shape[0]} but the input image is {o.shape[1]}x{o.shape[0]}.")
    w = weight[..., None]
    out = np.where(w > 0, w * e + (1 - w) * o, o)
    return Image.fromarray(np.clip(out.round(), 0, 255).astype(np.uint8))


@dataclass
class Region:
    """What a region edit used: the user's mask at the image's size, its latent-sized blend weight, the
    pixel-keep weight (None with keep_outside="latents") and the fraction of the steps blended."""

    mask: np.ndarray  # [H, W] in [0, 1], 1 = may change
    latent: torch.Tensor  # [1, 1, h, w]
    keep: np.ndarray | None  # [H, W]: the share of the edit in the final pixels
    keep_outside: str = "pixels"
    mask_stop: float = 1.0  # the latent blend ran for this fraction of the steps

    @classmethod
    def make(cls, mask: np.ndarray, latent_hw: tuple[int, int], vae_scale_factor: int, keep_outside: str,
             device=None, mask_stop: float = 1.0) -> "Region":
        keep_outside = check_keep_outside(keep_outside)
        keep = band(mask, *default_band(vae_scale_factor)) if keep_outside == "pixels" else None
        return cls(mask, latent_mask(mask, latent_hw, device), keep, keep_outside, mask_stop)

    @classmethod
    def of(cls, mask, keep_outside: str, image_hw: tuple[int, int], latent_hw: tuple[int, int],
           vae_scale_factor: int, device=None, mask_stop: float = 1.0) -> "Region | None":
        """The user's mask (`io.mask.MaskLike`, None: no region) at the image's size, made into a Region."""
        check_keep_outside(keep_outside)
        if mask is None:
            return None
        pixels = load_mask(mask, (image_hw[1], image_hw[0]))
        return cls.make(pixels, latent_hw, vae_scale_factor, keep_outside, device, mask_stop)

    def apply(self, result, original: np.ndarray | Image.Image):
        """An `EditResult` with its edits' pixels outside the band from `original`, and this region on it."""
        result.images, result.region = self.finish(result.images, original), self
        return result

    def finish(self, images: list[Image.Image], original: np.ndarray | Image.Image) -> list[Image.Image]:
        """[source branch, edits...] with each edit's pixels outside the band taken from `original`."""
        if self.keep is None:
            return list(images)
        return [images[0], *(keep_pixels(im, original, self.keep) for im in images[1:])]
