"""`redraft bench shapes`: the model measured against the shapes world, on scenes training never saw.

- generation: share of prompts (all grammar forms) whose every named attribute reads back right;
- VAE ceiling: PSNR of encode then decode;
- inversion: PSNR of the reconstruction, per method;
- editing: per edit kind of the spec, share of edits whose target attribute is right while the other
  attributes and the position (within 3 px) are kept; beside it, the share right with the position
  aside and the median shift of the object, which tell a misdrawn edit from a moved one;
- describe: share of held-out scenes whose full prompt the model's describer predicts exactly.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..io.files import write_json
from ..eval.metrics import psnr
from ..core.sampling import denoise
from ..shapes import world
from ..shapes.world import POSITION_TOLERANCE, kept, outcome, shift_of  # noqa: F401 (re-exported)
from .describer_scores import evaluate

SEED = 3  # held-out scenes: split "test", never used in training


@torch.no_grad()
def generation(editor, n: int, steps: int = 50, guidance_scale: float | None = None, batch: int = 32,
               seed: int = SEED) -> dict:
    """Share of n held-out prompts whose every named attribute reads back right (guidance: the model's).
    Another `seed` draws other held-out prompts, e.g. to choose settings without looking at the benchmark's."""
    guidance_scale = editor.guidance_scale if guidance_scale is None else guidance_scale
    rng = random.Random(seed)
    scenes = world.scenes(seed, n, split="test")
    prompts = [world.random_prompt(s, rng) for s in scenes]
    schedule = editor.schedule(steps)
    per: dict[str, list[bool]] = {}
    for start in tqdm(range(0, n, batch), desc="generation"):
        chunk = prompts[start:start + batch]
        x_T = torch.cat([editor.initial_noise(1000 + start + k) for k in range(len(chunk))])
        z = denoise(editor.unet, schedule, x_T, editor.embed(chunk), editor.embed([""] * len(chunk)),
                    guidance_scale, progress=False)
        for image, prompt in zip(editor.decode(z), chunk):
            agree = world.agrees(world.read(np.asarray(image)), prompt)
            per.setdefault("all", []).append(all(agree.values()))
            for k, v in agree.items():
                per.setdefault(k, []).append(v)
    return {k: float(np.mean(v)) for k, v in per.items()}


def vae_ceiling(editor, n: int = 64) -> float:
    images = [world.render(s) for s in world.scenes(SEED, n, split="test")]
    return float(np.mean([psnr(a, b) for a, b in zip(images, editor.decode(editor.encode(images)))]))


def blend_words(e: world.Edit) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """P2P's local blending for an edit: the words whose attention marks what it may change, and the
    words whose region is kept (`Controls.blend_exclude`). Background edits change everything but the
    shape's noun ("background" attends to the object too on this model); the others change the
    shape's noun in the source and the target prompt."""
    nouns = tuple(dict.fromkeys((e.source.shape, e.target.shape)))
    if e.kind.endswith("background"):
        return (), nouns
    return nouns, ()


def record(rows: dict, kind: str, image, truth: world.Scene) -> None:
    same, shift = outcome(image, truth)
    rows.setdefault(kind, []).append(same and shift <= POSITION_TOLERANCE)  # `kept`, the reading done once
    rows.setdefault(f"{kind} attributes", []).append(same)  # the position aside
    rows.setdefault(f"{kind} shift", []).append(shift)


def describing(editor, n: int = 256, seed: int = SEED) -> dict:
    """The model's describer on n held-out scenes: exact prompts, attributes, mean cosine
    (`bench.describer_scores.evaluate`); {"not_run": why} for a model without a describer."""
    from ..errors import InputError

    try:
        describer = editor.describer
    except InputError as e:
        return {"not_run": str(e)}
    return evaluate(describer, world.scenes(seed, n, split="test"))


def inversion_and_editing(editor, n: int, methods: list[str], steps: int = 50, blend: bool = False,
                          guidance_scale: float | None = None, seed: int = SEED,
                          by_kind: dict[str, dict] | None = None, **controls) -> dict:
    """Invert n held-out scenes with each method and make one edit of every kind of each.

    Methods: "ddim", "null-text", "negative-prompt", or "direct" (Direct Inversion: a DDIM inversion
    whose source branch is kept on its pivot while editing). The reconstruction is the edit's source
    branch, which equals `reconstruct(inversion)`. With `blend`, every edit is locally blended
    (`LocalBlend`) on its `blend_words`. `guidance_scale`: None is the model's. `by_kind` holds the
    controls that differ for some edit kinds, over `controls` (e.g. `{"background": {"feature_replace_steps": 0.0}}`).
    Another `seed` draws other held-out scenes, to choose controls on without looking at the benchmark's.
    """
    scenes = world.scenes(seed + 1, n, split="test")
    by_kind = by_kind or {}
    out: dict = {}
    for method in methods:
        direct = method == "direct"
        rows: dict[str, list] = {"psnr": [], "seconds": []}
        for k, scene in enumerate(tqdm(scenes, desc=f"{method}: invert + edit")):
            rng = random.Random(k)
            by_source: dict[str, list] = {}
            for kind in world.EDIT_KINDS:
                e = world.random_edit(scene, kind, rng)
                by_source.setdefault(e.source_prompt, []).append((kind, e))
            started = time.perf_counter()
            for source_prompt, group in by_source.items():
                inv = editor.invert(world.render(scene), source_prompt, method="ddim" if direct else method,
                                    steps=steps, guidance_scale=guidance_scale, progress=False)
                swaps: dict[tuple, list] = {}  # edits that share their blend words and controls: one batch
                for kind, e in group:
                    if kind != "reweight":
                        key = (*(blend_words(e) if blend else ((), ())), repr(by_kind.get(kind)))
                        swaps.setdefault(key, []).append((kind, e))
                for (words, exclude, _), batch in swaps.items():
                    images = editor.edit(inv, [e.target_prompt for _, e in batch], direct=direct, progress=False,
                                         blend=words, blend_exclude=exclude,
                                         **{**controls, **by_kind.get(batch[0][0], {})})
                    for (kind, e), image in zip(batch, images[1:]):
                        record(rows, kind, image, e.target)
                if swaps and source_prompt == scene.prompt():  # every batch's source branch is the same
                    rows["psnr"].append(psnr(editor.prepare(world.render(scene)), images[0]))
                for kind, e in group:
                    if kind == "reweight":
                        factor = rng.choice([0.5, 2.0])
                        words, exclude = blend_words(e) if blend else ((), ())
                        image = editor.edit(inv, e.target_prompt, reweight={e.word: factor}, direct=direct,
                                            progress=False, blend=words, blend_exclude=exclude,
                                            **{**controls, **by_kind.get(kind, {})})[1]
                        record(rows, kind, image, e.target)
            rows["seconds"].append(time.perf_counter() - started)
        out[method] = {k: float(np.median(v) if k.endswith("shift") else np.mean(v)) for k, v in rows.items()}
    return out


def run(editor, n_generation: int = 200, n_edit: int = 24, methods=("negative-prompt", "direct", "null-text"),
        blend: bool = False, guidance_scale: float | None = None, seed: int = SEED,
        by_kind: dict[str, dict] | None = None, n_describe: int = 256, **controls) -> dict:
    guidance_scale = editor.guidance_scale if guidance_scale is None else guidance_scale
    return {
        "model": editor.model_id,
        "guidance_scale": guidance_scale,
        "seed": seed,
        "generation": generation(editor, n_generation, guidance_scale=guidance_scale, seed=seed) if n_generation else None,
        "vae_psnr": vae_ceiling(editor),
        "describe": describing(editor, n_describe, seed) if n_describe else None,
        "inversion_and_editing": inversion_and_editing(editor, n_edit, list(methods), blend=blend, seed=seed,
                                                       guidance_scale=guidance_scale, by_kind=by_kind, **controls)
        if n_edit else {},
        "controls": {**controls, "blend": blend, "by_kind": by_kind or {}},
    }


def table(result: dict) -> str:
    g = result["generation"]
    lines = [f"generation (all attributes right, guidance {result.get('guidance_scale', 7.5):g}): {g['all']:.1%}  "
             + "  ".join(f"{k} {v:.1%}" for k, v in g.items() if k != "all") if g else "generation: not run",
             f"VAE ceiling: {result['vae_psnr']:.2f} dB"]
    d = result.get("describe")
    lines.append("describe: not run" + (f" ({d['not_run']})" if d else "") if not d or "not_run" in d else
                 f"describe (full prompt right): {d['exact_prompt']:.1%} of {d['n']}  mean cosine {d['mean_cosine']:.3f}  "
                 + "  ".join(f"{a} {d[a]:.1%}" for a in world.ATTRIBUTES))
    kinds = [k for k in world.EDIT_KINDS]
    if not result["inversion_and_editing"]:
        return "\n".join([*lines, "inversion and editing: not run"])
    lines.append(f"{'method':<16} {'PSNR':>6} {'s/scene':>8} " + " ".join(f"{k:>14}" for k in kinds))
    for method, r in result["inversion_and_editing"].items():
        lines.append(f"{method:<16} {r['psnr']:>6.2f} {r['seconds']:>8.1f} "
                     + " ".join(f"{r.get(k, float('nan')):>14.1%}" for k in kinds))
        lines.append(f"{'  position aside':<33}" + " ".join(f"{r.get(f'{k} attributes', float('nan')):>14.1%}" for k in kinds))
        lines.append(f"{'  median shift':<33}" + " ".join(f"{r.get(f'{k} shift', float('nan')):>11.1f} px" for k in kinds))
    return "\n".join(lines)


def save(result: dict, out_dir: Path) -> Path:
    return write_json(out_dir / "shapes.json", result)
