"""When does an edited object move? The object's place in each step's x0-prediction of an edit.

    .venv/bin/python docs/experiments/edit_trajectory.py --seed 11 --scenes 5,11,15 --kind background \
        [--controls '{"cross_replace_steps": 0.8}'] [--every 2] [--model DIR]

Makes the edit of `kind` of the held-out scenes chosen (the same scenes and random edits as
`swap_controls.py` and `redraft bench shapes` for that seed), with the demo's controls for the kind updated
by `--controls`, and reads the edit branch's predicted clean latent x0 (`ddim.predict_x0_eps`) after
decoding, every `--every` steps. Prints
per scene the object's offset (dx, dy, px) from where the truth has it at each step read. Early steps
of a small object read noisily; the step where the offset settles is where the place was decided.
"""

from __future__ import annotations

import argparse
import json
import random

import numpy as np
import torch

import redraft
from redraft.core import ddim, sampling
from redraft.shapes import world

parser = argparse.ArgumentParser()
parser.add_argument("--seed", type=int, default=11, help="scene seed (the benchmark's is 3)")
parser.add_argument("--scenes", default="5,11,15", help="indices of the held-out scenes, as swap_controls.py numbers them")
parser.add_argument("--kind", default="background", choices=world.EDIT_KINDS)
parser.add_argument("--controls", default="{}", help="JSON object of Controls fields over the demo's")
parser.add_argument("--every", type=int, default=2)
parser.add_argument("--model", default=None)
args = parser.parse_args()

editor = redraft.load(args.model)
predictions: list[torch.Tensor] = []
ddim_step = ddim.step


def recording_step(z, output, alpha, alpha_next, prediction_type):
    """ddim.step, keeping the step's x0-prediction of every branch (`ddim.predict_x0_eps`)."""
    predictions.append(ddim.predict_x0_eps(output, z, alpha, prediction_type)[0])
    return ddim_step(z, output, alpha, alpha_next, prediction_type)


sampling.ddim.step = recording_step  # the sampling loop's step, for this probe only
chosen = [int(k) for k in args.scenes.split(",")]
scenes = list(world.scenes(args.seed + 1, max(chosen) + 1, split="test"))
for k in chosen:
    scene, rng = scenes[k], random.Random(k)
    edits = {kind: world.random_edit(scene, kind, rng) for kind in world.EDIT_KINDS}
    pivots = editor.invert(world.render(scene), scene.prompt(), method="ddim", progress=False)
    predictions.clear()
    editor.edit(pivots, edits[args.kind].target_prompt, progress=False, **json.loads(args.controls))  # over the model's recipe
    truth, line = edits[args.kind].target, []
    for i in [*range(0, len(predictions) - 1, args.every), len(predictions) - 1]:
        r = world.read(np.asarray(editor.decode(predictions[i][1:2])[0]))
        line.append(f"{i}: {r.cx - truth.cx:+.1f},{r.cy - truth.cy:+.1f}")
    print(f"scene {k:2d} {args.kind} {getattr(scene, args.kind)} -> {getattr(truth, args.kind)} ({truth.size}):", "  ".join(line))
