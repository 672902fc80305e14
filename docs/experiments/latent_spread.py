"""How far the VAE's encoder spreads an object over the latent beyond the object's own cells.

For held-out scenes: the share of the latent's deviation from the background (squared norm over the
channels; the background is the median of the border cells) that lies outside the object's box + 2 px,
and how far the deviation's centroid lies from the object's centre. Encode then decode cancels the
spread exactly; an edit, whose x_T carries the source object's spread, draws the mismatch as a ghost
beside the object (docs/shapes-model.md).

    .venv/bin/python docs/experiments/latent_spread.py [--model DIR] [-n 60] [--seed 12]
"""

import argparse

import numpy as np
import torch

import redraft
from redraft.shapes import world

parser = argparse.ArgumentParser()
parser.add_argument("--model", default=None)
parser.add_argument("-n", type=int, default=60)
parser.add_argument("--seed", type=int, default=12)
args = parser.parse_args()

editor = redraft.load(args.model)
cell = world.CANVAS // editor.encode([world.render(world.scenes(0, 1)[0])]).shape[-1]  # px per latent cell
rows = []
for scene in world.scenes(args.seed, args.n, split="test"):
    z = editor.encode([world.render(scene)])[0]
    border = torch.cat([z[:, 0], z[:, -1], z[:, :, 0], z[:, :, -1]], dim=1)
    energy = ((z - border.median(dim=1).values[:, None, None]) ** 2).sum(0).numpy()
    yy, xx = (np.mgrid[:z.shape[1], :z.shape[2]] + 0.5) * cell  # cell centres, px
    h = world.SIZES[scene.size]
    inside = (np.abs(xx - scene.cx - 0.5) <= h + 2) & (np.abs(yy - scene.cy - 0.5) <= h + 2)
    dx = (energy * xx).sum() / energy.sum() - scene.cx - 0.5
    dy = (energy * yy).sum() / energy.sum() - scene.cy - 0.5
    rows.append((scene.background, energy[~inside].sum() / energy.sum(), dx, dy))
print(f"outside the object's box + 2 px: {np.mean([r[1] for r in rows]):.0%} of the latent's deviation "
      f"({', '.join(f'{b} {np.mean([r[1] for r in rows if r[0] == b]):.0%}' for b in world.BACKGROUNDS)})")
print(f"centroid offset: x {np.mean([r[2] for r in rows]):+.1f} px, y {np.mean([r[3] for r in rows]):+.1f} px")
