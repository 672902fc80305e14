"""How far an edit acts, per kind of edit: the data behind `p2p.kinds.GLOBAL_SPREAD` and `PROBE_AT`.

    .venv/bin/python docs/experiments/edit_extent.py [--seed 11] [-n 12] [--at 0,0.5,0.8]

For random edits of held-out scenes (validation seed 11 by default: not the benchmark's 3 nor the demo's 7),
DDIM-inverts each scene under the edit's source prompt and probes its pivot at each fraction of the steps
in `--at` (`p2p.kinds.probe`: one conditional UNet pass of both prompts). Prints, per edit kind of the
shapes world and object size, the spread (participation ratio) of two maps:
- "eps": |eps(target) - eps(source)| per latent cell, what `p2p.kinds.edit_kinds` reads (DiffEdit's
  difference of noise estimates);
- "attn": the changed words' share of the cross-attention, what it read before.
A threshold separates local from global edits where every local kind's largest spread is below every
global kind's smallest.
"""

from __future__ import annotations

import argparse
import random

import numpy as np
import torch

import redraft
from redraft.p2p import kinds as K
from redraft.p2p import tokens as W
from redraft.shapes import world

parser = argparse.ArgumentParser()
parser.add_argument("--seed", type=int, default=11)
parser.add_argument("-n", type=int, default=12)
parser.add_argument("--at", default="0,0.5,0.8")
args = parser.parse_args()
torch.set_num_threads(1)
editor = redraft.load()
tokenizer = editor.pipeline.tokenizer
at = [float(a) for a in args.at.split(",")]
kinds = ("color", "shape", "background", "add-size", "size", "add-background")  # drawn in this order


def attention_spread(prompts: list[str], seen: K.Probe) -> float:
    """The changed words' mean share of the attention (source row for swapped words, target row for inserted)."""
    _, in_source, in_target = K.changed_words(*prompts)
    tokens = [W.word_tokens(tokenizer, p) for p in prompts]
    pieces = [K._shares(seen.maps[0], tokens[0])[..., tokens[0][i]] for i in in_source] + \
             [K._shares(seen.maps[1], tokens[1])[..., tokens[1][i]] for i in in_target]
    return K.spread(torch.cat(pieces, dim=-1).mean(-1))


rows = []
for k, scene in enumerate(world.scenes(args.seed + 1, args.n, split="test")):
    rng = random.Random(k)
    inversions = {}
    for kind in kinds:
        e = world.random_edit(scene, kind, rng)
        if e.source_prompt not in inversions:
            inversions[e.source_prompt] = editor.invert(world.render(scene), e.source_prompt, method="ddim", progress=False)
        inv = inversions[e.source_prompt]
        prompts = [e.source_prompt, e.target_prompt]
        cond = torch.cat([inv.prompt_embedding[None], editor.embed(prompts[1:])])
        schedule = editor.schedule(inv.steps)
        for a in at:
            i = min(int(a * inv.steps), inv.steps - 1)
            seen = K.probe(editor.unet, inv.pivots[i][None], schedule.timesteps[i], cond, i)
            eps = K.edit_kinds(tokenizer, prompts, seen)[0].spread
            rows.append((kind, scene.size, a, eps, attention_spread(prompts, seen)))
for a in at:
    print(f"\nprobe at {a} of the steps (seed {args.seed}, {args.n} scenes): spread min / median / max")
    for kind in kinds:
        for size in ("small", "large"):
            r = np.array([(x[3], x[4]) for x in rows if x[:3] == (kind, size, a)])
            if len(r):
                print(f"  {kind:<15} {size:<6} n={len(r):2d}  eps {r[:, 0].min():.3f} / {np.median(r[:, 0]):.3f} / "
                      f"{r[:, 0].max():.3f}   attn {r[:, 1].min():.3f} / {np.median(r[:, 1]):.3f} / {r[:, 1].max():.3f}")
