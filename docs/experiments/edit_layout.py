"""Why word swaps fail on the built-in model: the probes behind docs/shapes-model.md ("editing, the open problem").

    .venv/bin/python docs/experiments/edit_layout.py [--scenes 6] [--model DIR]

An experiment, not API: it reaches into `Editor._p2p` and `edit.plan` to try controls redraft does not
offer (keeping every branch on the source's pivots for the first steps; self-attention injected at
every resolution; the source prompt's embeddings in the coarse cross-attention layers of the edits). Prints, for seed 5, where the object lands when one word changes, then the share of
word swaps right (`redraft.bench.shapes.kept`) over negative-prompt inversions of held-out scenes.
"""

from __future__ import annotations

import argparse
import dataclasses
import random

import numpy as np
import torch

import redraft
import redraft.p2p.attention as attention_module
import redraft.editor as editor_module
from redraft.bench.shapes import SEED, kept
from redraft.p2p.controls import Controls
from redraft.core.sampling import denoise
from redraft.shapes import world


def source_text_below(max_pixels: int):
    """Make every edit branch read the source prompt in cross-attention layers of at most `max_pixels`."""
    call = attention_module.ControlProcessor.__call__

    def patched(self, attn, hidden_states, encoder_hidden_states=None, *args, **kwargs):
        rows = self.control.cond_rows
        pixels = hidden_states.shape[-1] * hidden_states.shape[-2] if hidden_states.ndim == 4 else hidden_states.shape[1]
        if encoder_hidden_states is not None and pixels <= max_pixels and rows.stop - rows.start > 1:
            encoder_hidden_states = encoder_hidden_states.clone()
            encoder_hidden_states[rows.start + 1:rows.stop] = encoder_hidden_states[rows.start]
        return call(self, attn, hidden_states, encoder_hidden_states, *args, **kwargs)

    attention_module.ControlProcessor.__call__ = patched
    return call


def edit(ed, inv, targets, guidance: float, skip: int, self_everywhere: bool, source_below: int = 0, **controls):
    """`Editor.edit` with three extra knobs: the first `skip` steps of every branch are the source's
    pivots, `self_everywhere` lifts P2P's limit of self-attention injection to 1/4 resolution, and
    `source_below` > 0 gives the edits the source prompt in cross-attention layers of that many pixels
    or fewer (their own prompt only in the finer ones)."""
    prompts = [inv.prompt, *targets]
    b = len(prompts)
    cond = torch.cat([inv.prompt_embedding[None], ed.embed(targets)])
    uncond = inv.per_step_nulls()[:, None].expand(-1, b, -1, -1)
    x_T = inv.x_T[None].expand(b, -1, -1, -1)

    def on_pivots(i, z):
        return inv.pivots[i + 1][None].expand_as(z).clone() if i < skip else None

    plan, call = editor_module.plan, source_text_below(source_below) if source_below else None
    if self_everywhere:
        editor_module.plan = lambda *a, **k: dataclasses.replace(plan(*a, **k), self_max_pixels=10**9)
    try:
        z = ed._p2p(prompts, x_T, cond, uncond, guidance, ed.schedule(inv.steps), Controls(**controls), on_pivots,
                    False, "editing")
    finally:
        editor_module.plan = plan
        if call is not None:
            attention_module.ControlProcessor.__call__ = call
    return ed.decode(z)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenes", type=int, default=6, help="inverted scenes for the table of swaps (0: skip it)")
    parser.add_argument("--model", default=None, help="a shapes-world model folder (default: the built-in one)")
    args = parser.parse_args()
    ed = redraft.load(args.model)

    source = "a blue diamond on a gray background"
    targets = ["a green diamond on a gray background", "a blue square on a gray background",
               "a blue diamond on a black background"]
    for name, controls in (("no control", dict(cross_replace_steps=0.0, self_replace_steps=0.0)), ("P2P default", {})):
        readings = [world.read(np.asarray(im)) for im in ed.generate([source, *targets], seed=5, progress=False, **controls)]
        print(f"seed 5, {name:<12}", "  ".join(f"{r.color} {r.shape} on {r.background} at ({r.cx:.0f}, {r.cy:.0f})"
                                                  for r in readings))

    print("\nno control, seeds 5-20: how far one changed word moves the object (median; share within 3 px)")
    for guidance in (1.0, 7.5):
        moved = []
        for seed in range(5, 21):
            images = ed.generate([source, *targets], seed=seed, guidance_scale=guidance, progress=False,
                                 cross_replace_steps=0.0, self_replace_steps=0.0)
            r = [world.read(np.asarray(im)) for im in images]
            moved += [float(np.hypot(a.cx - r[0].cx, a.cy - r[0].cy)) for a in r[1:]]
        print(f"guidance {guidance}: {np.median(moved):.1f} px; {np.mean(np.array(moved) <= 3):.0%} within 3 px")

    print("\nthe same, with the targets' embeddings partly the source's: where the prompt is read")
    tokenizer = ed.pipeline.tokenizer
    prompts = [source, *targets]
    plain = ed.embed(prompts)
    n_words = len(tokenizer(source).input_ids)  # BOS, the words, EOS; padding after
    ids = [tokenizer(p, padding="max_length", max_length=tokenizer.model_max_length).input_ids for p in prompts]
    only_swapped = plain.clone()
    for j in range(1, len(prompts)):
        same = torch.tensor([a == b for a, b in zip(ids[0], ids[j])])
        only_swapped[j][same] = plain[0][same]
    padding_from_source = plain.clone()
    padding_from_source[1:, n_words:] = plain[0, n_words:]
    for name, embeddings in (("plain", plain), ("padding tokens from the source", padding_from_source),
                             ("only the swapped token differs", only_swapped)):
        moved, right = [], []
        for seed in range(5, 21):
            x_T = ed.initial_noise(seed).expand(len(prompts), -1, -1, -1)
            z = denoise(ed.unet, ed.schedule(50), x_T, embeddings, ed.embed([""] * len(prompts)), 7.5, progress=False)
            r = [world.read(np.asarray(im)) for im in ed.decode(z)]
            moved += [float(np.hypot(a.cx - r[0].cx, a.cy - r[0].cy)) for a in r[1:]]
            right += [all(world.agrees(a, p).values()) for a, p in zip(r[1:], prompts[1:])]
        print(f"{name:<32} moved {np.median(moved):.1f} px, {np.mean(np.array(moved) <= 3):.0%} within 3 px; "
              f"targets drawn right {np.mean(right):.0%}")

    if args.scenes == 0:
        return
    configs = {  # name: (guidance, skip, self_everywhere, source_below, controls)
        "P2P default (cross 0.8, self 0.4)": (7.5, 0, False, 0, {}),
        "guidance 1.5": (1.5, 0, False, 0, {}),
        "first 10 of 50 steps on the pivots": (7.5, 10, False, 0, {}),
        "first 20 of 50 steps on the pivots": (7.5, 20, False, 0, {}),
        "first 30 of 50 steps on the pivots": (7.5, 30, False, 0, {}),
        "all attention injected at every step": (7.5, 0, True, 0, dict(cross_replace_steps=1.0, self_replace_steps=1.0)),
        "target prompt only in the finest layers": (7.5, 0, False, 64, {}),
    }
    right = {name: {k: [] for k in world.SWAPS} for name in configs}
    for k, scene in enumerate(world.scenes(SEED + 1, args.scenes, split="test")):
        rng = random.Random(k)
        edits = [world.random_edit(scene, kind, rng) for kind in world.SWAPS]
        inv = ed.invert(world.render(scene), scene.prompt(), method="negative-prompt", progress=False)
        for name, (guidance, skip, everywhere, below, controls) in configs.items():
            images = edit(ed, inv, [e.target_prompt for e in edits], guidance, skip, everywhere, below, **controls)
            for e, image in zip(edits, images[1:]):
                right[name][e.kind].append(kept(image, e.target))
    print(f"\nword swaps right over {args.scenes} negative-prompt inversions")
    print(f"{'':<40}" + "".join(f"{k:>12}" for k in world.SWAPS) + f"{'all':>8}")
    for name, per in right.items():
        every = sum(per.values(), [])
        print(f"{name:<40}" + "".join(f"{np.mean(v):>12.0%}" for v in per.values()) + f"{np.mean(every):>8.0%}")


if __name__ == "__main__":
    main()
