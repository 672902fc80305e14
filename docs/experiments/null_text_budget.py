"""Null-text inversion against negative-prompt inversion on held-out scenes, and what it costs.

    .venv/bin/python docs/experiments/null_text_budget.py [--seed 11] [-n 8] [--variants null:10,npi] [--global-sweeps 0]

Per scene of `--seed` (validation: 11; held out once: 41): the VAE round trip's PSNR (the ceiling), NPI's
reconstruction, and each null-text variant `INIT:INNER` (`Editor.invert(null_init=INIT,
inner_steps=INNER)`; `INIT` alone: the rule's own budget): "null" is the paper's Algorithm 1, `null_text.PAPER`, empty-prompt start carried
from step to step, its absolute tolerance 1e-5 + i 2e-5, at most INNER updates a step; "npi" is the
default, `null_text.WARM`: every step restarts at NPI's null, keeps the best embedding it evaluates,
stops at a loss of 1e-5 of the target latent's variance, INNER updates a step on average). Prints the
mean PSNR, the worst margin over NPI on any scene, and UNet samples per 50 steps: the inversion's
forward passes (the pivot's included) plus its backward passes, as `Inversion.cost` counts them.

`--global-sweeps K` (> 0) also checks `global_null=True` (K sweeps, from the empty prompt): the PSNR of
the optimised trajectory's own clean latent against that of the replay with the returned embedding at
every step, and their largest latent difference (a replay that reproduces the optimisation: equal).

Measured 2026-12-07 (mean PSNR over 8 scenes; worst scene against NPI; samples per 50 steps). The budget:
seed 11, `--variants npi:1,npi:2,npi:3`: VAE 35.79, NPI 33.20, 35.68 / 35.77 / 35.77 dB (+0.04 / +0.06 /
+0.05, 200 / 300 / 400), so `WARM` spends 2 a step (100 in all); held out once, seed 97, `--variants npi`: VAE
37.06, NPI 36.01, npi 37.04 dB (-0.03: that scene's NPI beat the VAE round trip by 0.04 dB; 300). At 10
steps (`--steps 10 --variants npi,npi:5`, seed 97): 29.98 dB with the 100 updates against 26.64 with 5 a
step (NPI 23.11). Before that (5 updates a step, the decoder before stage 1c):
seed 11 (validation, where WARM was chosen): VAE 35.71, NPI 33.12, null:10 34.70 (-5.55, 1144), npi:5
35.68 dB (+0.03, 600). Seed 41 (held out, run once): VAE 35.61, NPI 32.15, null:10 34.56 (-0.51, 1150),
npi:5 35.60 dB (+0.05, 600). `--seed 11 -n 2 --variants "" --global-sweeps 10`: 27.31 / 27.31 and
29.90 / 29.90 dB, largest latent difference 3e-6.
"""

from __future__ import annotations

import argparse

import numpy as np
from tqdm.auto import tqdm

import redraft
from redraft.core.sampling import denoise
from redraft.eval.metrics import psnr
from redraft.inversions.ddim import ddim_inversion
from redraft.inversions.null_text import PAPER, null_text_optimisation
from redraft.shapes import world

parser = argparse.ArgumentParser()
parser.add_argument("--seed", type=int, default=11)
parser.add_argument("-n", type=int, default=8)
parser.add_argument("--steps", type=int, default=50)
parser.add_argument("--variants", default="null:10,npi")
parser.add_argument("--global-sweeps", type=int, default=0)
args = parser.parse_args()

editor = redraft.load()
variants = [(v.split(":")[0], int(v.split(":")[1]) if ":" in v else None) for v in args.variants.split(",") if v]


def variant_name(init: str, inner: int | None) -> str:
    return init if inner is None else f"{init}:{inner}"


rows: dict[str, list[tuple[float, float]]] = {"vae": [], "negative-prompt": []} | {variant_name(*v): [] for v in variants}
consistency: list[tuple[float, float, float]] = []


def global_check(x, prompt: str) -> tuple[float, float, float]:
    """(PSNR of the optimised trajectory's clean latent, PSNR of the replay, max |latent difference|)."""
    schedule, w = editor.schedule(args.steps), editor.guidance(None)
    cond, empty = editor.embed([prompt]), editor.embed([""])
    pivots = ddim_inversion(editor.unet, schedule, editor.encode([x]), cond, progress=False)
    optimised: list = []
    nulls = null_text_optimisation(editor.unet, schedule, pivots, cond, empty, w, rule=PAPER.with_inner_steps(
        args.global_sweeps), shared=True, progress=False, latents=optimised)
    replayed = denoise(editor.unet, schedule, pivots[0], cond, nulls[0], w, progress=False)
    image = np.asarray(x)
    return (psnr(image, np.asarray(editor.decode(optimised[0])[0])), psnr(image, np.asarray(editor.decode(replayed)[0])),
            float((replayed - optimised[0]).abs().max()))


for scene in tqdm(world.scenes(args.seed + 1, args.n, split="test"), desc="scenes"):
    image = world.render(scene)
    x = editor.prepare(image)
    rows["vae"].append((psnr(np.asarray(x), np.asarray(editor.decode(editor.encode([x]))[0])), 0))
    runs = [("negative-prompt", dict(method="negative-prompt"))] + [
        (variant_name(i, k), dict(method="null-text", null_init=i, inner_steps=k)) for i, k in variants]
    for label, kw in runs:
        inv = editor.invert(image, scene.prompt(), steps=args.steps, progress=False, **kw)
        back = editor.reconstruct(inv, progress=False)
        rows[label].append((psnr(inv.image, np.asarray(back)), (inv.cost.unet_forward + inv.cost.unet_backward) * 50 / args.steps))
    if args.global_sweeps:
        consistency.append(global_check(x, scene.prompt()))
npi = np.array([p for p, _ in rows["negative-prompt"]])
print(f"seed {args.seed}, {args.n} held-out scenes, {args.steps} steps; samples = inversion's UNet forward + backward per 50 steps")
print(f"{'method':<18}{'PSNR':>9}{'vs VAE':>9}{'worst vs NPI':>14}{'worst vs VAE':>14}{'samples':>9}")
vae_each = np.array([p for p, _ in rows["vae"]])
for label, r in rows.items():
    p = np.array([a for a, _ in r])
    print(f"{label:<18}{p.mean():>7.2f}dB{p.mean() - vae_each.mean():>+7.2f}dB{(p - npi).min():>+12.2f}dB"
          f"{(p - vae_each).min():>+12.2f}dB{np.mean([c for _, c in r]):>9.0f}")
if consistency:
    print(f"global_null ({args.global_sweeps} sweeps): optimised trajectory's PSNR / replay's PSNR / max |latent difference|")
    for k, (a, b, d) in enumerate(consistency):
        print(f"  scene {k}: {a:.2f} / {b:.2f} dB / {d:.1e}")
