"""`redraft bench shapes --masks`: region edits (`p2p.region`) on held-out scenes of the built-in model.

Per scene, a colour swap and a shape swap with the mask = the object's box, and a background swap
with the mask = everything but the object (its pixels, rim included); each with no controls passed (the
model's editing recipe, `p2p.recipe`, chooses them and where the latent blend ends), masked and unmasked. Reported per kind and mode: edits right with
the position kept (`world.kept`), the median shift, the PSNR outside the mask against the input, the
VAE round trip's PSNR over the same pixels, and the share of edits whose pixels outside the keep band
are the input's exactly. The pixel keep is applied to the latent-blended edit with each band of
`BANDS` (grow, feather in px), so one run compares them: the default was chosen on `--seed 11`.
"""

from __future__ import annotations

import random

import numpy as np
from tqdm.auto import tqdm

from ..eval.metrics import psnr
from ..p2p.region import band, default_band, keep_pixels
from ..shapes import world

KINDS = ("color", "shape", "background")
BANDS = ((0, 0), (0, 1), (1, 1), (0, 2), (2, 2))  # (grow, feather) px, compared on the same edits


def object_box(scene: world.Scene) -> np.ndarray:
    """[64, 64] bool: the object's box, pixels cx - h .. cx + h (the rim the renderer half covers included)."""
    h = world.SIZES[scene.size]
    m = np.zeros((world.CANVAS, world.CANVAS), bool)
    m[scene.cy - h: scene.cy + h + 1, scene.cx - h: scene.cx + h + 1] = True
    return m


def object_region(scene: world.Scene) -> np.ndarray:
    """[64, 64] bool: the pixels the object covers at all (its anti-aliased rim included)."""
    s = world.SUPERSAMPLE
    return world.shape_mask(scene).reshape(world.CANVAS, s, world.CANVAS, s).any(axis=(1, 3))


def mask_for(kind: str, scene: world.Scene) -> np.ndarray:
    """True = may change: the object's box for colour and shape swaps, everything but the object for
    background swaps."""
    return ~object_region(scene) if kind in world.BACKGROUND_KINDS else object_box(scene)


def run(editor, n: int = 24, steps: int = 50, seed: int = 3, progress: bool = True) -> dict:
    """Masked against unmasked colour, shape and background swaps on n held-out scenes (seed 3: the
    benchmark's; 11: the validation scenes the band was chosen on)."""
    scenes = world.scenes(seed + 1, n, split="test")
    rows: dict[str, dict[str, list]] = {}
    stops: dict[str, list] = {}  # the recipe's mask_stop of each edit, per kind
    default = default_band(editor.pipeline.vae_scale_factor)

    def add(label, kind, image, e, mask, original, vae, keep=None):
        r = rows.setdefault(f"{kind} | {label}", {"right": [], "shift": [], "psnr": [], "vae": [], "exact": []})
        same, shift = world.outcome(image, e.target)
        r["right"].append(same and shift <= world.POSITION_TOLERANCE)
        r["shift"].append(shift)
        r["psnr"].append(min(psnr(original, image, ~mask), 99.0))  # exact: capped at 99 dB for the mean
        r["vae"].append(psnr(original, vae, ~mask))
        if keep is not None:
            r["exact"].append(bool((np.asarray(image)[keep == 0] == np.asarray(original)[keep == 0]).all()))

    for k, scene in enumerate(tqdm(scenes, desc="masked edits", disable=not progress)):
        rng = random.Random(k)
        edits = {kind: world.random_edit(scene, kind, rng) for kind in KINDS}
        image = world.render(scene)
        inv = editor.invert(image, scene.prompt(), method="ddim", steps=steps, progress=False)
        original = inv.image
        vae = editor.decode(editor.encode([editor.prepare(image)]))[0]
        groups = [("color", "shape"), ("background",)]  # one batch per mask and controls
        for group in groups:
            mask = mask_for(group[0], scene)
            targets = [edits[kind].target_prompt for kind in group]
            plain = editor.edit(inv, targets, progress=False)  # no controls: the model's recipe
            blended = editor.edit(inv, targets, progress=False, mask=mask, keep_outside="latents")
            for row in range(1, len(group) + 1):
                stops.setdefault(group[row - 1], []).append(blended.part_of(row)[0].region.mask_stop)
            for row, kind in enumerate(group, start=1):
                e = edits[kind]
                add("no mask", kind, plain[row], e, mask, original, vae)
                add("mask, latents", kind, blended[row], e, mask, original, vae)
                for grow, feather in BANDS:
                    keep = band(mask.astype(np.float32), grow, feather)
                    label = f"mask, pixels {grow}+{feather} px" + (" (default)" if (grow, feather) == default else "")
                    add(label, kind, keep_pixels(blended[row], original, keep), e, mask, original, vae, keep)
    summary = {}
    for label, r in rows.items():
        summary[label] = {"right": float(np.mean(r["right"])), "shift": float(np.median(r["shift"])),
                          "psnr_outside": float(np.mean(r["psnr"])), "vae_psnr_outside": float(np.mean(r["vae"])),
                          "exact_outside_band": float(np.mean(r["exact"])) if r["exact"] else None, "n": len(r["right"])}
    return {"model": editor.model_id, "seed": seed, "scenes": n, "steps": steps, "default_band": list(default),
            "mask_stop": {kind: float(np.mean(v)) for kind, v in stops.items()}, "rows": summary}


def table(result: dict) -> str:
    lines = [f"region edits on {result['scenes']} held-out scenes (seed {result['seed']}, {result['steps']} steps, "
             "no controls passed: the model's recipe, mean mask_stop "
             + ", ".join(f"{k} {v:.2f}" for k, v in result["mask_stop"].items())
             + "); PSNR outside the mask against the input (exact: 99 dB)",
             f"{'kind | mode':<44} {'right':>7} {'shift':>7} {'PSNR out':>9} {'VAE out':>8} {'exact':>6}"]
    for label, r in result["rows"].items():
        exact = "" if r["exact_outside_band"] is None else f"{r['exact_outside_band']:.0%}"
        lines.append(f"{label:<44} {r['right']:>7.1%} {r['shift']:>5.1f}px {r['psnr_outside']:>7.2f}dB "
                     f"{r['vae_psnr_outside']:>6.2f}dB {exact:>6}")
    return "\n".join(lines)
