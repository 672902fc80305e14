"""Images in and out: any file, mode or size in; model-sized tensors in [-1, 1]; PIL images out."""

from __future__ import annotations

import re
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputError

ImageLike = str | Path | Image.Image | np.ndarray | torch.Tensor

MAX_PIXELS = 40_000_000  # the largest image any front-end takes (checked before decoding): 40 megapixels


def load_image(image: ImageLike, max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    """An RGB PIL image from a path, a PIL image or an array (HxW, HxWx3 or HxWx4; uint8 or floats in [0, 1]).

    EXIF orientation is applied; transparency is composited over white; palette, grayscale and
    16-bit images are converted. Images over `max_pixels` are refused (a file's from its header,
    before decoding); None: no cap.
    """
    if isinstance(image, (str, Path)):
        with _opened(Path(image), max_pixels) as im:
            pil = _decoded(im, image)
    elif isinstance(image, Image.Image):
        check_size(image, max_pixels)
        pil = ImageOps.exif_transpose(image)
    elif isinstance(image, (np.ndarray, torch.Tensor)):
        if isinstance(image, torch.Tensor):
            image = image.detach().cpu()
            if image.is_floating_point():
                image = image.float()  # numpy has no bfloat16
        pil = _from_array(np.asarray(image), max_pixels)
    else:
        raise InputError(f"cannot read an image from a {type(image).__name__}; give a path, a PIL image or an array.")
    return _to_rgb(pil)


def check_size(image: str | Path | Image.Image, max_pixels: int | None = MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of an image file (read from its header: nothing is decoded) or a PIL image;
    InputError if it is not an image, or has more than `max_pixels` pixels."""
    if isinstance(image, Image.Image):
        _check_pixels("the image", *image.size, max_pixels)
        return image.size
    with _opened(Path(image), max_pixels) as im:
        return im.size


@contextmanager
def _opened(path: Path, max_pixels: int | None):
    """The image file opened lazily (header only), its size checked; InputError for a missing or unreadable file."""
    if not path.is_file():
        raise InputError(f"{path}: no such file; give the path of an image (PNG, JPEG, WebP, ...).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own cap speaks instead
            im = Image.open(path)
    except Image.DecompressionBombError as e:  # over PIL's own limit, which gives the size only in its message
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(pixels[1]) / 1e6:.1f} megapixels" if pixels else "too many pixels"
        limit = max_pixels or 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise InputError(f"{path} has {size}, more than the {limit / 1e6:.0f} allowed; downscale it first.") from None
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"{path} is not an image that can be read ({e}); give a PNG, JPEG or WebP file.") from None
    with im:
        _check_pixels(str(path), *im.size, max_pixels)
        yield im


def _check_pixels(name: str, width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise InputError(f"{name} is {width} x {height} = {width * height / 1e6:.1f} megapixels, more than the "
                         f"{max_pixels / 1e6:.0f} allowed; downscale it first.")


def _decoded(im: Image.Image, path) -> Image.Image:
    """The opened file's pixels, upright (EXIF orientation applied); InputError if they cannot be decoded."""
    try:
        return ImageOps.exif_transpose(im)  # a loaded copy
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"{path} is not an image that can be read ({e}); give a PNG, JPEG or WebP file.") from None


def _from_array(a: np.ndarray, max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = a.transpose(1, 2, 0)  # channels first
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)) or a.size == 0:
        raise InputError(f"an image array must be HxW, HxWx3 or HxWx4; got shape {a.shape}.")
    _check_pixels("the image array", a.shape[1], a.shape[0], max_pixels)
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.floating):
            raise InputError(f"an image array must be uint8 or floats in [0, 1]; got {a.dtype}.")
        bad = int(np.count_nonzero(~np.isfinite(a)))
        if bad:
            raise InputError(f"the image array has {bad} NaN or infinite values (of {a.size}); an image's floats "
                             f"must be finite, in [0, 1]: fix what made it, or replace them (np.nan_to_num) first.")
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
