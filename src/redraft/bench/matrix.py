"""`redraft bench matrix`: every inversion with every editor, on held-out scenes of the built-in model.

For each pair (inversion, editor) and each held-out scene: invert the scene under its prompt, make one
edit of every chosen kind (`world.random_edit`, the shapes benchmark's edits), and measure

- reconstruction PSNR: the edit's source branch against the input, beside the VAE ceiling;
- right with the position kept: the target attribute drawn, the others and the object's place (within
  `world.POSITION_TOLERANCE` px) kept (`world.kept`, as `redraft bench shapes`), per edit kind;
- background PSNR: edit against input outside the object (the source's and the target's, one pixel wider),
  for the edits that keep the background;
- seconds, UNet forward / backward passes (one latent through the UNet is one pass) and the ratio of the
  wall time to that many bare UNet passes (`bench.inversion.unet_floor`), per scene, inversion included.

"direct" is Direct Inversion: a DDIM inversion edited with its source branch kept on the pivots. The
inversions are `redraft.inversions.METHODS` read when the run starts, so new ones join the matrix. Each
inversion's rows are saved as they are done (`matrix-parts/`, atomic): a run stopped part-way resumes.
"""

from __future__ import annotations

import csv
import io
import json
import random
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..eval.metrics import psnr
from ..io.files import atomic_path, pyplot, save_figure, write_json
from ..p2p.controls import EDITORS
from ..shapes import world
from .inversion import unet_floor

SEED = 3  # the held-out scenes of `redraft bench shapes`'s edits (its seed + 1); choose settings on another
KINDS = ("color", "shape", "background")  # swaps from the full prompt: one inversion per scene
COLUMNS = ("inversion", "editor", "scene", "kind", "source_prompt", "target_prompt", "right", "attributes_right",
           "shift_px", "background_psnr", "reconstruction_psnr", "seconds", "unet_forward", "unet_backward")


def inversions() -> list[str]:
    """Every inversion method (`redraft.inversions.METHODS`, as it is now) and Direct Inversion."""
    from .. import inversions as methods

    return [*methods.METHODS, "direct"]


def background_mask(source: world.Scene, target: world.Scene) -> np.ndarray:
    """[64, 64] bool: the pixels outside both objects, one pixel away from their edges."""
    inside = np.zeros((world.CANVAS, world.CANVAS), dtype=bool)
    for scene in (source, target):
        m = world.shape_mask(scene)
        f = m.shape[0] // world.CANVAS
        inside |= m.reshape(world.CANVAS, f, world.CANVAS, f).any(axis=(1, 3))
    grown = inside.copy()
    grown[1:] |= inside[:-1]
    grown[:-1] |= inside[1:]
    grown[:, 1:] |= grown[:, :-1].copy()
    grown[:, :-1] |= grown[:, 1:].copy()
    return ~grown


def pair_rows(editor, scene_id: int, scene: world.Scene, method: str, editing: str, inv, inv_seconds: float,
              kinds, controls: dict) -> list[dict]:
    """The rows of one scene's edits under one (inversion, editor) pair."""
    rng = random.Random(scene_id)
    edits = [world.random_edit(scene, kind, rng) for kind in kinds]
    started = time.perf_counter()
    result = editor.edit(inv, [e.target_prompt for e in edits], editing=editing, direct=method == "direct",
                         progress=False, **controls)
    seconds = inv_seconds + time.perf_counter() - started
    source = np.asarray(world.render(scene))
    recon = psnr(source, np.asarray(result[0]))
    rows = []
    for e, image in zip(edits, result.images[1:]):
        same, shift = world.outcome(image, e.target)
        keeps_background = e.target.background == scene.background
        rows.append(dict(
            inversion=method, editor=editing, scene=scene_id, kind=e.kind, source_prompt=e.source_prompt,
            target_prompt=e.target_prompt, right=bool(same and shift <= world.POSITION_TOLERANCE),
            attributes_right=bool(same), shift_px=float(shift),
            background_psnr=psnr(source, np.asarray(image), background_mask(scene, e.target)) if keeps_background
            else float("nan"),
            reconstruction_psnr=recon, seconds=seconds / len(edits),
            unet_forward=(inv.cost.unet_forward + result.unet_forward) / len(edits),
            unet_backward=(inv.cost.unet_backward + result.unet_backward) / len(edits)))
    return rows


def run(editor, n: int = 8, methods=None, editors=EDITORS, kinds=KINDS, steps: int = 20, seed: int = SEED,
        out_dir: Path | None = None, progress: bool = True, method_settings: dict[str, dict] | None = None,
        **controls) -> dict:
    """The matrix over n held-out scenes (`world.scenes(seed, n, split="test")`): per-edit rows and one
    summary row per pair. `controls` apply to every edit (e.g. `masactrl_step=2`); `method_settings`
    ({inversion: settings}, `inversions.methods.settings`) to that inversion. With `out_dir`, each
    inversion's rows are kept in `out_dir/matrix-parts/` and reused when the same run is made again."""
    methods = list(methods or inversions())
    method_settings = method_settings or {}
    scenes = world.scenes(seed, n, split="test")
    settings = dict(model=editor.model_id, n=n, seed=seed, steps=steps, kinds=list(kinds), editors=list(editors),
                    controls=controls, method_settings=method_settings)
    forward, both = unet_floor(editor)
    rows: list[dict] = []
    for method in methods:
        part = out_dir / "matrix-parts" / f"{method}.json" if out_dir is not None else None
        if part is not None and part.is_file():
            saved = json.loads(part.read_text())
            if saved.get("settings") == settings:
                rows += saved["rows"]
                continue
        mine = []
        for k, scene in enumerate(tqdm(scenes, desc=f"{method}: invert + edit", disable=not progress)):
            started = time.perf_counter()
            inv = editor.invert(world.render(scene), scene.prompt(), method="ddim" if method == "direct" else method,
                                steps=steps, progress=False, settings=method_settings.get(method))
            inv_seconds = time.perf_counter() - started
            for editing in editors:
                mine += pair_rows(editor, k, scene, method, editing, inv, inv_seconds, kinds, controls)
        if part is not None:
            write_json(part, {"settings": settings, "rows": mine})
        rows += mine
    vae = editor.decode(editor.encode([world.render(s) for s in scenes]))
    vae_psnr = float(np.mean([psnr(np.asarray(world.render(s)), np.asarray(v)) for s, v in zip(scenes, vae)]))
    return {**settings, "inversions": methods, "vae_psnr": vae_psnr, "unet_forward_seconds": forward,
            "unet_forward_backward_seconds": both, "rows": rows,
            "pairs": summarise(rows, kinds, forward, both)}


def summarise(rows: list[dict], kinds, forward: float, both: float) -> list[dict]:
    """One row per (inversion, editor): means over the scenes' edits (right: per kind and over all)."""
    out = []
    for pair in dict.fromkeys((r["inversion"], r["editor"]) for r in rows):
        mine = [r for r in rows if (r["inversion"], r["editor"]) == pair]
        per_edit = len(mine) // max(len({r["scene"] for r in mine}), 1)
        fwd = per_edit * float(np.mean([r["unet_forward"] for r in mine]))
        bwd = per_edit * float(np.mean([r["unet_backward"] for r in mine]))
        seconds = per_edit * float(np.mean([r["seconds"] for r in mine]))
        background = [r["background_psnr"] for r in mine if np.isfinite(r["background_psnr"])]
        out.append(dict(
            inversion=pair[0], editor=pair[1], reconstruction_psnr=float(np.mean([r["reconstruction_psnr"] for r in mine])),
            right=float(np.mean([r["right"] for r in mine])),
            **{f"right {k}": float(np.mean([r["right"] for r in mine if r["kind"] == k])) for k in kinds},
            attributes_right=float(np.mean([r["attributes_right"] for r in mine])),
            median_shift_px=float(np.median([r["shift_px"] for r in mine])),
            background_psnr=float(np.mean(background)) if background else float("nan"),
            seconds=seconds, unet_forward=fwd, unet_backward=bwd,
            ratio_to_floor=seconds / max((fwd - bwd) * forward + bwd * both, 1e-12)))
    return out


def table(result: dict) -> str:
    kinds = result["kinds"]
    head = (f"{'inversion':<16} {'editor':<9} {'recon':>6} {'right':>6} " + " ".join(f"{k[:10]:>10}" for k in kinds)
            + f" {'attrs':>6} {'shift':>6} {'bg PSNR':>7} {'s/scene':>8} {'fwd':>6} {'bwd':>6} {'x floor':>7}")
    lines = [f"{result['n']} held-out scenes (seed {result['seed']}), {result['steps']} steps, VAE ceiling "
             f"{result['vae_psnr']:.2f} dB; right = target drawn, the rest and the place (3 px) kept", head]
    for p in result["pairs"]:
        lines.append(f"{p['inversion']:<16} {p['editor']:<9} {p['reconstruction_psnr']:>6.2f} {p['right']:>6.0%} "
                     + " ".join(f"{p[f'right {k}']:>10.0%}" for k in kinds)
                     + f" {p['attributes_right']:>6.0%} {p['median_shift_px']:>6.1f} {p['background_psnr']:>7.2f} "
                       f"{p['seconds']:>8.2f} {p['unet_forward']:>6.0f} {p['unet_backward']:>6.0f} {p['ratio_to_floor']:>7.2f}")
    return "\n".join(lines)


def save(result: dict, out_dir: Path) -> tuple[Path, Path, Path]:
    """matrix.json (settings, pairs, rows), matrix.csv (one row per edit) and matrix.png, each atomic."""
    out_dir = Path(out_dir)
    json_path = write_json(out_dir / "matrix.json", result)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS))
    writer.writeheader()
    writer.writerows(result["rows"])
    csv_path = out_dir / "matrix.csv"
    with atomic_path(csv_path) as tmp:
        tmp.write_text(buffer.getvalue())
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = dict(zip(result["editors"], "os^Dv"))
    for p in result["pairs"]:
        ax.scatter(p["seconds"], p["right"] * 100, marker=markers.get(p["editor"], "o"), s=40)
        ax.annotate(f"{p['inversion']} + {p['editor']}", (p["seconds"], p["right"] * 100), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.set(xscale="log", xlabel="seconds per scene (inversion + its edits)", ylabel="edits right, position kept (%)",
           title=f"Inversion x editor ({result['n']} held-out scenes, {result['steps']} steps)")
    fig.tight_layout()
    png_path = save_figure(fig, out_dir / "matrix.png")
    return json_path, csv_path, png_path
