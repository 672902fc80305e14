"""Stages 1 and 2: the VAE (then its decoder alone, object-weighted, on noised latents), and the latents of
the training scenes (and of their counterfactual pairs) with the VAE's scaling factor."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ...core.schedules import warmup_cosine
from ...io.checkpoints import Checkpointer, load_checkpoint
from .. import world
from .data import counterfactual_scenes, render_batch, training_scenes
from .recipe import Recipe

DECODER_WARMUP = 50  # steps of the decoder's linear warm-up


def build_vae(r: Recipe):
    from diffusers import AutoencoderKL

    n = len(r.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=world.CANVAS,
        block_out_channels=r.vae_channels, layers_per_block=1, norm_num_groups=16,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        mid_block_add_attention=False,
    )


def train_vae(out: Path, r: Recipe) -> None:
    work = out / "work"
    done = work / "vae.safetensors"
    if done.exists():
        return
    torch.manual_seed(r.seed)
    vae = build_vae(r)
    opt = torch.optim.AdamW(vae.parameters(), lr=r.vae_lr, weight_decay=0.0)
    ckpt = Checkpointer(work / "vae.ckpt", r.checkpoint_minutes)
    step, log = 0, {"loss": [], "psnr": []}
    if ckpt.path.exists():
        step, log = load_checkpoint(ckpt.path, {"vae": vae}, opt)
    total = r.vae_steps + r.vae_mean_steps
    rng = random.Random(f"vae-{r.seed}")
    bar = tqdm(total=total, initial=step, desc="vae")
    while step < total:
        rng.seed(f"vae-{r.seed}-{step}")
        x = render_batch([world.random_scene(rng) for _ in range(r.vae_batch)])
        sampled = step < r.vae_steps  # phase 1: sampled latents (a KL-VAE); phase 2: the mean only
        lr, s, n = (r.vae_lr, step, r.vae_steps) if sampled else (r.vae_mean_lr, step - r.vae_steps, r.vae_mean_steps)
        for g in opt.param_groups:
            g["lr"] = warmup_cosine(s, n, lr)
        posterior = vae.encode(x).latent_dist
        y = vae.decode(posterior.sample() if sampled else posterior.mean).sample
        mse = F.mse_loss(y, x)
        loss = F.l1_loss(y, x) + mse + r.vae_kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        bar.update(1)
        if step % r.log_every == 0:
            psnr = 10 * math.log10(4 / mse.item())
            log["loss"].append([step, loss.item()])
            log["psnr"].append([step, psnr])
            bar.set_postfix(psnr=f"{psnr:.1f}")
        ckpt.maybe(step == total, {"vae": vae}, opt, step, log)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(done))
    (work / "vae_log.json").write_text(json.dumps(log))


def object_weights(x: torch.Tensor, weight: float) -> torch.Tensor:
    """[n, 1, h, w]: 1 + weight on the pixels that differ from the corner's (the background's) colour, and
    2 px around them."""
    on_object = ((x - x[:, :, :1, :1]).abs().amax(1, keepdim=True) > 0.05).float()
    return 1 + weight * F.max_pool2d(on_object, 5, stride=1, padding=2)


def finetune_decoder(out: Path, r: Recipe) -> None:
    """Stage 1b: the decoder (and post-quant conv) alone, on the posterior mean plus noise; see `Recipe`."""
    work = out / "work"
    done = work / "decoder.safetensors"
    if done.exists() or not r.decoder_steps:
        return
    vae = build_vae(r)
    vae.load_state_dict(load_file(str(work / "vae.safetensors")))
    vae.requires_grad_(False)
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=r.decoder_lr, weight_decay=0.0)
    ckpt = Checkpointer(work / "decoder.ckpt", r.checkpoint_minutes)
    step, log = 0, {"loss": [], "psnr": []}
    if ckpt.path.exists():
        step, log = load_checkpoint(ckpt.path, {"vae": vae}, opt)
    bar = tqdm(total=r.decoder_steps, initial=step, desc="decoder")
    while step < r.decoder_steps:
        rng = random.Random(f"decoder-{r.seed}-{step}")
        g = torch.Generator().manual_seed(r.seed * 1_000_003 + step)
        for group in opt.param_groups:  # 50 warm-up steps, then a cosine
            group["lr"] = warmup_cosine(step, r.decoder_steps, r.decoder_lr, DECODER_WARMUP)
        x = render_batch([world.random_scene(rng) for _ in range(r.vae_batch)])
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean
            std = r.decoder_latent_noise * torch.rand(len(z), 1, 1, 1, generator=g)
            z = z + std * torch.randn(z.shape, generator=g)
        y = vae.decode(z).sample
        loss = (object_weights(x, r.decoder_object_weight) * ((y - x).abs() + (y - x) ** 2)).mean()
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
        ckpt.maybe(step == r.decoder_steps, {"vae": vae}, opt, step, log)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(done))
    (work / "decoder_log.json").write_text(json.dumps(log))


@torch.no_grad()
def encode_scenes(vae, scenes: list, desc: str, batch: int = 32) -> torch.Tensor:
    """The VAE's posterior means of rendered scenes, `batch` at a time (on 2 cores, 1,000 scenes encode in
    2.5 s at 32 and 4.3 s at 500: small batches stay in the CPU's cache)."""
    chunks = []
    for i in tqdm(range(0, len(scenes), batch), desc=desc, mininterval=2):
        chunks.append(vae.encode(render_batch(scenes[i:i + batch])).latent_dist.mean)
    return torch.cat(chunks)


def trained_vae(out: Path, r: Recipe):
    """The VAE as trained so far: with the latest tuned decoder (stage 1c's, else 1b's; the same encoder)."""
    work = out / "work"
    vae = build_vae(r)
    found = [p for p in (work / "decoder-tuned.safetensors", work / "decoder.safetensors") if p.exists()]
    vae.load_state_dict(load_file(str(found[0] if found else work / "vae.safetensors")))
    return vae.eval()


def encode_latents(out: Path, r: Recipe) -> None:
    work = out / "work"
    done = work / "latents.safetensors"
    if not done.exists():
        latents = encode_scenes(trained_vae(out, r), training_scenes(r), "latents")
        scaling = 1.0 / latents.std().item()
        save_file({"latents": latents.contiguous()}, str(done), metadata={"scaling_factor": str(scaling)})
    counterfactuals = work / "counterfactuals.safetensors"
    if r.p_counterfactual > 0 and not counterfactuals.exists():
        scenes = [target for _, target in counterfactual_scenes(r)]
        latents = encode_scenes(trained_vae(out, r), scenes, "counterfactual latents")
        save_file({"latents": latents.contiguous()}, str(counterfactuals))
