"""A user's edit mask in: a PIL image, an array or a path -> floats in [0, 1] at the image's size.

White (or True, or 1.0) marks where the edit may change the image; black (False, 0) what must stay as
it was; grey values are soft (a soft brush, a segmentation's probabilities). Sizes:

- the image's size: used as it is;
- the same aspect ratio at another size: resized (bilinear on the float values, so that a hard mask
  gets a one-pixel soft edge and a soft mask stays soft);
- another aspect ratio: an `InputError` that names both sizes (crop the mask as the image was:
  `crop_like` does the centre crop `Editor.prepare` gives the image).

A mask that selects nothing (black everywhere) or everything (white everywhere) is refused: the first
would keep the whole image, the second is the same as no mask.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputError
from .image import MAX_PIXELS, _opened, fit

MaskLike = str | Path | Image.Image | np.ndarray | torch.Tensor
EMPTY = 1 / 255  # a mask whose every value is below this selects nothing
FULL = 1 - 1 / 255  # ... and one whose every value is above this selects everything


def mask_array(mask: MaskLike) -> np.ndarray:
    """The mask's own values as float32 [H, W] in [0, 1], at its own size (see the module's rules)."""
    if isinstance(mask, (str, Path)):
        try:
            with _opened(Path(mask), MAX_PIXELS) as im:
                im = ImageOps.exif_transpose(im)
        except InputError as e:
            raise InputError(f"the mask: {e}") from None
        except (UnidentifiedImageError, OSError) as e:
            raise InputError(f"the mask {mask} is not an image that can be read ({e}); give a PNG (white = may change).") from None
        return _from_pil(im)
    if isinstance(mask, Image.Image):
        return _from_pil(mask)
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu()
        mask = mask.float() if mask.is_floating_point() else mask
        mask = mask.numpy()
    if isinstance(mask, np.ndarray):
        return _from_numpy(mask)
    raise InputError(f"cannot read a mask from a {type(mask).__name__}; give a path, a PIL image or an array "
                     "(white or True = may change).")


def _from_pil(im: Image.Image) -> np.ndarray:
    if im.mode in ("RGBA", "LA", "PA", "P"):
        im = im.convert("RGBA")
        alpha = np.asarray(im.getchannel("A"), dtype=np.float32) / 255
        grey = np.asarray(im.convert("L"), dtype=np.float32) / 255
        return grey * alpha  # transparent pixels are black: not selected
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        return np.clip(np.asarray(im, dtype=np.float32) / 65535, 0, 1)
    if im.mode == "F":
        return _from_numpy(np.asarray(im))
    return np.asarray(im.convert("L"), dtype=np.float32) / 255


def _from_numpy(a: np.ndarray) -> np.ndarray:
    if a.ndim == 3 and a.shape[-1] in (1, 3, 4):
        a = a[..., :3].mean(-1) if a.dtype != bool else a[..., :3].any(-1)
    if a.ndim != 2 or a.size == 0:
        raise InputError(f"a mask array is HxW (or HxWx1/3/4); got shape {a.shape}.")
    if a.dtype == bool:
        return a.astype(np.float32)
    if np.issubdtype(a.dtype, np.integer):
        values = np.unique(a)
        if values.min() < 0 or values.max() > 255:
            raise InputError(f"an integer mask array holds 0..255 (or 0/1); got values from {values.min()} to {values.max()}.")
        return a.astype(np.float32) / (1 if values.max() <= 1 else 255)
    if not np.issubdtype(a.dtype, np.floating):
        raise InputError(f"a mask array is bool, uint8 or floats in [0, 1]; got {a.dtype}.")
    a = a.astype(np.float32)
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
        raise InputError("a float mask holds values in [0, 1] (1 = may change); this one has values outside it "
                         "or NaN: rescale it first.")
    return a


def load_mask(mask: MaskLike, size: tuple[int, int]) -> np.ndarray:
    """The mask at the image's `size` (width, height): float32 [height, width] in [0, 1], 1 = may change.

    Resized when only its size differs (bilinear); an `InputError` names both sizes when its aspect
    ratio differs, and when it selects nothing or everything.
    """
    a = mask_array(mask)
    w, h = size
    mh, mw = a.shape
    if (mw, mh) != (w, h):
        if abs(mw * h - mh * w) > max(w, h, mw, mh):  # more than a pixel's rounding apart
            raise InputError(f"the mask is {mw}x{mh} but the image is {w}x{h}: another aspect ratio. Give a mask "
                             f"of the image's shape (a {w}x{h} one, or any size with its aspect ratio), e.g. cropped "
                             "the way the image was.")
        a = np.asarray(Image.fromarray(a, mode="F").resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
        a = np.clip(a, 0, 1)
    if a.max() < EMPTY:
        raise InputError("the mask is black everywhere: it lets nothing change. Paint white where the edit may "
                         "change the image (or leave the mask out).")
    if a.min() > FULL:
        raise InputError("the mask is white everywhere: it lets the whole image change, which is the same as no "
                         "mask. Leave it out, or paint black what must stay as it was.")
    return a


def crop_like(mask: MaskLike, original_size: tuple[int, int], resolution: int, *, keep_aspect: bool = False,
              multiple: int = 8) -> MaskLike:
    """A mask of the original image's size cropped and resized as `Editor.prepare` does the image
    (centre crop, or `keep_aspect`); any other mask comes back as it was (`load_mask` then judges it)."""
    a = mask_array(mask)
    if (a.shape[1], a.shape[0]) != tuple(original_size):
        try:
            a = load_mask(a, original_size)  # the original's aspect ratio at another size: resized first
        except InputError:
            return a  # judged again, with the error, against the image the editor was given
    return np.asarray(fit(Image.fromarray(a, mode="F"), resolution, keep_aspect=keep_aspect, multiple=multiple),
                      dtype=np.float32).clip(0, 1)
