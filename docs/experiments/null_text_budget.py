"""Null-text inversion against negative-prompt inversion on held-out scenes, and what it costs.

    .venv/bin/python docs/experiments/null_text_budget.py [--seed 11] [-n 8] [--variants null:10,npi:1,npi:2]

Per scene of `--seed` (validation: 11): the VAE round trip's PSNR (the ceiling), NPI's reconstruction,
and each null-text variant `INIT:INNER` (`Editor.invert(null_init=INIT, inner_steps=INNER)`: "null" is
the paper's Algorithm 1, empty-prompt start carried from step to step; "npi" restarts every step at NPI's
null and keeps the best embedding it evaluates). Prints the mean PSNR, the worst margin over NPI on any
scene, and UNet samples (forward + backward) per 50 steps.
"""

from __future__ import annotations

import argparse

import numpy as np
from tqdm.auto import tqdm

import redraft
from redraft.eval.metrics import psnr
from redraft.shapes import world

parser = argparse.ArgumentParser()
parser.add_argument("--seed", type=int, default=11)
parser.add_argument("-n", type=int, default=8)
parser.add_argument("--steps", type=int, default=50)
parser.add_argument("--variants", default="null:10,npi:1,npi:2,npi:3")
args = parser.parse_args()

editor = redraft.load()
variants = [(v.split(":")[0], int(v.split(":")[1])) for v in args.variants.split(",")]
rows: dict[str, list[tuple[float, float]]] = {"vae": [], "negative-prompt": []} | {f"{i}:{k}": [] for i, k in variants}
for scene in tqdm(world.scenes(args.seed + 1, args.n, split="test"), desc="scenes"):
    image = world.render(scene)
    x = editor.prepare(image)
    rows["vae"].append((psnr(np.asarray(x), np.asarray(editor.decode(editor.encode([x]))[0])), 0))
    runs = [("negative-prompt", dict(method="negative-prompt"))] + [
        (f"{i}:{k}", dict(method="null-text", null_init=i, inner_steps=k)) for i, k in variants]
    for label, kw in runs:
        inv = editor.invert(image, scene.prompt(), steps=args.steps, progress=False, **kw)
        back = editor.reconstruct(inv, progress=False)
        rows[label].append((psnr(inv.image, np.asarray(back)), (inv.cost.unet_forward + inv.cost.unet_backward) * 50 / args.steps))
npi = np.array([p for p, _ in rows["negative-prompt"]])
print(f"seed {args.seed}, {args.n} held-out scenes, {args.steps} steps; samples = inversion's UNet forward + backward per 50 steps")
print(f"{'method':<18}{'PSNR':>9}{'vs VAE':>9}{'worst vs NPI':>14}{'samples':>9}")
vae = np.mean([p for p, _ in rows["vae"]])
for label, r in rows.items():
    p = np.array([a for a, _ in r])
    print(f"{label:<18}{p.mean():>7.2f}dB{p.mean() - vae:>+7.2f}dB{(p - npi).min():>+12.2f}dB{np.mean([c for _, c in r]):>9.0f}")
