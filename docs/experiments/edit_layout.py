"""Why word swaps fail on the built-in model: the probes behind docs/shapes-model.md ("editing, the open problem").

    .venv/bin/python docs/experiments/edit_layout.py [--scenes 6]

An experiment, not API: it reaches into `Editor._p2p` and `edit.plan` to try controls redraft does not
offer (keeping every branch on the source's pivots for the first steps; self-attention injected at
every resolution). Prints, for seed 5, where the object lands when one word changes, then the share of
word swaps right (`redraft.bench.shapes.kept`) over negative-prompt inversions of held-out scenes.
"""

from __future__ import annotations

import argparse
import dataclasses
import random

import numpy as np
import torch

import redraft
import redraft.editor as editor_module
from redraft.bench.shapes import SEED, kept
from redraft.edit import Controls
from redraft.editor import per_step_nulls
from redraft.shapes import world

SWAPS = ("color", "shape", "size", "background")


def edit(ed, inv, targets, guidance: float, skip: int, self_everywhere: bool, **controls):
    """`Editor.edit` with two extra knobs: the first `skip` steps of every branch are the source's
    pivots, and `self_everywhere` lifts P2P's limit of self-attention injection to 1/4 resolution."""
    prompts = [inv.prompt, *targets]
    b = len(prompts)
    cond = torch.cat([inv.prompt_embedding[None], ed.embed(targets)])
    uncond = per_step_nulls(inv)[:, None].expand(-1, b, -1, -1)
    x_T = inv.x_T[None].expand(b, -1, -1, -1)

    def on_pivots(i, z):
        return inv.pivots[i + 1][None].expand_as(z).clone() if i < skip else None

    plan = editor_module.plan
    if self_everywhere:
        editor_module.plan = lambda *a, **k: dataclasses.replace(plan(*a, **k), self_max_pixels=10**9)
    try:
        z = ed._p2p(prompts, x_T, cond, uncond, guidance, ed.schedule(inv.steps), Controls(**controls), on_pivots,
                    False, "editing")
    finally:
        editor_module.plan = plan
    return ed.decode(z)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenes", type=int, default=6)
    args = parser.parse_args()
    ed = redraft.load()

    source = "a blue diamond on a gray background"
    targets = ["a green diamond on a gray background", "a blue square on a gray background",
               "a blue diamond on a black background"]
    for name, controls in (("no control", dict(cross_replace_steps=0.0, self_replace_steps=0.0)), ("P2P default", {})):
        readings = [world.read(np.asarray(im)) for im in ed.generate([source, *targets], seed=5, progress=False, **controls)]
        print(f"seed 5, {name:<12}", "  ".join(f"{r.color} {r.shape} on {r.background} at ({r.cx:.0f}, {r.cy:.0f})"
                                                  for r in readings))

    configs = {  # name: (guidance, skip, self_everywhere, controls)
        "P2P default (cross 0.8, self 0.4)": (7.5, 0, False, {}),
        "guidance 1.5": (1.5, 0, False, {}),
        "first 30 of 50 steps on the pivots": (7.5, 30, False, {}),
        "all attention injected at every step": (7.5, 0, True, dict(cross_replace_steps=1.0, self_replace_steps=1.0)),
    }
    right = {name: {k: [] for k in SWAPS} for name in configs}
    for k, scene in enumerate(world.scenes(SEED + 1, args.scenes, split="test")):
        rng = random.Random(k)
        edits = [world.random_edit(scene, kind, rng) for kind in SWAPS]
        inv = ed.invert(world.render(scene), scene.prompt(), method="negative-prompt", progress=False)
        for name, (guidance, skip, everywhere, controls) in configs.items():
            images = edit(ed, inv, [e.target_prompt for e in edits], guidance, skip, everywhere, **controls)
            for e, image in zip(edits, images[1:]):
                right[name][e.kind].append(kept(image, e.target))
    print(f"\nword swaps right over {args.scenes} negative-prompt inversions")
    print(f"{'':<40}" + "".join(f"{k:>12}" for k in SWAPS) + f"{'all':>8}")
    for name, per in right.items():
        every = sum(per.values(), [])
        print(f"{name:<40}" + "".join(f"{np.mean(v):>12.0%}" for v in per.values()) + f"{np.mean(every):>8.0%}")


if __name__ == "__main__":
    main()
