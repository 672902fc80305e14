"""Evaluation: image metrics (`metrics`: PSNR, SSIM, background and PIE-Bench metrics; CLIP, DINO, LPIPS)."""
