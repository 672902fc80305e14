"""Inversions: the trajectory that regenerates an image, as functions of tensors over one sampling loop.

- `ddim.ddim_inversion`: the pivot trajectory, run backwards with the source prompt (Mokady et al. 2023, sec. 3.1).
- `null_text.null_text_optimisation`: per-step optimised null embeddings (Mokady et al. 2023, Algorithm 1:
  rule `PAPER`; the default `WARM` starts every step at NPI's null, with a relative tolerance and a budget).
- Negative-prompt inversion (Miyake et al. 2023) needs no function: its null embedding *is* the source
  prompt's embedding, so guided sampling at any scale equals conditional sampling, which is what the
  pivot was built with.
- Direct Inversion (Ju et al. 2024) is a callback of the edit's sampling loop (`direct.on_pivot`).
- Issue 33's four, behind `methods` (settings, inversion, sampling hooks): `edit_friendly` (edit-friendly
  DDPM noise maps, Huberman-Spiegelglas et al. 2024), `edict` (Wallace et al. 2023), `proxnpi` (ProxEdit,
  Han et al. 2024) and `spdinv` (Li et al. 2024).
"""

METHODS = ("ddim", "null-text", "negative-prompt", "edit-friendly", "edict", "proxnpi", "spdinv")
