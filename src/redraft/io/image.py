"""Images in and out: any file, mode or size in; model-sized tensors in [-1, 1]; PIL images out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputError

ImageLike = str | Path | Image.Image | np.ndarray | torch.Tensor


def load_image(image: ImageLike) -> Image.Image:
    """An RGB PIL image from a path, a PIL image or an array (HxW, HxWx3 or HxWx4; uint8 or floats in [0, 1]).

    EXIF orientation is applied; transparency is composited over white; palette, grayscale and
    16-bit images are converted.
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise InputError(f"{path}: no such file; give the path of an image (PNG, JPEG, WebP, ...).")
        try:
            with Image.open(path) as im:
                pil = ImageOps.exif_transpose(im)  # a loaded, upright copy
        except (UnidentifiedImageError, OSError) as e:
            raise InputError(f"{path} is not an image that can be read ({e}); give a PNG, JPEG or WebP file.") from None
    elif isinstance(image, Image.Image):
        pil = ImageOps.exif_transpose(image)
    elif isinstance(image, (np.ndarray, torch.Tensor)):
        if isinstance(image, torch.Tensor):
            image = image.detach().cpu()
            if image.is_floating_point():
                image = image.float()  # numpy has no bfloat16
        pil = _from_array(np.asarray(image))
    else:
        raise InputError(f"cannot read an image from a {type(image).__name__}; give a path, a PIL image or an array.")
    return _to_rgb(pil)


def _from_array(a: np.ndarray) -> Image.Image:
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = a.transpose(1, 2, 0)  # channels first
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)) or a.size == 0:
        raise InputError(f"an image array must be HxW, HxWx3 or HxWx4; got shape {a.shape}.")
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.floating):
            raise InputError(f"an image array must be uint8 or floats in [0, 1]; got {a.dtype}.")
        a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
    return Image.fromarray(a)


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode in ("RGB", "L") and "transparency" in im.info):
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im).convert("RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)  # 16-bit samples: 0..65535 -> 0..255, not stretched to the image's max
        im = Image.fromarray((np.clip(a, 0, 65535) / 257).round().astype(np.uint8))
    return im.convert("RGB")


def fit(image: Image.Image, size: int, *, keep_aspect: bool = False, multiple: int = 8) -> Image.Image:
    """Centre-crop to a square and resize to `size` (the model's native resolution).

    With `keep_aspect`, keep the aspect ratio instead: scale to about size x size pixels in all,
    each side a multiple of `multiple` (the VAE factor, so that latents have whole cells).
    """
    w, h = image.size
    if keep_aspect:
        scale = (size * size / (w * h)) ** 0.5
        tw = max(multiple, round(w * scale / multiple) * multiple)
        th = max(multiple, round(h * scale / multiple) * multiple)
        return ImageOps.fit(image, (tw, th), Image.Resampling.LANCZOS)
    return ImageOps.fit(image, (size, size), Image.Resampling.LANCZOS)


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL images of one size -> [B, 3, H, W] in [-1, 1]."""
    a = np.stack([np.asarray(im, dtype=np.float32) for im in images])
    return torch.from_numpy(a).permute(0, 3, 1, 2) / 127.5 - 1


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3]."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def to_pil(x: torch.Tensor) -> list[Image.Image]:
    return [Image.fromarray(a) for a in to_uint8(x)]
