"""How spread the changed words' attention is, per kind of edit: the data behind `p2p.kinds.GLOBAL_SPREAD`.

    .venv/bin/python docs/experiments/edit_extent.py [--seed 11] [-n 16] [--at 0,0.25,0.5]

For random edits of scenes (validation seed 11 by default: not the benchmark's 3 nor the demo's 7), probes
the source latent where an edit would start (the NPI inversion's pivot at each fraction of the steps in
`--at`, and for generation the seed's x_T) and prints, per edit kind of the shapes world, the spreads
(participation ratios) of the changed words that `p2p.kinds.edit_kinds` reads. A threshold separates
local from global edits where every local kind's largest spread is below every global kind's smallest.
"""

from __future__ import annotations

import argparse
import random

import numpy as np
import torch

import redraft
from redraft.p2p import kinds as K
from redraft.p2p.kinds import edit_kinds, probe_maps
from redraft.shapes import world

parser = argparse.ArgumentParser()
parser.add_argument("--seed", type=int, default=11)
parser.add_argument("-n", type=int, default=16)
parser.add_argument("--at", default="0,0.25,0.5")
parser.add_argument("--measure", default="pr", help="pr | pr-min | half")
args = parser.parse_args()
torch.set_num_threads(1)
editor = redraft.load()
def measure(m):
    m = m.float().flatten()
    if args.measure == "pr-min":
        m = m - m.min()
    if args.measure == "half":
        m = (m - m.min()) / (m.max() - m.min() + 1e-12)
        return float((m > 0.5).float().mean())
    e = float((m * m).sum())
    return float(m.sum() ** 2 / (m.numel() * e)) if e > 0 else 1.0
K.spread = measure
at = [float(a) for a in args.at.split(",")]
rng = random.Random(args.seed)
kinds = ("color", "shape", "size", "add-size", "background", "add-background")
spreads: dict[tuple, list] = {}
for scene in world.scenes(args.seed, args.n, split="test"):
    for kind in kinds:
        e = world.random_edit(scene, kind, rng)
        prompts = [e.source_prompt, e.target_prompt]
        inv = editor.invert(world.render(scene), e.source_prompt, method="negative-prompt", progress=False)
        cond = torch.cat([inv.prompt_embedding[None], editor.embed(prompts[1:])])
        schedule = editor.schedule(inv.steps)
        total = 0
        for a in at:
            i = int(a * inv.steps)
            maps = probe_maps(editor.unet, inv.pivots[i][None], schedule.timesteps[i], cond, i)
            total = total + maps
            spreads.setdefault((kind, f"inverted@{a}"), []).append(edit_kinds(editor.pipeline.tokenizer, prompts, maps)[0].spread)
        spreads.setdefault((kind, "inverted@mean"), []).append(edit_kinds(editor.pipeline.tokenizer, prompts, total)[0].spread)
        x_T = editor.initial_noise(int(rng.random() * 1e6))
        maps = probe_maps(editor.unet, x_T, schedule.timesteps[0], editor.embed(prompts), 0)
        spreads.setdefault((kind, "generated@0"), []).append(edit_kinds(editor.pipeline.tokenizer, prompts, maps)[0].spread)
for where in sorted({w for _, w in spreads}):
    print(f"\nprobe: {where}")
    for kind in kinds:
        s = np.array(spreads[(kind, where)])
        print(f"  {kind:<15} min {s.min():.3f}  median {np.median(s):.3f}  max {s.max():.3f}")
