"""Image-quality metrics (PSNR, MSE, SSIM), whole-image or over a mask, PIE-Bench's background metrics, and
the learned ones that need weights (LPIPS, CLIP score, DINO structure distance). `pixels` holds the
first, `learned` the others; every name is importable from here (`from redraft.eval.metrics import psnr`).

Images are uint8 arrays [H, W, 3] (also [H, W] or [H, W, C]; PIL images and torch tensors in that
layout are accepted), two of the same size. A mask is a [H, W] array of bools or 0/1, True = a pixel
to count. A metric over a mask that selects no pixel is nan (PIE-Bench skips such images too).

Two ways of scoring the unedited background of an edit, given the edit mask (1 = edited region):

- `background`: the clean way, metrics computed over the pixels outside the edit mask only.
- `pie_bench_background`: PIE-Bench's way (Ju et al. 2024, "PnP Inversion", evaluation/evaluate.py
  and matrics_calculator.py): both images are multiplied by (1 - edit mask) and the metrics are
  computed over the whole image, the zeroed edit region included. Its MSE is the clean MSE times the
  background's share of the image, so its PSNR is higher by 10 log10(H W / background pixels); its
  SSIM counts the zeroed region as perfectly similar and the windows across the mask's edge as the
  masks' own structure.
"""

from __future__ import annotations

from .learned import (IMAGENET_MEAN, IMAGENET_STD, LPIPS_NETS, LPIPS_SCALE, LPIPS_SHIFT, SCORERS, ClipScore, Lpips,
                      StructureDistance, optional_scorer)
from .pixels import (K1, K2, SSIM_SIGMA, SSIM_WINDOW, L, background, decode_rle_mask, mse, pie_bench_background,
                     pie_bench_masked, psnr, ssim, ssim_map, ssim_window)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "K1", "K2", "L", "LPIPS_NETS", "LPIPS_SCALE", "LPIPS_SHIFT", "SCORERS",
           "SSIM_SIGMA", "SSIM_WINDOW", "ClipScore", "Lpips", "StructureDistance", "background", "decode_rle_mask",
           "mse", "optional_scorer", "pie_bench_background", "pie_bench_masked", "psnr", "ssim", "ssim_map",
           "ssim_window"]
