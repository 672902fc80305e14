"""The built-in VAE decoder's visible flaws (`redraft.shapes.flaws`), for one or more decoders, on held-out scenes.

Four sets, all from split "test" (never trained on) and drawn from `--seed`:
- reconstructions: n scenes encoded (posterior mean) and decoded, compared with the true render: ghosts
  (background more than 3 px from the object), the frame (outer 2 px) per background, PSNR (the ceiling);
- small diamonds: n of them, the tips' coverage error and PSNR;
- generation: the UNet's latents for the full prompts of n scenes (50 steps, the model's guidance, x_T as
  `redraft bench shapes`), decoded: ghosts and frame against the named background (position unknown);
- edits: negative-prompt inversions of n scenes edited by one word swap each with the model's own recipe
  (no controls passed), the edit decoded: ghosts and frame against the target's background.
The UNet's latents do not depend on the decoder: they are made once and every decoder decodes the same.

    PYTHONPATH=src python docs/experiments/decoder_flaws.py --seed 101 -n 64 [--vae shipped --vae runs/x.safetensors]

Seeds: 101 is the validation seed (choices were made on it); 202 the held-out one, looked at once at the end.
"""

import argparse
import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

import redraft
from redraft.core.sampling import denoise
from redraft.shapes import flaws, world

parser = argparse.ArgumentParser()
parser.add_argument("--model", default=None)
parser.add_argument("--vae", action="append", default=None,
                    help="'shipped', a VAE state dict (safetensors) or a decoder-tune checkpoint (.ckpt); repeat to "
                         "compare (default: shipped)")
parser.add_argument("-n", type=int, default=64, help="reconstructed scenes, small diamonds and generated prompts")
parser.add_argument("--generation", type=int, default=None, help="generated prompts (default: n)")
parser.add_argument("--edits", type=int, default=12)
parser.add_argument("--seed", type=int, default=101)
parser.add_argument("--json", default=None, help="write the figures here too")
parser.add_argument("--cache", default=None, help="keep the UNet's latents in this file (made once, reused if it exists)")
args = parser.parse_args()
torch.manual_seed(0)

editor = redraft.load(args.model)
vae = editor.pipeline.vae
shipped = {k: v.clone() for k, v in vae.state_dict().items()}


def summarise(rows: list[dict], by=None) -> dict:
    out = {"n": len(rows)}
    for key in ("ghost_max", "ghost_p99", "psnr", "tip"):  # means over the images
        values = [r[key] for r in rows if key in r]
        if values:
            out[key] = float(np.mean(values))
    if any("ghost_max" in r for r in rows):
        out["ghosts_over_8"] = float(np.mean([r["ghost_max"] >= 8 for r in rows if "ghost_max" in r]))
    for b in world.BACKGROUNDS:
        for key in ("frame", "frame_max", "frame_signed"):
            values = [r[key] for r in rows if r.get("background") == b and key in r]
            if values:
                out[f"{key}_{b}"] = float(np.mean(values))
    return out


# The UNet's latents, made once (the decoder plays no part in them: inversion encodes, the UNet denoises).
n_gen = args.n if args.generation is None else args.generation
gen_scenes = world.scenes(args.seed + 1000, n_gen, split="test") if n_gen else []
edit_scenes = world.scenes(args.seed + 2000, args.edits, split="test")
key = {"seed": args.seed, "generation": n_gen, "edits": args.edits, "model": str(args.model)}
if args.cache and Path(args.cache).exists() and torch.load(args.cache)["key"] == key:
    cached = torch.load(args.cache)
    gen_latents, edit_latents = cached["generation"], cached["edits"]
    edit_truths = [world.Scene(*t) for t in cached["truths"]]
else:
    rng = random.Random(args.seed)
    gen_prompts = [s.prompt() for s in gen_scenes]
    schedule = editor.schedule(50)
    gen_latents = []
    for start in range(0, n_gen, 32):
        chunk = gen_prompts[start:start + 32]
        x_T = torch.cat([editor.initial_noise(5000 + start + k) for k in range(len(chunk))])
        gen_latents.append(denoise(editor.unet, schedule, x_T, editor.embed(chunk), editor.embed([""] * len(chunk)),
                                   editor.guidance_scale, progress=False))
    gen_latents = torch.cat(gen_latents) if gen_latents else None
    print(f"{n_gen} generated", flush=True)
    edit_truths, edit_latents = [], []
    for k, scene in enumerate(edit_scenes):
        e = world.random_edit(scene, world.SWAPS[k % 4], rng)
        inversion = editor.invert(world.render(scene), e.source_prompt, progress=False)
        edit_latents.append(editor.edit(inversion, e.target_prompt, progress=False).latents[1:2])
        edit_truths.append(e.target)
        print(f"edit {k + 1} of {args.edits}", flush=True)
    edit_latents = torch.cat(edit_latents) if edit_latents else None
    if args.cache:
        torch.save({"key": key, "generation": gen_latents, "edits": edit_latents,
                    "truths": [dataclasses.astuple(t) for t in edit_truths]}, args.cache)

scenes = world.scenes(args.seed, args.n, split="test")
diamonds = flaws.small_diamonds(args.seed, args.n)
results = {}
for name in args.vae or ["shipped"]:
    weights = shipped if name == "shipped" else load_file(name)
    if name.endswith(".ckpt"):  # a training checkpoint of `retune_decoder`: its "vae." tensors
        weights = {k[4:]: v for k, v in weights.items() if k.startswith("vae.")}
    vae.load_state_dict(weights)
    for k, v in vae.state_dict().items():  # the encoder is the shipped one, byte for byte
        if k.startswith(("encoder.", "quant_conv.")):
            assert torch.equal(v, shipped[k]), f"{name}: {k} differs from the shipped encoder"
    images = [world.render(s) for s in scenes]
    recon = [flaws.image_flaws(d, s.background, flaws.truth_mask(s), truth=t) | {"background": s.background}
             for s, t, d in zip(scenes, images, editor.decode(editor.encode(images)))]
    d_images = [world.render(s) for s in diamonds]
    tips = [{"tip": flaws.tip_error(d, s), **flaws.image_flaws(d, s.background, flaws.truth_mask(s), truth=t)}
            for s, t, d in zip(diamonds, d_images, editor.decode(editor.encode(d_images)))]
    gen = []
    for s, d in zip(gen_scenes, editor.decode(gen_latents) if gen_latents is not None else []):
        a = np.asarray(d)
        gen.append(flaws.image_flaws(a, s.background, flaws.object_mask(a, s.background)) | {"background": s.background})
    edits = []
    for s, d in zip(edit_truths, editor.decode(edit_latents) if edit_latents is not None else []):
        a = np.asarray(d)
        edits.append(flaws.image_flaws(a, s.background, flaws.object_mask(a, s.background)) | {"background": s.background})
    results[name] = {"reconstruction": summarise(recon), "small_diamonds": summarise(tips),
                     "generation": summarise(gen), "edits": summarise(edits)}
vae.load_state_dict(shipped)

print(f"seed {args.seed}; n = {args.n} (generation {n_gen}, edits {args.edits}); 8-bit levels, worst channel; ghosts: background > 3 px from the object, "
      f"inside the outer 4 px; frame = mean (fmax: largest) error of the background's outer 4 px; signed = signed "
      f"mean of the outer 2 px (negative: darker)")
keys = ("ghost_max", "ghost_p99", "ghosts_over_8", "frame_black", "frame_max_black", "frame_white", "frame_gray",
        "frame_signed_black", "tip", "psnr")
for name, r in results.items():
    print(f"\n{name}")
    print(f"  {'set':15s}" + "".join(f"{k.replace('frame_signed', 'signed').replace('frame_max', 'fmax'):>13s}" for k in keys))
    for part, figures in r.items():
        print(f"  {part:15s}" + "".join(f"{figures[k]:13.2f}" if k in figures else f"{'':13s}" for k in keys))
if args.json:
    Path(args.json).write_text(json.dumps({"seed": args.seed, "n": args.n, "generation": n_gen, "edits": args.edits, "results": results}, indent=1))
