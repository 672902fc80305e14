"""The picture of docs/region-edits.md: one colour swap on a held-out scene, without and with a mask.

    .venv/bin/python docs/experiments/region_edit_figure.py [--seed 7] [--out docs/gallery/region-edit.png]

On the built-in model: the first held-out scene of `--seed` is DDIM-inverted (50 steps) and its object
recoloured (a colour drawn with `random.Random(seed)`) with no controls passed (the model's recipe, `p2p.recipe`)
three times: without a mask, with the mask (the object's box grown by `--grow` px) and
keep_outside="latents", and with keep_outside="pixels" (the default), both with the latent blend over
the steps the model's recipe blends (`mask_stop`). One row, each panel 4x (nearest): input | mask | the three
edits | |pixels edit - input| x `--amplify`. The captions give the PSNR outside the mask against the
input; the script prints each edit's time and UNet passes.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import redraft
from redraft.bench.masks import object_box
from redraft.eval.metrics import psnr
from redraft.io.draw import grid
from redraft.shapes import world

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--seed", type=int, default=7, help="held-out scenes of this seed (7: the demo's)")
parser.add_argument("--out", type=Path, default=Path("docs/gallery/region-edit.png"))
parser.add_argument("--steps", type=int, default=50)
parser.add_argument("--grow", type=int, default=2, help="px added around the object's box for the mask")
parser.add_argument("--amplify", type=float, default=8.0, help="factor on the difference panel")
args = parser.parse_args()
torch.set_num_threads(1)

editor = redraft.load()
scene = world.scenes(args.seed, 1, split="test")[0]
edit = world.random_edit(scene, "color", random.Random(args.seed))
image = world.render(scene)
box = object_box(scene)
r = args.grow
padded, mask = np.pad(box, r), np.zeros_like(box)  # the box grown by r px (a square max filter)
for dy in range(2 * r + 1):
    for dx in range(2 * r + 1):
        mask |= padded[dy:dy + box.shape[0], dx:dx + box.shape[1]]

inv = editor.invert(image, edit.source_prompt, method="ddim", steps=args.steps, progress=False)
controls: dict = {}  # the model's recipe
runs = {"no mask": {}, 'mask, keep_outside="latents"': dict(mask=mask, keep_outside="latents"),
        'mask, keep_outside="pixels"': dict(mask=mask, keep_outside="pixels")}
edits, captions = [], []
for label, region in runs.items():
    extra = dict(region) if region else {}  # mask_stop: the recipe's
    start = time.perf_counter()
    with torch.no_grad():
        result = editor.edit(inv, edit.target_prompt, progress=False, **controls, **extra)
    seconds = time.perf_counter() - start
    out = result[-1]
    edits.append(out)
    same, shift = world.outcome(out, edit.target)
    outside = psnr(inv.image, out, ~mask)
    captions.append(f"{label}: PSNR outside {min(outside, 99):.1f} dB" + ("" if same else " (not read right)"))
    print(f"{label:<30} {seconds:5.2f} s, {result.unet_forward} UNet passes, right {same}, shift {shift:.1f} px, "
          f"PSNR outside the mask {outside:.2f} dB", flush=True)

diff = np.abs(np.asarray(edits[-1], np.float32) - np.asarray(inv.image, np.float32)) * args.amplify
panels = [Image.fromarray(inv.image), Image.fromarray((mask * 255).astype(np.uint8)), *edits,
          Image.fromarray(np.clip(diff, 0, 255).round().astype(np.uint8))]
captions = [f"input: {edit.source_prompt}", f"mask (white: may change): box + {args.grow} px",
            *(f"edit to {edit.word}, {c}" for c in captions),
            f"|pixels edit - input| x {args.amplify:g}"]
args.out.parent.mkdir(parents=True, exist_ok=True)
grid(panels, captions, cell=4 * world.CANVAS).save(args.out)
print(f"wrote {args.out} ({edit.source_prompt} -> {edit.target_prompt})")
