"""Does the model keep the object's place when the prompt changes one attribute mid-way? The pair skill
the counterfactual pairs of the recipe train, probed without any editing control.

    .venv/bin/python docs/experiments/pair_skill.py --kind background --at 15,25 [-n 48] [--guidance G] [--model DIR]

For n pairs (a scene, the same scene with one attribute of `--kind` swapped), drawn from the training
pairs of `Recipe()` (`counterfactual_scenes`: pairs the model was trained on) and from held-out scenes
(`world.random_edit`), the source's latent is noised forward to step k of a 50-step DDIM chain (Gaussian
noise, seed 0) and sampled on from there in four ways, each scored as the benchmark scores an edit (every
attribute of the target right, centre within 3 px):

- source: with the source's prompt (the baseline: what a noisy latent at step k keeps of the place);
- target: with the swapped prompt (the pair skill);
- first x0 re-noised: the target prompt's x0-prediction at step k, noised again with the same noise, then
  sampled on with the target prompt (whether the first prediction or the steps after it lose the place);
- oracle: the target scene's own latent noised with the same noise (what a latent with the right content keeps).
"""

from __future__ import annotations

import argparse
import random

import numpy as np
import torch

import redraft
from redraft.core import ddim
from redraft.bench.shapes import kept
from redraft.core.sampling import denoise, guided_output
from redraft.shapes import world
from redraft.shapes.train import Recipe, counterfactual_scenes, training_scenes

parser = argparse.ArgumentParser()
parser.add_argument("--kind", default="background", choices=world.SWAPS)
parser.add_argument("--at", default="15,25", help="steps k of the 50-step chain to start from (25: t = 481)")
parser.add_argument("-n", type=int, default=48)
parser.add_argument("--guidance", type=float, default=None, help="None: the model's")
parser.add_argument("--model", default=None)
args = parser.parse_args()

editor = redraft.load(args.model)
guidance = editor.guidance_scale if args.guidance is None else args.guidance
recipe = Recipe()
trained = [(s, t) for s, (kind, t) in zip(training_scenes(recipe), counterfactual_scenes(recipe)) if kind == args.kind]
held_out = [(s, world.random_edit(s, args.kind, random.Random(i)).target)
            for i, s in enumerate(world.scenes(12, args.n, split="test"))]
schedule = editor.schedule(50)
empty = editor.embed([""] * args.n)


def right(latents: torch.Tensor, truths: list) -> float:
    """Share of the decoded latents that pass the benchmark's test of an edit (`bench.shapes.kept`)."""
    return float(np.mean([kept(image, truth) for image, truth in zip(editor.decode(latents), truths)]))


for name, pairs in (("training pairs", trained[:args.n]), ("held-out pairs", held_out)):
    sources, targets = [s for s, _ in pairs], [t for _, t in pairs]
    x0 = editor.encode([world.render(s) for s in sources])
    x0_target = editor.encode([world.render(t) for t in targets])
    cond_source = editor.embed([s.prompt() for s in sources])
    cond = editor.embed([t.prompt() for t in targets])
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    for k in [int(k) for k in args.at.split(",")]:
        a, t = schedule.alphas[k], schedule.timesteps[k]

        def sample(z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            return denoise(editor.unet, schedule, z, c, empty, guidance, start=k, progress=False)

        z = ddim.noised(x0, eps, a)
        with torch.no_grad():
            first, _ = ddim.predict_x0_eps(guided_output(editor.unet, z, t, cond, empty, guidance), z, a,
                                           schedule.prediction_type)
        print(f"{name}, {args.kind} swaps, from step {k} (t = {t}): "
              f"source {right(sample(z, cond_source), sources):.0%}  "
              f"target {right(sample(z, cond), targets):.0%}  "
              f"first x0 re-noised {right(sample(ddim.noised(first, eps, a), cond), targets):.0%}  "
              f"oracle {right(sample(ddim.noised(x0_target, eps, a), cond), targets):.0%}", flush=True)
