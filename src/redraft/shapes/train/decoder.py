"""Stage 1c: the decoder alone once more, against the visible flaws stage 1b leaves (`Recipe.tune_*`).

Stage 1b's decoder draws faint ghost blobs beside the object, a faint dark frame on black backgrounds and
rounded tips on small diamonds (`redraft.shapes.flaws` measures them): errors too faint or too small for a
mean loss to notice. This stage keeps the encoder (so the latent space, the UNet and every saved inversion
stay valid) and tunes the decoder and its post-quant conv from stage 1b's weights, on the posterior mean plus
noise as stage 1b does, in phases (`Recipe.tune_phases`), with a loss that also weighs where the flaws are:
the background more than 3 px from the object (its mean error and, per image, the mean of its worst
`tune_worst` share of pixels: a ghost is a few pixels), the outer 2 px (the frame), the 3 x 3 pixels at each
corner or tip of the shape, and the worst share of the object's 2 px edge band. `train` runs it after stage 1b; `retune_model` runs it alone on
a trained model's VAE (`redraft train decoder --out DIR [--first-phase K]`, resumable).
"""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ...core.schedules import warmup_cosine
from ...errors import InputError
from ...io.checkpoints import Checkpointer, load_checkpoint
from .. import world
from ..flaws import BORDER, MARGIN
from .data import render_batch
from .recipe import Recipe, TunePhase
from .vae import DECODER_WARMUP, build_vae, object_weights

ENCODER = ("encoder.", "quant_conv.")  # the tensors this stage must leave as they are


def regions(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(background more than `MARGIN` px from the object, the object's edge band of 2 px either side) of
    rendered scenes x [n, 3, h, w], as [n, 1, h, w] bools."""
    on = ((x - x[:, :, :1, :1]).abs().amax(1, keepdim=True) > 1e-3).float()
    near = F.max_pool2d(on, 2 * MARGIN + 1, stride=1, padding=MARGIN) > 0
    grown = F.max_pool2d(on, 5, stride=1, padding=2) > 0
    shrunk = -F.max_pool2d(-on, 5, stride=1, padding=2) > 0
    return ~near, grown & ~shrunk


def border_mask(n: int, size: int = world.CANVAS) -> torch.Tensor:
    """[n, 1, size, size]: the outer `BORDER` px."""
    m = torch.ones(n, 1, size, size, dtype=torch.bool)
    m[..., BORDER:-BORDER, BORDER:-BORDER] = False
    return m


def corners(scene: world.Scene) -> list[tuple[int, int]]:
    """The pixels (x, y) whose centres are the shape's corners or tips (a circle has none): the box's edges
    lie on pixel centres (`world.render`), so each corner is one pixel's centre."""
    h, x, y = world.SIZES[scene.size], scene.cx, scene.cy
    return {"circle": [], "square": [(x - h, y - h), (x + h, y - h), (x - h, y + h), (x + h, y + h)],
            "triangle": [(x, y - h), (x - h, y + h), (x + h, y + h)],
            "diamond": [(x - h, y), (x + h, y), (x, y - h), (x, y + h)]}[scene.shape]


def corner_mask(scenes: list[world.Scene], size: int = world.CANVAS) -> torch.Tensor:
    """[n, 1, size, size]: the 3 x 3 pixels around each corner or tip of each scene's shape."""
    m = torch.zeros(len(scenes), 1, size, size, dtype=torch.bool)
    for i, s in enumerate(scenes):
        for x, y in corners(s):
            m[i, 0, max(y - 1, 0):y + 2, max(x - 1, 0):x + 2] = True
    return m


def worst_mean(err: torch.Tensor, region: torch.Tensor, share: float) -> torch.Tensor:
    """Per image, the mean of the largest `share` of `err` ([n, h, w]) within `region`, averaged."""
    out = []
    for e, r in zip(err, region[:, 0]):
        values = e[r]
        if values.numel():
            out.append(values.topk(max(1, int(share * values.numel()))).values.mean())
    return torch.stack(out).mean() if out else err.sum() * 0


def retune_loss(y: torch.Tensor, x: torch.Tensor, scenes: list[world.Scene], r: Recipe,
                phase: TunePhase | None = None) -> torch.Tensor:
    """Stage 1b's object-weighted L1 + L2, with the far background, the border and the corners weighted
    more, plus the mean of the worst pixels of the far background and of the edge band (`phase`'s
    weights; None: the first phase's)."""
    phase = phase or r.tune_phases[0]
    e = y - x
    far, edge = regions(x)
    w = (object_weights(x, r.decoder_object_weight) + phase.far_weight * far + r.tune_border_weight
         * border_mask(len(x), x.shape[-1]) + r.tune_corner_weight * corner_mask(scenes, x.shape[-1]))
    err = e.abs().amax(1)  # [n, h, w]: the worst channel of each pixel
    worst = worst_mean(err, far, r.tune_worst) + worst_mean(err, edge, r.tune_worst)
    return (w * (e.abs() + e * e)).mean() + phase.worst_weight * worst


def tune_phase(start: dict, r: Recipe, k: int, work: Path, progress: bool = True) -> dict:
    """Phase k of stage 1c from the VAE state dict `start`: the decoder and post-quant conv trained by
    `retune_loss` with the phase's settings and a fresh optimiser; resumable from `work/decoder-tune-K.ckpt`
    (K = k + 1, as every file of the phase is numbered)."""
    phase = r.tune_phases[k]
    vae = build_vae(r)
    vae.load_state_dict(start)
    vae.requires_grad_(False)
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=phase.lr, weight_decay=0.0)
    ckpt = Checkpointer(work / f"decoder-tune-{k + 1}.ckpt", r.checkpoint_minutes)
    step, log = 0, {"loss": [], "psnr": []}
    if ckpt.path.exists():
        step, log = load_checkpoint(ckpt.path, {"vae": vae}, opt)
    stream = f"decoder-tune-{r.seed}" + (f"-phase{k}" if k else "")  # the first phase's scenes as before phases
    bar = tqdm(total=phase.steps, initial=step, desc=f"decoder tune {k + 1}/{len(r.tune_phases)}",
               disable=not progress, mininterval=10)
    while step < phase.steps:
        rng = random.Random(f"{stream}-{step}")
        g = torch.Generator().manual_seed(r.seed * 1_000_003 + 7 * step + 1 + 1_000_000_007 * k)
        for group in opt.param_groups:
            group["lr"] = warmup_cosine(step, phase.steps, phase.lr, DECODER_WARMUP)
        scenes = [world.random_scene(rng) for _ in range(r.tune_batch)]
        x = render_batch(scenes)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean
            std = phase.latent_noise * torch.rand(len(z), 1, 1, 1, generator=g)
            z = z + std * torch.randn(z.shape, generator=g)
        y = vae.decode(z).sample
        loss = retune_loss(y, x, scenes, r, phase)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        bar.update(1)
        if step % r.log_every == 0:
            log["loss"].append([step, loss.item()])
            log["psnr"].append([step, 10 * math.log10(4 / F.mse_loss(y, x).item())])
            bar.set_postfix(loss=f"{loss.item():.4f}")
        ckpt.maybe(step == phase.steps, {"vae": vae}, opt, step, log)
    (work / f"decoder_tune_log-{k + 1}.json").write_text(json.dumps(log))
    return {name: v.contiguous() for name, v in vae.state_dict().items()}


def retune_decoder(out: Path, r: Recipe, progress: bool = True, first: int = 0) -> None:
    """Stage 1c: `work/decoder.safetensors` (stage 1b's VAE) -> `work/decoder-tuned.safetensors`, the decoder
    and post-quant conv tuned by `Recipe.tune_phases[first:]` in turn, each phase's weights kept as
    `work/decoder-tuned-K.safetensors` (K from 1), so that a stop resumes within the phase it was in."""
    work = out / "work"
    done = work / "decoder-tuned.safetensors"
    if done.exists() or not r.tune_phases[first:]:
        return
    start = load_file(str(next(p for p in (work / "decoder.safetensors", work / "vae.safetensors") if p.exists())))
    state = start
    for k in range(first, len(r.tune_phases)):
        kept = work / f"decoder-tuned-{k + 1}.safetensors"
        if kept.exists():
            state = load_file(str(kept))
            continue
        state = tune_phase(state, r, k, work, progress)
        save_file(state, str(kept))
    for k in state:
        if k.startswith(ENCODER):
            assert torch.equal(state[k], start[k]), f"stage 1c changed the encoder's {k}"
    save_file(state, str(done))


def retune_model(out: str | Path, model: str | Path | None = None, r: Recipe | None = None, first: int = 0) -> Path:
    """Stage 1c alone on a trained model's VAE (default: the built-in model's): its VAE becomes stage 1b's
    `work/decoder.safetensors` in `out`, the phases from `first` (0-based) run (resumable), and the tuned VAE
    is written as a diffusers folder `out/vae` (the model's config, its scaling factor) to put in the model's
    place."""
    from diffusers import AutoencoderKL

    from ...io.loading import builtin_path

    out, r = Path(out), r or Recipe()
    if not 0 <= first < len(r.tune_phases):
        raise InputError(f"the first phase is 1 to {len(r.tune_phases)} (the recipe's stage 1c phases); got {first + 1}.")
    source = Path(str(model)) if model is not None else builtin_path()
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "decoder.safetensors").exists():
        shutil.copyfile(source / "vae" / "diffusion_pytorch_model.safetensors", work / "decoder.safetensors")
    retune_decoder(out, r, first=first)
    vae = AutoencoderKL.from_pretrained(str(source / "vae"))
    vae.load_state_dict(load_file(str(work / "decoder-tuned.safetensors")))
    vae.save_pretrained(str(out / "vae"), safe_serialization=True)
    return out / "vae"
