"""`redraft demo`: the whole job on the built-in shapes model, where the truth of every edit is known.

A held-out scene (never seen in training) is described, inverted (null-text) and reconstructed, then
edited five ways through the API with no controls passed, as a new user would: the model's editing recipe
(`p2p.recipe`, its folder's redraft.json) chooses them for each kind of edit; every result is read back
from its pixels and checked against the truth of the edit.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from ..io.draw import grid
from ..io.files import save_image, write_json
from ..eval.metrics import psnr
from ..shapes import world
from ..shapes.world import POSITION_TOLERANCE, shift_of

OUTPUTS = ("grid.png", "attention.png", "summary.json")  # what the demo writes in its folder

def check(image: Image.Image, truth: world.Scene, prompt: str) -> dict:
    """Attributes read back from the pixels, and whether each matches the truth: the benchmark's test
    (`bench.shapes.outcome`: position within `POSITION_TOLERANCE`) told attribute by attribute."""
    r = world.read(np.asarray(image))
    ok = {k: getattr(r, k) == getattr(truth, k) for k in world.ATTRIBUTES}
    ok["position"] = bool(shift_of(r, truth) <= POSITION_TOLERANCE)
    return {"prompt": prompt, "read": {k: getattr(r, k) for k in world.ATTRIBUTES}
            | {"cx": round(float(r.cx), 1), "cy": round(float(r.cy), 1)}, "correct": ok, "all_correct": all(ok.values())}


def edits_of(scene: world.Scene) -> list[tuple[str, str, str, world.Scene]]:
    """(kind, label, target prompt, truth) for the four prompt edits, from a source prompt without the size word."""
    rng = random.Random(scene.cx * 64 + scene.cy)
    color = rng.choice([c for c in world.COLORS if c != scene.color])
    shape = rng.choice([s for s in world.SHAPES if s != scene.shape])
    background = rng.choice([b for b in world.BACKGROUNDS if b != scene.background])
    size = "large" if scene.size == "small" else "small"
    swapped = {"color": scene.replace(color=color), "shape": scene.replace(shape=shape),
               "background": scene.replace(background=background), "size": scene.replace(size=size)}
    return [
        ("color", "color swap", swapped["color"].prompt(size=False), swapped["color"]),
        ("shape", "shape swap", swapped["shape"].prompt(size=False), swapped["shape"]),
        ("background", "background swap", swapped["background"].prompt(size=False), swapped["background"]),
        ("add-size", "added size word", swapped["size"].prompt(), swapped["size"]),
    ]


def run(editor, out_dir: Path, seed: int = 7, method: str = "null-text") -> dict:
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    scene = world.scenes(seed, 1, split="test")[0]
    source_prompt = scene.prompt(size=False)
    image = world.render(scene)
    print(f"scene (held out from training): {scene.prompt()} at ({scene.cx}, {scene.cy})")
    description = editor.describe(image)
    print(f"described as: {description.prompt} ({'right' if description.prompt == scene.prompt() else 'WRONG'}); "
          f"inverted with the size word left out, so that adding it is an edit")

    inversion = editor.invert(image, source_prompt, method=method)
    reconstruction = editor.reconstruct(inversion)
    vae = editor.decode(editor.encode([editor.prepare(image)]))[0]
    summary: dict = {
        "scene": asdict(scene), "source_prompt": source_prompt, "method": method,
        "description": {"prompt": description.prompt, "right": description.prompt == scene.prompt(),
                        "words": [[w, round(p, 3)] for w, p in description.words[:6]]},
        "inversion": {"seconds": round(inversion.cost.seconds, 2), "unet_forward": inversion.cost.unet_forward,
                      "unet_backward": inversion.cost.unet_backward},
        "psnr_reconstruction": round(psnr(editor.prepare(image), reconstruction), 2),
        "psnr_vae_ceiling": round(psnr(editor.prepare(image), vae), 2),
        "reconstruction": check(reconstruction, scene, source_prompt),
        "recipe": editor.recipe.to_json(),  # how the edits below were chosen (no controls were passed)
        "edits": [],
    }
    print(f"inverted ({method}) in {inversion.cost.seconds:.1f} s; reconstruction PSNR "
          f"{summary['psnr_reconstruction']} dB (VAE ceiling {summary['psnr_vae_ceiling']} dB)")

    edits = edits_of(scene)
    edited = editor.edit(inversion, [target for _, _, target, _ in edits])  # no controls: the recipe's, per kind
    results = [((label, target, truth), edited[k]) for k, (_, label, target, truth) in enumerate(edits, start=1)]
    # Re-weighting: the colour word weakened; the truth is the source scene (the colour must survive).
    weak = editor.edit(inversion, source_prompt, reweight={scene.color: 0.5})
    results.append((("re-weighting", f"{source_prompt} ({scene.color} x0.5)", scene), weak[1]))
    in_effect = [edited.controls_of(k) for k in range(1, len(edits) + 1)] + [weak.controls]
    direct = [edited.part_of(k)[0].direct for k in range(1, len(edits) + 1)] + [weak.direct]
    maps = editor.word_maps(weak, image=image)  # the source's maps (row 0) over the input
    for ((label, target, truth), im), controls, d in zip(results, in_effect, direct):
        summary["edits"].append({"edit": label} | check(im, truth, target)
                                | {"controls": controls.changed(), "direct": d})
        print(f"  {label:<16} {target:<45} {'right' if summary['edits'][-1]['all_correct'] else 'WRONG'}")

    cells = [image, reconstruction] + [im for _, im in results]
    captions = [f"input: {source_prompt}", "reconstruction"] + [f"{lab}: {t}" for (lab, t, _), _ in results]
    grid_path = save_image(grid(cells, captions, cell=192), out_dir / "grid.png")
    maps_path = save_image(maps.draw(cell=192), out_dir / "attention.png")
    summary["seconds"] = round(time.perf_counter() - started, 1)
    summary_path = write_json(out_dir / "summary.json", summary)
    right = sum(e["all_correct"] for e in summary["edits"])
    print(f"{right}/{len(summary['edits'])} edits right; {summary['seconds']} s in all")
    print(f"wrote {grid_path}, {maps_path} and {summary_path}")
    return summary
