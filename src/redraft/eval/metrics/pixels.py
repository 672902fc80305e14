"""Pixel metrics of two uint8 images: PSNR, MSE, SSIM (whole or over a mask), the clean background metrics,
PIE-Bench's background metrics, and PIE-Bench's run-length edit masks."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...errors import InputError

K1, K2, L = 0.01, 0.03, 255.0
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5


def _image(x, name: str) -> np.ndarray:
    if isinstance(x, Image.Image):
        x = np.asarray(x)
    elif isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    else:
        x = np.asarray(x)
    if x.dtype != np.uint8:
        raise InputError(f"{name} must be a uint8 image (values 0..255); got {x.dtype}. "
                         "Convert it first, e.g. with redraft.image.to_uint8 or np.asarray(pil_image).")
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim != 3 or x.shape[0] == 0 or x.shape[1] == 0:
        raise InputError(f"{name} must be an image array [H, W, 3] (or [H, W]); got shape {x.shape}.")
    return x


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = _image(a, "the first image"), _image(b, "the second image")
    if a.shape != b.shape:
        raise InputError(f"the two images differ in size: {a.shape} vs {b.shape} (H, W, C); "
                         "compare images of the same size (resize or crop one of them first).")
    return a, b


def _mask(mask, shape: tuple[int, ...]) -> np.ndarray | None:
    if mask is None:
        return None
    m = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask)
    if m.shape != tuple(shape[:2]):
        raise InputError(f"the mask must be [H, W] = {tuple(shape[:2])}, the images' size; got shape {m.shape}.")
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            raise InputError("the mask must hold bools or 0/1 (1 = pixel to count); "
                             "binarise it first, e.g. mask > 127 for a 0..255 mask image.")
        m = m.astype(bool)
    return m


def _squared_error(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None) -> float:
    """Mean squared difference on the [0, 255] scale, over all channels of the counted pixels."""
    d = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    if mask is not None:
        if not mask.any():
            return math.nan
        d = d[mask]
    return float(d.mean())


def mse(a, b, mask=None) -> float:
    """Mean squared error on the [0, 1] scale: mean over pixels and channels of ((a - b) / 255)^2.

    With `mask` ([H, W], True = count), the mean is over the masked pixels only.
    """
    a, b = _pair(a, b)
    return _squared_error(a, b, _mask(mask, a.shape)) / L**2


def psnr(a, b, mask=None) -> float:
    """Peak signal-to-noise ratio in dB, 10 log10(255^2 / MSE) with the MSE on [0, 255] (inf if identical).

    With `mask` ([H, W], True = count), the MSE is over the masked pixels only (the clean masked way).
    """
    a, b = _pair(a, b)
    e = _squared_error(a, b, _mask(mask, a.shape))
    if math.isnan(e):
        return math.nan
    return math.inf if e == 0 else 10 * math.log10(L**2 / e)


def _gaussian(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_window(height: int, width: int) -> int:
    """The side of the SSIM window for an image of this size: 11, or the image's smaller side if that is smaller (made odd)."""
    w = min(SSIM_WINDOW, height, width)
    return w if w % 2 else w - 1


def ssim_map(a, b) -> np.ndarray:
    """The SSIM map [H - w + 1, W - w + 1, C] of two images, per channel (w = `ssim_window(H, W)`).

    Wang, Bovik, Sheikh, Simoncelli 2004, "Image quality assessment: from error visibility to structural
    similarity", eq. 13 with the Gaussian-weighted local statistics of eqs. 14-16: an 11x11
    circular-symmetric Gaussian window (sigma 1.5, normalised to sum 1), K1 = 0.01, K2 = 0.03, L = 255, population (not sample)
    variances. The map covers the "valid" region only, the positions where the whole window lies in the
    image (no padding); this is what skimage's structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=255) and torchmetrics' StructuralSimilarityIndexMeasure average.
    An image smaller than 11 px on a side gets a window as large as its smaller side (made odd), sigma
    still 1.5.
    """
    a, b = _pair(a, b)
    h, w, c = a.shape
    n = ssim_window(h, w)
    g = _gaussian(n, SSIM_SIGMA)
    x = torch.from_numpy(np.array(a)).permute(2, 0, 1).to(torch.float64).unsqueeze(1)  # [C, 1, H, W]
    y = torch.from_numpy(np.array(b)).permute(2, 0, 1).to(torch.float64).unsqueeze(1)
    stack = torch.cat([x, y, x * x, y * y, x * y])  # [5C, 1, H, W]
    # the 2-D Gaussian is separable: filter the columns, then the rows ("valid", no padding)
    filtered = F.conv2d(F.conv2d(stack, g.view(1, 1, n, 1)), g.view(1, 1, 1, n))
    mu_x, mu_y, xx, yy, xy = filtered.split(c)
    var_x, var_y, cov = xx - mu_x * mu_x, yy - mu_y * mu_y, xy - mu_x * mu_y
    c1, c2 = (K1 * L) ** 2, (K2 * L) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
    return s[:, 0].permute(1, 2, 0).numpy()


def ssim(a, b, mask=None) -> float:
    """Mean SSIM (Wang et al. 2004; see `ssim_map`) of two images, in [-1, 1], 1 for identical images.

    Computed per channel on the RGB values (no conversion to luma) and averaged over channels and over
    the valid region of the map (an 11x11 window needs 5 px on each side, so the outer 5 px of the image
    are only seen by windows centred further in). With `mask` ([H, W], True = count), the map is averaged
    over the masked pixels of the valid region: the mask is cropped by the same 5 px (window // 2) on
    each side, so masked pixels within 5 px of the border do not count, and the windows of counted
    pixels still see the unmasked pixels around them.
    """
    a, b = _pair(a, b)
    m = _mask(mask, a.shape)
    s = ssim_map(a, b)
    if m is not None:
        p = ssim_window(*a.shape[:2]) // 2
        m = m[p : a.shape[0] - p, p : a.shape[1] - p]
        if not m.any():
            return math.nan
        s = s[m]
    return float(s.mean())


def pie_bench_masked(a, b, edit_mask) -> tuple[np.ndarray, np.ndarray]:
    """Both images multiplied by (1 - edit mask), as PIE-Bench does before its background metrics.

    Ju et al. 2024, "PnP Inversion" (PIE-Bench), evaluation/evaluate.py: `calculate_psnr(src, tgt,
    1 - mask, 1 - mask)` and the like, which multiply both images by the mask. The edited region
    (edit_mask True) becomes black in both; the result is uint8 like the inputs (exact: the mask is 0/1).
    """
    a, b = _pair(a, b)
    keep = ~_mask(edit_mask, a.shape)
    return a * keep[..., None], b * keep[..., None]


def pie_bench_background(a, b, edit_mask, lpips: "Lpips | None" = None) -> dict[str, float]:  # noqa: F821 (learned.Lpips)
    """PIE-Bench's background metrics: psnr, mse ([0, 1] scale) and ssim of `pie_bench_masked` images, over the whole image.

    With an `Lpips` scorer, also "lpips" of the masked images over the whole image, as PIE-Bench does.

    Ju et al. 2024 ("PnP Inversion", PIE-Bench) report these as "PSNR", "MSE" (x 10^4) and "SSIM" (x 10^2)
    of "background preservation". To reproduce their numbers, decode their masks with
    `decode_rle_mask(rle, border=True)` (their mask_decode also marks the image's 1-pixel frame as edited).
    The torchmetrics SSIM they use has the same definition and valid region as `ssim` here.
    """
    am, bm = pie_bench_masked(a, b, edit_mask)
    out = dict(psnr=psnr(am, bm), mse=mse(am, bm), ssim=ssim(am, bm))
    if lpips is not None:
        out["lpips"] = lpips(am, bm)
    return out


def background(a, b, edit_mask, lpips: "Lpips | None" = None) -> dict[str, float]:  # noqa: F821 (learned.Lpips)
    """The clean background metrics: psnr, mse ([0, 1] scale) and ssim over the pixels outside the edit mask only.

    Same definitions as `psnr`, `mse` and `ssim` with mask = ~edit_mask (for SSIM, windows centred on
    background pixels still see the edited pixels nearby). nan if everything is edited. With an `Lpips`
    scorer, also "lpips" with its maps averaged over the background (`Lpips.__call__` with a mask).
    """
    a, b = _pair(a, b)
    keep = ~_mask(edit_mask, a.shape)
    out = dict(psnr=psnr(a, b, keep), mse=mse(a, b, keep), ssim=ssim(a, b, keep))
    if lpips is not None:
        out["lpips"] = lpips(a, b, keep)
    return out


def decode_rle_mask(rle, size: tuple[int, int] = (512, 512), *, border: bool = False) -> np.ndarray:
    """A PIE-Bench edit mask [H, W] of bools (True = edit region) from its run-length encoding.

    PIE-Bench (Ju et al. 2024, mapping_file.json "mask"; decoded by mask_decode in their evaluate.py):
    pairs [start, length, start, length, ...] of runs of 1s over the row-major flattened H x W grid,
    starting at 0; runs past the end are cut at the end. `size` is (height, width). With `border`, the
    outermost rows and columns are also marked as edited, as their mask_decode does ("to avoid
    annotation errors in boundary"): use it to reproduce their background numbers.
    """
    h, w = size
    r = np.asarray(rle)
    if r.ndim != 1 or len(r) % 2 or (len(r) and (not np.issubdtype(r.dtype, np.integer) or r.min() < 0)):
        raise InputError("a run-length mask must be a flat list of non-negative integers "
                         "[start, length, start, length, ...]; got " + repr(rle)[:80])
    flat = np.zeros(h * w, dtype=bool)
    for start, length in r.reshape(-1, 2):
        flat[start : start + length] = True
    m = flat.reshape(h, w)
    if border:
        m[0, :] = m[-1, :] = m[:, 0] = m[:, -1] = True
    return m
