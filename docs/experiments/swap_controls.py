"""Word swaps of held-out scenes under chosen editing controls, only the swap kinds asked for.

    .venv/bin/python docs/experiments/swap_controls.py --kinds size,background \
        [--controls '{"cross_replace_steps": 0.5}'] [--word-cross 0 | --blend] [--seed 3] [-n 24] [--model DIR] [--out swaps.png]

Runs the edits of `redraft bench shapes` (the same scenes and the same random edits for seed 3, the
benchmark's) but only the kinds asked for, which makes a sweep of one control 2 to 3 times faster than
the whole benchmark. Controls are the model's recipe for each kind (`p2p.recipe`, Direct Inversion from DDIM's
pivots) updated by `--controls`; `--word-cross F` gives the swapped word its own cross-attention window F and every
other token the `cross_replace_steps` of the controls (P2P's per-word `cross_replace_steps`); `--blend` blends each
edit locally on its kind's words as `redraft bench shapes --blend` does (one edit at a time). Use another
`--seed` to choose controls on scenes the benchmark does not score. Prints, per kind, the share of edits
right (every attribute and the position within 3 px), right with the position aside, and the median shift;
writes a grid per scene: source, then the truth and the edit of each kind. `--failures` also lists every
edit that failed: the attributes read wrong, the truth's centre (the source's, clamped into range when the
size changes), the object's move from it, and how many separate regions the reader
took for the object (more than one: a detached ghost pulled its centre).
"""

from __future__ import annotations

import argparse
import json
import random

import numpy as np

import redraft
from redraft.bench.shapes import blend_words, record
from redraft.io.draw import grid
from redraft.shapes import world

parser = argparse.ArgumentParser()
parser.add_argument("--kinds", default="color,shape,size,background")
parser.add_argument("--controls", default="{}", help="JSON object of Controls fields over the demo's")
parser.add_argument("--word-cross", type=float, default=None)
parser.add_argument("--blend", action="store_true", help="blend each edit locally on its kind's words "
                    "(`redraft.bench.shapes.blend_words`: background swaps keep the object)")
parser.add_argument("--seed", type=int, default=3, help="scene seed (the benchmark's is 3)")
parser.add_argument("-n", type=int, default=24)
parser.add_argument("--model", default=None)
parser.add_argument("--out", default=None, help="PNG of the edits")
parser.add_argument("--failures", action="store_true", help="list the failed edits and what failed")
args = parser.parse_args()


def regions(image) -> int:
    """How many 4-connected regions the pixels the reader counts as the object form."""
    todo = world.object_pixels(np.asarray(image, dtype=float))[1]
    count = 0
    while todo.any():
        count += 1
        stack = [tuple(np.argwhere(todo)[0])]
        while stack:
            y, x = stack.pop()
            if 0 <= y < todo.shape[0] and 0 <= x < todo.shape[1] and todo[y, x]:
                todo[y, x] = False
                stack += [(y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)]
    return count


kinds = args.kinds.split(",")
if not set(kinds) <= set(world.SWAPS):
    parser.error(f"--kinds takes word swaps (color, shape, size, background), not {args.kinds}")
if args.blend and args.word_cross is not None:
    parser.error("--blend and --word-cross each make their own edits; give one of them")
overrides = json.loads(args.controls)
controls = {kind: dict(overrides) for kind in kinds}  # over the model's recipe
editor = redraft.load(args.model)
rows: dict[str, list] = {}  # `record`'s: per kind, right / attributes / shift
failures: list[str] = []
pictures = []
for k, scene in enumerate(world.scenes(args.seed + 1, args.n, split="test")):  # as the benchmark draws them
    rng = random.Random(k)
    edits = {kind: world.random_edit(scene, kind, rng) for kind in world.EDIT_KINDS}
    pivots = editor.invert(world.render(scene), scene.prompt(), method="ddim", progress=False)  # swaps: the full prompt
    if args.blend:  # each kind its own blend words: one edit at a time
        images = [editor.edit(pivots, edits[kind].target_prompt, progress=False, **controls[kind],
                              **dict(zip(("blend", "blend_exclude"), blend_words(edits[kind]))))[1]
                  for kind in kinds]
    elif args.word_cross is None:  # a batch per set of controls, as the benchmark edits
        batches: dict[str, list] = {}
        for kind in kinds:
            batches.setdefault(json.dumps(controls[kind], sort_keys=True), []).append(kind)
        edited = {}
        for batch in batches.values():
            edited |= dict(zip(batch, editor.edit(pivots, [edits[kind].target_prompt for kind in batch],
                                                  progress=False, **controls[batch[0]])[1:]))
        images = [edited[kind] for kind in kinds]
    else:  # each swapped word its own window: one edit at a time
        images = [editor.edit(pivots, edits[kind].target_prompt, progress=False,
                              **{**controls[kind], "cross_replace_steps": {"default_": controls[kind].get("cross_replace_steps", 0.8),
                                                                     edits[kind].word: args.word_cross}})[1]
                  for kind in kinds]
    pictures.append(world.render(scene))
    for kind, image in zip(kinds, images):
        record(rows, kind, image, edits[kind].target)
        if args.failures and not rows[kind][-1]:
            truth, read = edits[kind].target, world.read(np.asarray(image))
            wrong = [a for a in world.ATTRIBUTES if getattr(read, a) != getattr(truth, a)]
            failures.append(f"scene {k:2d} {kind:>10} to {getattr(truth, kind):8} ({truth.size} on {truth.background}): "
                            f"wrong {','.join(wrong) or '-'}; truth at ({truth.cx}, {truth.cy}) from ({scene.cx}, {scene.cy}); moved dx {read.cx - truth.cx:+.1f} dy {read.cy - truth.cy:+.1f} px; "
                            f"{regions(image)} region(s)")
        pictures += [world.render(edits[kind].target), image]
    print(f"scene {k + 1}/{args.n}", end="\r", flush=True)
print(*failures, sep="\n")
for kind in kinds:
    print(f"{kind:>10}: right {np.mean(rows[kind]):.0%}  position aside {np.mean(rows[f'{kind} attributes']):.0%}  "
          f"median shift {np.median(rows[f'{kind} shift']):.1f} px")
if args.out:
    grid(pictures, [""] * len(pictures), cell=96, columns=1 + 2 * len(kinds)).save(args.out)
    print(f"wrote {args.out}")
