"""Choose the built-in model's default guidance scale on validation prompts, not the benchmark's.

    .venv/bin/python docs/experiments/guidance_sweep.py [--model DIR] [--scales 3,4,5,6,7.5] [--seed 11] [-n 200]

Prints the generation figure of `redraft bench shapes` (every named attribute read back right, 50
steps) at each scale, on held-out prompts drawn from another seed than the benchmark's (3). The
chosen scale goes into the model folder's redraft.json (`redraft.loading.recommended_guidance`).
"""

from __future__ import annotations

import argparse

import redraft
from redraft.bench.shapes import generation

parser = argparse.ArgumentParser()
parser.add_argument("--model", default=None)
parser.add_argument("--scales", default="3,4,5,6,7.5")
parser.add_argument("--seed", type=int, default=11)
parser.add_argument("-n", type=int, default=200)
args = parser.parse_args()
editor = redraft.load(args.model)
for scale in (float(s) for s in args.scales.split(",")):
    g = generation(editor, args.n, guidance_scale=scale, seed=args.seed)
    print(f"guidance {scale:g}: all {g['all']:.1%}  " + "  ".join(f"{k} {v:.1%}" for k, v in g.items() if k != "all"),
          flush=True)
