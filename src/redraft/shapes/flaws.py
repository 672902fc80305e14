"""The built-in VAE decoder's visible flaws, measured against the truth of the shapes world (8-bit levels).

- ghosts: faint blobs beside the object: the error of background pixels more than `MARGIN` px from the
  object and inside the frame's band (the worst channel of each pixel), per image its largest and its
  99th percentile;
- frame: the error (worst channel) of the background in the outer `FRAME` px, where the decoder draws a
  faint frame (on black backgrounds a dark ring 2 px in, the outermost row lighter, the corner pixels
  off by 20 to 30 levels), per image its mean and its largest; and the mean signed error (decoded - true,
  channels averaged) of the outer `BORDER` px;
- tips: a small diamond's four tips, the mean |coverage error| in the 3 x 3 pixels around each tip pixel
  (coverage: where a pixel's colour lies between the background's and the object's, as `world.read`);
- psnr: of the whole image (the VAE's ceiling when the latent is the encoder's).

`image_flaws` needs only the image, the background's name and the object's mask, so it serves generated
and edited images too (mask: the pixels far from the background colour, `object_mask`), where the position
is not known beforehand. docs/experiments/decoder_flaws.py reports them; tests/test_shapes_model.py bounds them.
"""

from __future__ import annotations

import numpy as np

from . import world

MARGIN = 3  # px: background pixels farther than this from the object count as "far"
BORDER = 2  # px: the outer rows and columns whose signed error is the frame's ("frame_signed")
FRAME = 4  # px: the band whose mean error is the frame's


def grow(mask: np.ndarray, r: int) -> np.ndarray:
    """`mask` [H, W] dilated by r px (a (2r + 1)-square)."""
    h, w = mask.shape
    padded = np.pad(mask, r)
    out = np.zeros_like(mask)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out |= padded[dy:dy + h, dx:dx + w]
    return out


def truth_mask(scene: world.Scene) -> np.ndarray:
    """The pixels the object covers at all in the rendered scene."""
    return np.asarray(world.render(scene), dtype=np.int16).__ne__(world.BACKGROUNDS[scene.background]).any(2)


def object_mask(image: np.ndarray, background: str, distance: float = 30.0) -> np.ndarray:
    """The pixels of an image of unknown layout farther than `distance` (RGB) from the background colour:
    the object, its anti-aliased rim; ghosts are fainter (`MARGIN` px of growth covers the rest of the rim)."""
    return np.linalg.norm(image.astype(np.float64) - world.BACKGROUNDS[background], axis=2) > distance


def image_flaws(image, background: str, mask: np.ndarray, truth=None) -> dict[str, float]:
    """The flaws of one 64 x 64 image (uint8 array or PIL) whose background is `background` and whose
    object covers `mask`; `truth` (the true image) adds the PSNR. Errors in 8-bit levels."""
    x = np.asarray(image, dtype=np.float64)
    bg = np.array(world.BACKGROUNDS[background], dtype=np.float64)
    err = np.abs(x - bg).max(2)
    far = ~grow(mask, MARGIN)
    band = np.ones(err.shape, dtype=bool)
    band[FRAME:-FRAME, FRAME:-FRAME] = False
    out = {}
    if (far & ~band).any():
        out["ghost_max"] = float(err[far & ~band].max())
        out["ghost_p99"] = float(np.percentile(err[far & ~band], 99))
    if (band & far).any():
        out["frame"] = float(err[band & far].mean())
        out["frame_max"] = float(err[band & far].max())
    border = np.ones(err.shape, dtype=bool)
    border[BORDER:-BORDER, BORDER:-BORDER] = False
    if (border & far).any():
        out["frame_signed"] = float((x - bg).mean(2)[border & far].mean())
    if truth is not None:
        t = np.asarray(truth, dtype=np.float64)
        mse = ((x - t) ** 2).mean()
        out["psnr"] = float(10 * np.log10(255 ** 2 / max(mse, 1e-10)))
    return out


def coverage(image, scene: world.Scene) -> np.ndarray:
    """Each pixel's share of the object's colour (0: background, 1: object), clipped to [0, 1]."""
    x = np.asarray(image, dtype=np.float64)
    bg, fg = (np.array(p[k], dtype=np.float64) for p, k in ((world.BACKGROUNDS, scene.background),
                                                              (world.COLORS, scene.color)))
    axis = fg - bg
    return np.clip((x - bg) @ axis / (axis @ axis), 0, 1)


def tip_error(image, scene: world.Scene) -> float:
    """A diamond's mean |coverage error| over the 3 x 3 pixels around each of its four tip pixels."""
    h = world.SIZES[scene.size]
    truth, got = coverage(world.render(scene), scene), coverage(image, scene)
    errs = [np.abs(got - truth)[y - 1:y + 2, x - 1:x + 2].mean()
            for x, y in ((scene.cx - h, scene.cy), (scene.cx + h, scene.cy), (scene.cx, scene.cy - h),
                         (scene.cx, scene.cy + h))]
    return float(np.mean(errs))


def small_diamonds(seed: int, n: int) -> list[world.Scene]:
    """n held-out (split "test") small diamonds, drawn from `seed`."""
    import random

    rng, out = random.Random(f"small-diamonds-{seed}"), []
    while len(out) < n:
        s = world.random_scene(rng, "test")
        if s.shape == "diamond" and s.size == "small":
            out.append(s)
    return out
