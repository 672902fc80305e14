"""Direct Inversion after negative-prompt inversion: which unconditional embedding the edit should use.

    .venv/bin/python docs/experiments/direct_nulls.py [--seed 11] [--first 0] [--last 6]

For validation scenes of `--seed` (11; not the benchmark's 3 nor the demo's 7), one random colour, shape and
background swap each; the scene is inverted by negative-prompt inversion (NPI) and edited with the built-in
model's editing recipe (`p2p.recipe`, Direct Inversion on) twice:
- "npi": as `Editor.edit` does today, every branch guided against the inversion's nulls, which for NPI are
  the source prompt's embedding, so the target is pushed away from the source's words by the full scale;
- "npi-emptynull": the same edit guided against the empty prompt, as Direct Inversion's own code does after
  DDIM inversion. Direct Inversion keeps the source branch on its pivots whatever its nulls, so only the
  edits change.
Prints, per variant and kind, the share right with the object within 3 px of its place.
"""

from __future__ import annotations

import argparse
import dataclasses
import random

import numpy as np
import torch

import redraft
from redraft.shapes import world

parser = argparse.ArgumentParser()
parser.add_argument("--seed", type=int, default=11)
parser.add_argument("--first", type=int, default=0)
parser.add_argument("--last", type=int, default=6)
args = parser.parse_args()

editor = redraft.load()
scenes = list(world.scenes(args.seed + 1, args.last, split="test"))
empty = editor.embed([""])
right: dict[tuple[str, str], list[bool]] = {}
for k in range(args.first, args.last):
    rng = random.Random(k)
    for e in [world.random_edit(scenes[k], kind, rng) for kind in ("color", "shape", "background")]:
        inv = editor.invert(world.render(scenes[k]), e.source_prompt, method="negative-prompt", steps=50, progress=False)
        variants = {"npi": inv, "npi-emptynull": dataclasses.replace(inv, null_embeddings=empty.to(inv.null_embeddings))}
        for name, inversion in variants.items():
            with torch.no_grad():
                r = editor.edit(inversion, [e.target_prompt], progress=False)
            same, shift = world.outcome(r.images[1], e.target)
            right.setdefault((name, e.kind), []).append(bool(same and shift <= world.POSITION_TOLERANCE))
            print(k, e.kind, name, right[name, e.kind][-1], f"{shift:.1f}px", flush=True)
for (name, kind), values in sorted(right.items()):
    print(f"{name:<16}{kind:<12}{np.mean(values):.0%} of {len(values)}")
