"""Region edits with no controls passed: where the latent blend should end, per kind of edit.

    .venv/bin/python docs/experiments/mask_stop_choice.py [--seed 11] [-n 12] [--stops 0,0.25,0.5,1]
        [--kinds color,shape,background]

For held-out scenes of `--seed` (validation: 11), inverts each scene (DDIM, so that the recipe's Direct
Inversion applies) and makes a colour and a shape swap with the mask = the object's box, and a background
swap with the mask = everything but the object (`bench.masks.mask_for`), each with every `mask_stop` of
`--stops` and the default pixel keep, and no controls passed (the model's recipe decides the rest).
Prints per kind and mask_stop the share right with the position kept (`world.kept`: every attribute, the
centre within 3 px), the median shift, and the PSNR outside the mask against the input.
"""

from __future__ import annotations

import argparse
import random

import numpy as np
from tqdm.auto import tqdm

import redraft
from redraft.bench.masks import mask_for
from redraft.eval.metrics import psnr
from redraft.shapes import world

parser = argparse.ArgumentParser()
parser.add_argument("--seed", type=int, default=11)
parser.add_argument("-n", type=int, default=12)
parser.add_argument("--stops", default="0,0.25,0.5,1")
parser.add_argument("--kinds", default="color,shape,background")
parser.add_argument("--steps", type=int, default=50)
args = parser.parse_args()

editor = redraft.load()
stops = [float(s) for s in args.stops.split(",")]
kinds = args.kinds.split(",")
rows: dict[tuple[str, float], dict[str, list]] = {}
for k, scene in enumerate(tqdm(world.scenes(args.seed + 1, args.n, split="test"), desc="scenes")):
    rng = random.Random(k)
    edits = {kind: world.random_edit(scene, kind, rng) for kind in ("color", "shape", "background")}
    inv = editor.invert(world.render(scene), scene.prompt(), method="ddim", steps=args.steps, progress=False)
    for kind in kinds:
        e, mask = edits[kind], mask_for(kind, scene)
        for stop in stops:
            image = editor.edit(inv, e.target_prompt, mask=mask, mask_stop=stop, progress=False)[1]
            same, shift = world.outcome(image, e.target)
            r = rows.setdefault((kind, stop), {"right": [], "shift": [], "psnr": []})
            r["right"].append(same and shift <= world.POSITION_TOLERANCE)
            r["shift"].append(shift)
            r["psnr"].append(min(psnr(inv.image, image, ~mask), 99.0))

print(f"seed {args.seed}, {args.n} held-out scenes, {args.steps} steps, no controls passed (the recipe), pixel keep")
print(f"{'kind':<12} {'mask_stop':>9} {'right':>7} {'shift':>7} {'PSNR out':>9}")
for (kind, stop), r in rows.items():
    print(f"{kind:<12} {stop:>9.2f} {np.mean(r['right']):>7.1%} {np.median(r['shift']):>5.1f}px "
          f"{np.mean(r['psnr']):>7.2f}dB")
