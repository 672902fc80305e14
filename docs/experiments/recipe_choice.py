"""Edits with no controls passed, as a new user makes them: the data behind the built-in model's recipe.

    .venv/bin/python docs/experiments/recipe_choice.py [--seed 11] [-n 12] [--recipe FILE.json | '{...}']
        [--sources negative-prompt,null-text,generated] [--kinds color,shape,background,size,add-size,add-background]

For held-out scenes of `--seed` (validation: 11; the benchmark's 3 and the demo's 7 are not used to choose),
makes one random edit of every kind (`world.random_edit`) and calls the API with no controls, so that the
model's editing recipe (`p2p.recipe`; `--recipe` puts another in its place) decides everything:
- "negative-prompt" / "null-text": the scene is inverted under the edit's source prompt, then edited;
- "generated": the source prompt is generated from a seed together with the target (`Editor.generate`);
  the truth is what the source branch shows (read back), with the edited attribute changed. A pair
  whose source branch is itself misdrawn is counted apart ("source misdrawn"), not as an edit.
Prints, per source and kind, the share right with the position kept (every attribute, the centre within
3 px) and the median shift, and the UNet passes per edit.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

import redraft
from redraft.p2p.recipe import Recipe
from redraft.shapes import world

parser = argparse.ArgumentParser()
parser.add_argument("--seed", type=int, default=11)
parser.add_argument("-n", type=int, default=12)
parser.add_argument("--recipe", default=None, help="a recipe JSON file or text ({'controls': ..., 'by_kind': ...})")
parser.add_argument("--sources", default="negative-prompt,null-text,generated")
parser.add_argument("--kinds", default="color,shape,background,size,add-size,add-background")
parser.add_argument("--steps", type=int, default=50)
parser.add_argument("--out", default=None, help="write the per-edit rows here (JSON)")
args = parser.parse_args()

editor = redraft.load()
if args.recipe:
    text = Path(args.recipe).read_text() if Path(args.recipe).is_file() else args.recipe
    editor.recipe = Recipe.from_json(json.loads(text))
kinds = args.kinds.split(",")
rows: list[dict] = []


def truth_of(image, e: world.Edit) -> world.Scene | None:
    """What the generated source shows, with the edit's attribute set to the target's (None: misdrawn)."""
    r = world.read(np.asarray(image))
    if not all(world.agrees(r, e.source_prompt).values()) or not np.isfinite(r.cx):
        return None
    lo, hi = world.position_range(r.size)
    seen = world.Scene(r.shape, r.color, r.size, r.background, int(np.clip(round(r.cx), lo, hi)),
                       int(np.clip(round(r.cy), lo, hi)))
    attribute = e.kind.removeprefix("add-")
    return seen.replace(**{attribute: getattr(e.target, attribute)})


for k, scene in enumerate(tqdm(world.scenes(args.seed + 1, args.n, split="test"), desc="scenes")):
    rng = random.Random(k)
    edits = [world.random_edit(scene, kind, rng) for kind in kinds]
    by_source: dict[str, list[world.Edit]] = {}
    for e in edits:
        by_source.setdefault(e.source_prompt, []).append(e)
    for source in args.sources.split(","):
        for prompt, group in by_source.items():
            targets = [e.target_prompt for e in group]
            if source == "generated":
                result = editor.generate([prompt, *targets], seed=1000 * args.seed + k, steps=args.steps, progress=False)
                truths = [truth_of(result.images[0], e) for e in group]
            else:
                inv = editor.invert(world.render(scene), prompt, method=source, steps=args.steps, progress=False)
                result = editor.edit(inv, targets, progress=False)
                truths = [e.target for e in group]
            for j, (e, truth) in enumerate(zip(group, truths)):
                row = dict(source=source, kind=e.kind, scene=k, target=e.target_prompt,
                           controls=result.controls_of(j + 1).changed(), unet=result.unet_forward / len(group))
                if truth is None:
                    row.update(misdrawn=True)
                else:
                    same, shift = world.outcome(result.images[j + 1], truth)
                    row.update(misdrawn=False, right=bool(same and shift <= world.POSITION_TOLERANCE),
                               attributes=bool(same), shift=float(shift))
                rows.append(row)

print(f"seed {args.seed}, {args.n} scenes, recipe: {editor.recipe.chosen}")
print(f"{'source':<16}" + "".join(f"{kind:>16}" for kind in kinds) + f"{'all':>10}")
for source in args.sources.split(","):
    mine = [r for r in rows if r["source"] == source and not r["misdrawn"]]
    cells = []
    for kind in kinds:
        these = [r for r in mine if r["kind"] == kind]
        cells.append(f"{np.mean([r['right'] for r in these]):>9.0%} {np.median([r['shift'] for r in these]):>4.1f}px"
                     if these else f"{'-':>16}")
    misdrawn = sum(r["misdrawn"] for r in rows if r["source"] == source)
    print(f"{source:<16}" + "".join(cells) + f"{np.mean([r['right'] for r in mine]):>10.0%}"
          + (f"  ({misdrawn} sources misdrawn)" if misdrawn else ""))
if args.out:
    Path(args.out).write_text(json.dumps(rows, indent=1))
