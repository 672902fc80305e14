"""Stage 1c: a second fine-tune of the shipped model's VAE decoder, which removes its visible flaws.

The decoder of stage 1b draws faint ghost blobs beside the object, a dark frame on black backgrounds and
rounded tips on small diamonds: errors too faint or too small for a mean loss to notice. This stage keeps
the encoder (so the latent space, the UNet and every saved inversion stay valid) and tunes the decoder
and its post-quant conv on the posterior mean plus noise (as stage 1b does), with a loss that also
looks at the worst pixels: the mean of each image's `worst` share of largest background errors (ghosts,
frame) and of object-edge errors (tips), added to the object-weighted L1 + L2 of stage 1b. Run it with
`redraft train decoder --out DIR` (resumable); `flaws` measures what it is for.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ...core.schedules import warmup_cosine
from ...io.checkpoints import Checkpointer, load_checkpoint
from .. import world
from .data import render_batch
from .vae import DECODER_WARMUP, object_weights


@dataclass(frozen=True)
class DecoderTune:
    """The stage's settings (chosen on validation scenes of the training split; `flaws` on test scenes)."""

    steps: int = 3000
    batch: int = 16
    lr: float = 2e-4          # a tenth of stage 1b's peak: the decoder is already good
    object_weight: float = 5.0  # as stage 1b
    latent_noise: float = 0.3   # as stage 1b: the UNet's latents are never exactly the encoder's
    worst: float = 0.02        # share of each image's background / edge pixels in the worst-pixel term
    worst_weight: float = 1.0
    seed: int = 1
    checkpoint_minutes: float = 3.0
    log_every: int = 50


def _regions(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(background at least 3 px from the object, the object's edge band of 2 px) as [n, 1, h, w] bools."""
    on = ((x - x[:, :, :1, :1]).abs().amax(1, keepdim=True) > 0.05).float()
    near = F.max_pool2d(on, 7, stride=1, padding=3) > 0
    grown = F.max_pool2d(on, 5, stride=1, padding=2) > 0
    shrunk = -F.max_pool2d(-on, 5, stride=1, padding=2) > 0
    return ~near, grown & ~shrunk


def worst_mean(err: torch.Tensor, region: torch.Tensor, share: float) -> torch.Tensor:
    """Per image, the mean of the largest `share` of `err` ([n, h, w]) within `region`, averaged."""
    out = []
    for e, r in zip(err, region[:, 0]):
        values = e[r]
        if values.numel():
            k = max(1, int(share * values.numel()))
            out.append(values.topk(k).values.mean())
    return torch.stack(out).mean() if out else err.sum() * 0


def decoder_loss(y: torch.Tensor, x: torch.Tensor, t: DecoderTune) -> torch.Tensor:
    e = y - x
    base = (object_weights(x, t.object_weight) * (e.abs() + e * e)).mean()
    err = e.abs().amax(1)  # [n, h, w]: the worst channel of each pixel
    background, edge = _regions(x)
    return base + t.worst_weight * (worst_mean(err, background, t.worst) + worst_mean(err, edge, t.worst))


def tune_decoder(vae, work: Path, t: DecoderTune = DecoderTune(), progress: bool = True):
    """Tune `vae`'s decoder in place (resumable from `work/decoder-tune.ckpt`); returns the vae."""
    vae.requires_grad_(False)
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=0.0)
    ckpt = Checkpointer(work / "decoder-tune.ckpt", t.checkpoint_minutes)
    step, log = 0, {"loss": [], "psnr": []}
    if ckpt.path.exists():
        step, log = load_checkpoint(ckpt.path, {"vae": vae}, opt)
    bar = tqdm(total=t.steps, initial=step, desc="decoder tune", disable=not progress)
    while step < t.steps:
        rng = random.Random(f"decoder-tune-{t.seed}-{step}")
        g = torch.Generator().manual_seed(t.seed * 1_000_003 + step)
        for group in opt.param_groups:
            group["lr"] = warmup_cosine(step, t.steps, t.lr, DECODER_WARMUP)
        x = render_batch([world.random_scene(rng) for _ in range(t.batch)])
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean
            std = t.latent_noise * torch.rand(len(z), 1, 1, 1, generator=g)
            z = z + std * torch.randn(z.shape, generator=g)
        y = vae.decode(z).sample
        loss = decoder_loss(y, x, t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        bar.update(1)
        if step % t.log_every == 0:
            log["loss"].append([step, loss.item()])
            log["psnr"].append([step, 10 * math.log10(4 / F.mse_loss(y, x).item())])
            bar.set_postfix(loss=f"{loss.item():.4f}")
        ckpt.maybe(step == t.steps, {"vae": vae}, opt, step, log)
    (work / "decoder_tune_log.json").write_text(json.dumps(log))
    vae.requires_grad_(False)
    return vae.eval()


@torch.no_grad()
def flaws(vae, scenes: list[world.Scene]) -> dict[str, float]:
    """What the stage is for, over scenes' VAE round trips (8-bit levels of the worst channel):
    ghost = the largest error on background pixels 3 px or more from the object (mean over scenes);
    frame = the mean error on the outer 2 px of black-background scenes; edge = the mean error on the
    object's 2 px edge band; psnr = the round trip's PSNR (dB, the editing's ceiling)."""
    x = render_batch(scenes)
    y = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    x8, y8 = (x + 1) * 127.5, ((y + 1) * 127.5).round()
    err = (x8 - y8).abs().amax(1)
    background, edge = _regions(x)
    ghost = np.mean([float(e[r].max()) if r.any() else 0.0 for e, r in zip(err, background[:, 0])])
    border = torch.ones_like(err[0], dtype=torch.bool)
    border[2:-2, 2:-2] = False
    black = [i for i, s in enumerate(scenes) if s.background == "black"]
    frame = float(np.mean([float(err[i][border].mean()) for i in black])) if black else float("nan")
    mse = ((x8 - y8) ** 2).flatten(1).mean(1)
    return {"ghost": float(ghost), "frame": frame, "edge": float(err[edge[:, 0]].mean()),
            "psnr": float((10 * torch.log10(255 ** 2 / mse)).mean())}
