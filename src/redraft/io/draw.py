"""Pictures of results: grids of images with their captions, and per-word attention heat maps."""

from __future__ import annotations

import textwrap
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def grid(images: Sequence[Image.Image], captions: Sequence[str], *, cell: int = 256, columns: int | None = None) -> Image.Image:
    """Images side by side (resized to `cell` px, nearest-neighbour for small ones) with captions under them."""
    columns = columns or len(images)
    rows = -(-len(images) // columns)
    font = _font(max(11, cell // 18))
    wrap = max(12, cell // max(6, cell // 18 * 6 // 10))
    lines = [textwrap.wrap(c, wrap) or [""] for c in captions]
    text_h = (max(len(x) for x in lines) + 1) * (font.size + 3) if hasattr(font, "size") else 40
    canvas = Image.new("RGB", (columns * cell, rows * (cell + text_h)), "white")
    draw = ImageDraw.Draw(canvas)
    for k, (im, caption) in enumerate(zip(images, lines)):
        x, y = (k % columns) * cell, (k // columns) * (cell + text_h)
        resample = Image.Resampling.NEAREST if im.width * 2 <= cell else Image.Resampling.LANCZOS
        canvas.paste(im.convert("RGB").resize((cell, cell), resample), (x, y))
        for j, line in enumerate(caption):
            draw.text((x + 4, y + cell + 3 + j * (font.size + 3 if hasattr(font, "size") else 12)), line,
                      fill="black", font=font)
    return canvas


def heatmap(values: np.ndarray) -> np.ndarray:
    """[h, w] values -> RGB uint8 colours (normalised to [0, 1]; the 'inferno'-like ramp of matplotlib)."""
    import matplotlib

    v = values - values.min()
    v = v / max(float(v.max()), 1e-12)
    return (matplotlib.colormaps["inferno"](v)[..., :3] * 255).round().astype(np.uint8)


def attention_overlay(image: Image.Image, values: np.ndarray, alpha: float = 0.6, cell: int = 256) -> Image.Image:
    """A heat map of `values` [h, w] laid over the image."""
    base = image.convert("RGB").resize((cell, cell), Image.Resampling.BICUBIC)
    heat = Image.fromarray(heatmap(values)).resize((cell, cell), Image.Resampling.BICUBIC)
    return Image.blend(base, heat, alpha)


def word_maps(image: Image.Image, words: Sequence[str], maps: np.ndarray, cell: int = 256) -> Image.Image:
    """One heat map per word over the image, the word written under each."""
    return grid([image] + [attention_overlay(image, m, cell=cell) for m in maps], ["image", *words], cell=cell)
