"""Train the built-in shapes model: a Stable Diffusion 1.x pipeline of the shapes world, from scratch, on a CPU.

Three stages, each resumable from its own checkpoint (`DIR/work/`):
1. `vae`: an AutoencoderKL (64 x 64 RGB <-> 4 x 16 x 16), L1 + MSE + a tiny KL term; then
   `decoder`: its decoder alone, object-weighted, on noised latents (the latent space stays).
2. `latents`: encode a fixed set of training scenes once (the VAE mean), and set the VAE's
   `scaling_factor` to 1 / std of those latents, as SD 1.x's 0.18215 was chosen.
3. `unet`: the UNet and a small CLIP text encoder, trained jointly on the v objective (SD 2.x's
   `v_prediction`, Salimans & Ho 2022) with offset noise (a per-channel constant added to the noise) so
   that the noisiest steps must read the prompt, Min-SNR-style capping of the low-noise weights
   (Hang et al., ICCV 2023), 10% empty prompts for classifier-free guidance, optional prompt words
   dropped at random, and an EMA of the weights.
Then `export` writes the EMA weights as a diffusers `StableDiffusionPipeline` folder (safetensors).

Scenes whose `split` is "test" are never used here: benchmarks and the demo draw from them.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..io.checkpoints import checkpoint_log, load_checkpoint, save_checkpoint
from ..io.files import pyplot, save_figure
from ..io.loading import SETTINGS
from . import world
from .tokenizer import build_tokenizer

EXTRA_WORDS = ["a", "on", "background"]


@dataclass
class Recipe:
    """Every choice that shapes the built-in model; saved beside it as `recipe.json`."""

    seed: int = 0
    # VAE: 64x64 RGB -> 4 x 16 x 16.
    vae_channels: tuple[int, ...] = (16, 32, 64)
    vae_steps: int = 3000
    vae_batch: int = 16
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-6
    vae_mean_steps: int = 1500  # then decode the posterior mean, as inversion does: sharper shapes
    vae_mean_lr: float = 1e-3
    # Then the decoder alone, as SD's ft-MSE decoder was tuned: the encoder, so the latent space and the
    # UNet's data, stays. Pixels of the object and 2 px around it weigh 1 + `decoder_object_weight` (the
    # object is a small part of the image, and a decoder trained on the mean loss drew faint rings beside
    # it), and the latents get noise of a random std up to `decoder_latent_noise`, so that the latents a
    # UNet makes, further from the encoder's than its own, decode to clean shapes (docs/shapes-model.md).
    decoder_steps: int = 1500
    decoder_lr: float = 1e-3
    decoder_object_weight: float = 5.0
    decoder_latent_noise: float = 0.3
    # Latent data set.
    scenes: int = 60_000
    # Text encoder (a small CLIP) and UNet (SD 1.x block layout: attention at 16x16 and 8x8, plus the mid block).
    text_width: int = 128
    text_layers: int = 4
    # Token positions of tokenizer and text encoder (CLIP's 77; the prompts need at most 11 tokens: 16
    # is a quarter of the cross-attention keys, 0.78 s/step instead of 1.0), and the share of training
    # rows whose padding is blanked (`blank_padding`). A text encoder trained with the UNet puts the whole
    # prompt into the padding tokens, and the UNet reads it there. The fourth run (half the rows blanked)
    # made the UNet read the words, but edited no better and drew worse (docs/shapes-model.md): 0.
    text_positions: int = 16
    p_blank_padding: float = 0.0
    unet_channels: tuple[int, ...] = (32, 64, 128)
    unet_blocks: tuple[str, ...] = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
    unet_layers_per_block: int = 1
    unet_heads: tuple[int, ...] = (1, 2, 4)  # diffusers' `attention_head_dim` is the head count: 32 wide each
    prediction_type: str = "v_prediction"
    offset_noise: float = 0.3  # std of a per-channel constant added to the noise (see `noise_like`)
    unet_steps: int = 2000
    unet_batch: int = 64
    unet_lr: float = 1e-3
    unet_warmup: int = 200
    # Then warm restarts (SGDR, Loshchilov & Hutter 2017): more cosine cycles on the same weights and
    # optimiser state. The first cycle's figures flattened as its learning rate decayed, loss still falling.
    # 2,000 + 2,500 + 2,000 steps (6,500) with the object's cells weighted draw as well as 3,000 + 4,000 +
    # 2,000 without (the seventh version, docs/shapes-model.md): the recipe fits 3 hours on a slow machine.
    unet_restart_steps: int = 2500
    unet_restart_lr: float = 5e-4
    unet_restart_warmup: int = 100
    # Further warm restarts, each (steps, peak lr), with the restart's warm-up. The third cycle took the
    # validation prompts from 83% to 89% right (docs/shapes-model.md).
    unet_more_restarts: tuple[tuple[int, float], ...] = ((2000, 2.5e-4),)
    # Counterfactual pairs, from step `counterfactual_from_step` on: in a share of the rows with t at least
    # `counterfactual_min_t`, the noisy latent of a scene is paired with the prompt of the same scene with
    # one attribute swapped, and the target is that scene's latent (`counterfactual_scenes`). The model
    # learns to keep the object where the noisy latent puts it when the prompt names other attributes:
    # without them, one changed word moved the object 2 to 9 px (median) in edits (docs/shapes-model.md).
    # Half the rows of the last cycle: word swaps kept 79 / 42 / 17 / 25% of scenes before, 92 / 79 / 58 / 46% after.
    p_counterfactual: float = 0.5
    counterfactual_from_step: int | None = None  # None: the first step of the last cycle (`counterfactual_start`)
    counterfactual_min_t: int = 400
    min_snr_gamma: float = 5.0
    # The latent cells of the object's box and one cell around it weigh 1 + `object_loss_weight` in the
    # UNet's loss (each row's weights scaled to mean 1, so the loss keeps its scale): a small object is 4 x 4
    # of the 256 cells, and shape, the attribute learned last, is drawn there (`object_cells`). With it the
    # 6,500 steps above draw as well as 9,000 without (runs shapes17 and shapes18, docs/shapes-model.md).
    object_loss_weight: float = 3.0
    p_empty: float = 0.1
    p_size: float = 0.7
    p_background: float = 0.7
    ema_decay: float = 0.999
    # The guidance scale redraft uses with the model unless told otherwise (written to redraft.json):
    # chosen on validation prompts by docs/experiments/guidance_sweep.py. The in-training probe stays at 7.5.
    guidance_scale: float = 4.0
    checkpoint_minutes: float = 3.0
    log_every: int = 50
    eval_every: int = 1000  # steps between generation probes (0: none)


# ----------------------------------------------------------------------------- components


def words() -> list[str]:
    return [*world.SHAPES, *world.COLORS, *world.SIZES, *world.BACKGROUNDS, *EXTRA_WORDS]


def sd_scheduler_config(prediction_type: str = "epsilon") -> dict:
    """SD 1.x's noise schedule (reference.md: scaled_linear 0.00085 to 0.012, 1000 steps); SD 2.x's
    768-v models keep it and predict v."""
    return dict(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type,
    )


def build_vae(r: Recipe):
    from diffusers import AutoencoderKL

    n = len(r.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=world.CANVAS,
        block_out_channels=r.vae_channels, layers_per_block=1, norm_num_groups=16,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        mid_block_add_attention=False,
    )


def build_text_encoder(r: Recipe, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=r.text_width, intermediate_size=4 * r.text_width,
        num_hidden_layers=r.text_layers, num_attention_heads=4, max_position_embeddings=r.text_positions,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def build_unet(r: Recipe):
    from diffusers import UNet2DConditionModel

    up = {"CrossAttnDownBlock2D": "CrossAttnUpBlock2D", "DownBlock2D": "UpBlock2D"}
    return UNet2DConditionModel(
        sample_size=world.CANVAS // 4, in_channels=4, out_channels=4,
        block_out_channels=r.unet_channels, down_block_types=r.unet_blocks,
        up_block_types=tuple(up[b] for b in reversed(r.unet_blocks)),
        layers_per_block=r.unet_layers_per_block, cross_attention_dim=r.text_width,
        attention_head_dim=tuple(r.unet_heads), norm_num_groups=16,
    )


# ----------------------------------------------------------------------------- checkpoints


class Checkpointer:
    """Saves every few minutes of wall time and at the end, so a stop costs minutes, not hours."""

    def __init__(self, path: Path, minutes: float):
        self.path, self.seconds, self.last = path, minutes * 60, time.time()

    def maybe(self, force: bool, *args) -> None:
        if force or time.time() - self.last > self.seconds:
            save_checkpoint(self.path, *args)
            self.last = time.time()


# ----------------------------------------------------------------------------- data


def render_batch(scenes: list) -> torch.Tensor:
    """Scenes -> images in [-1, 1], shape (n, 3, 64, 64)."""
    arr = np.stack([np.asarray(world.render(s), dtype=np.uint8) for s in scenes])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1


def training_scenes(r: Recipe) -> list:
    return world.scenes(r.seed, r.scenes, split="train")


# ----------------------------------------------------------------------------- stage 1: VAE


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
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * s / n))
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
            group["lr"] = r.decoder_lr * min(1, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / r.decoder_steps))
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


# ----------------------------------------------------------------------------- stage 2: latents


def counterfactual_scenes(r: Recipe) -> list[tuple[str, world.Scene]]:
    """For each training scene, (kind, scene with that one attribute swapped), drawn with a fixed seed.

    The position is kept (clamped into range when the size grows, as `world.random_edit` does), and
    the swapped scene is itself a training scene: held-out scenes stay unseen in either role."""
    rng = random.Random(f"counterfactual-{r.seed}")
    pairs = []
    for scene in training_scenes(r):
        while True:
            kind = rng.choice(world.SWAPS)
            target = world.random_edit(scene, kind, rng).target
            if target.split == "train":
                break
        pairs.append((kind, target))
    return pairs


@torch.no_grad()
def encode_scenes(vae, scenes: list, desc: str, batch: int = 32) -> torch.Tensor:
    """The VAE's posterior means of rendered scenes, `batch` at a time (on 2 cores, 1,000 scenes encode in
    2.5 s at 32 and 4.3 s at 500: small batches stay in the CPU's cache)."""
    chunks = []
    for i in tqdm(range(0, len(scenes), batch), desc=desc, mininterval=2):
        chunks.append(vae.encode(render_batch(scenes[i:i + batch])).latent_dist.mean)
    return torch.cat(chunks)


def trained_vae(out: Path, r: Recipe):
    """The VAE as trained so far: with the tuned decoder once `finetune_decoder` is done (same encoder)."""
    work = out / "work"
    vae = build_vae(r)
    tuned = work / "decoder.safetensors"
    vae.load_state_dict(load_file(str(tuned if tuned.exists() else work / "vae.safetensors")))
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


# ----------------------------------------------------------------------------- stage 3: UNet


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1 - decay)


class PromptIds:
    """Token ids of prompts, cached: the shapes grammar has a few hundred distinct prompts."""

    def __init__(self, tokenizer):
        self.tokenizer, self.cache = tokenizer, {}

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        for p in prompts:
            if p not in self.cache:
                self.cache[p] = self.tokenizer(p, padding="max_length", max_length=self.tokenizer.model_max_length,
                                               return_tensors="pt").input_ids[0]
        return torch.stack([self.cache[p] for p in prompts])


def sample_prompt(scene, rng: random.Random, r: Recipe, names: str | None = None) -> str:
    """A training prompt of `scene` (empty in a share `p_empty`), or, when `names` is an attribute, one
    that is never empty and always names that attribute (the prompt of a counterfactual pair)."""
    if names is None and rng.random() < r.p_empty:
        return ""
    p_size = 1.0 if names == "size" else r.p_size
    p_background = 1.0 if names == "background" else r.p_background
    return world.random_prompt(scene, rng, p_size=p_size, p_background=p_background)


@torch.no_grad()
def generation_accuracy(unet, text_encoder, vae, tokenizer, scaling: float, prediction_type: str, n: int = 48,
                        steps: int = 20, guidance: float = 7.5, seed: int = 1) -> dict:
    """Share of held-out full prompts whose every attribute reads back right (a quick in-training probe)."""
    from diffusers import DDIMScheduler

    from ..core.ddim import Schedule
    from ..io.image import to_uint8
    from ..core.sampling import CountedUNet, denoise

    schedule = Schedule.from_scheduler(DDIMScheduler(**sd_scheduler_config(prediction_type)), steps)
    scenes = world.scenes(seed, n, split="test")
    prompts = [s.prompt() for s in scenes]
    ids = PromptIds(tokenizer)
    x_T = torch.randn(n, 4, 16, 16, generator=torch.Generator().manual_seed(seed))
    z = denoise(CountedUNet(unet), schedule, x_T, text_encoder(ids(prompts))[0], text_encoder(ids([""] * n))[0],
                guidance, progress=False)
    images = to_uint8(vae.decode(z / scaling).sample)
    per = {"all": 0.0}
    for img, p in zip(images, prompts):
        agree = world.agrees(world.read(img), p)
        per["all"] += all(agree.values()) / n
        for k, v in agree.items():
            per[k] = per.get(k, 0.0) + v / n
    return per


def blank_padding(context: torch.Tensor, empty: torch.Tensor, ids: torch.Tensor, eos_id: int,
                  blank: torch.Tensor) -> torch.Tensor:
    """The prompt embeddings with the padding positions (after the first end token) of the rows where
    `blank` is True taken from the empty prompt's, which name nothing: those rows can only be drawn
    from the word tokens (and the end token), so the UNet learns to read the words."""
    first_end = (ids == eos_id).int().argmax(dim=1, keepdim=True)
    padding = torch.arange(ids.shape[1]).unsqueeze(0) > first_end
    return torch.where((padding & blank.unsqueeze(1)).unsqueeze(-1), empty.expand_as(context), context)


def noise_like(x0: torch.Tensor, offset: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise plus a per-image, per-channel constant of std `offset` ("offset noise").

    With 16 x 16 latents the mean of x_T is known to +-1/16, and at SD's last timestep
    (alpha-bar 0.0047) the data's mean still leaks through it: the background's latent mean differs by
    ~1.7 between white and black, 0.12 after scaling by sqrt(alpha-bar), so a model trained on plain
    noise reads the background off the noise and ignores the prompt. The offset drowns that leak.
    """
    noise = torch.randn(x0.shape, generator=generator)
    return noise + offset * torch.randn((*x0.shape[:2], 1, 1), generator=generator)


def objective(zt: torch.Tensor, x0: torch.Tensor, a: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The output that makes the model's x0 estimate equal `x0` at the noisy latent `zt` (alpha-bar `a`).

    With zt = sqrt(a) x0 + sqrt(1 - a) eps this is eps, or v = sqrt(a) eps - sqrt(1 - a) x0 (Salimans &
    Ho 2022, sec. 4); written in zt so that a counterfactual row, whose zt was made from another
    scene's latent, asks for `x0` from it."""
    eps = (zt - a.sqrt() * x0) / (1 - a).sqrt()
    return eps if prediction_type == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x0


def loss_weights(alphas: torch.Tensor, r: Recipe) -> torch.Tensor:
    """Per-timestep weights of the squared error of the model's output.

    In x0 terms, the weight is min(SNR + 1, gamma + 1) for v (1 at the noisiest steps, where the
    prompt decides what is drawn; capped at low noise like Min-SNR-gamma), min(SNR, gamma) for epsilon
    (Min-SNR-gamma, Hang et al. 2023, eq. 7)."""
    snr = alphas / (1 - alphas)
    if r.prediction_type == "epsilon":
        return torch.clamp(snr, max=r.min_snr_gamma) / snr
    return torch.clamp(snr + 1, max=r.min_snr_gamma + 1) / (snr + 1)


def object_cells(scenes: list, margin: int = 1) -> torch.Tensor:
    """[n, 1, 16, 16] booleans: the latent cells (4 x 4 px each) under each scene's object's box, grown by
    `margin` cells."""
    side, cell = world.CANVAS // 4, 4
    boxes = torch.zeros(len(scenes), 1, side, side, dtype=torch.bool)
    for i, s in enumerate(scenes):
        h = world.SIZES[s.size]
        x0, x1 = max(0, (s.cx - h) // cell - margin), min(side - 1, (s.cx + h) // cell + margin)
        y0, y1 = max(0, (s.cy - h) // cell - margin), min(side - 1, (s.cy + h) // cell + margin)
        boxes[i, 0, y0:y1 + 1, x0:x1 + 1] = True
    return boxes


def cell_weights(boxes: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-cell loss weights 1 + `weight` on the boxes' cells, each row scaled to mean 1."""
    w = 1 + weight * boxes.float()
    return w / w.mean(dim=(1, 2, 3), keepdim=True)


def unet_cycles(r: Recipe) -> list[tuple[int, float, int]]:
    """The UNet's learning-rate cycles, each (steps, peak lr, warm-up steps): the first, then the restarts."""
    restarts = [(r.unet_restart_steps, r.unet_restart_lr), *r.unet_more_restarts]
    return [(r.unet_steps, r.unet_lr, r.unet_warmup), *((n, lr, r.unet_restart_warmup) for n, lr in restarts if n)]


def counterfactual_start(r: Recipe) -> int:
    """The step from which counterfactual pairs are trained: `counterfactual_from_step`, or the last cycle's first."""
    if r.counterfactual_from_step is not None:
        return r.counterfactual_from_step
    return sum(n for n, _, _ in unet_cycles(r)[:-1])


def unet_lr(step: int, r: Recipe) -> float:
    """Linear warm-up then cosine decay to 0 (SGDR), within each cycle of `unet_cycles`."""
    s = step
    for n, peak, warmup in unet_cycles(r):
        if s < n:
            break
        s -= n
    return peak * min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / n))


def train_unet(out: Path, r: Recipe) -> None:
    work = out / "work"
    done = work / "unet_ema.safetensors"
    if done.exists():
        return
    tokenizer = build_tokenizer(words(), work / "tokenizer", r.text_positions)
    data = load_file(str(work / "latents.safetensors"))["latents"]
    from safetensors import safe_open

    with safe_open(str(work / "latents.safetensors"), "pt") as f:
        scaling = float(f.metadata()["scaling_factor"])
    data = data * scaling
    scenes = training_scenes(r)
    if r.p_counterfactual > 0:
        swapped = load_file(str(work / "counterfactuals.safetensors"))["latents"] * scaling
        pairs = counterfactual_scenes(r)
    if r.object_loss_weight > 0:
        boxes = object_cells(scenes)
        if r.p_counterfactual > 0:  # a paired row weighs the cells of either scene's object
            boxes_swapped = object_cells([target for _, target in pairs])
    torch.manual_seed(r.seed)
    unet, text_encoder = build_unet(r), build_text_encoder(r, tokenizer)
    ema_unet, ema_text = build_unet(r), build_text_encoder(r, tokenizer)
    ema_unet.load_state_dict(unet.state_dict())
    ema_text.load_state_dict(text_encoder.state_dict())
    params = [*unet.parameters(), *text_encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=r.unet_lr, weight_decay=0.01)
    modules = {"unet": unet, "text": text_encoder, "ema_unet": ema_unet, "ema_text": ema_text}
    ckpt = Checkpointer(work / "unet.ckpt", r.checkpoint_minutes)
    step, log = 0, {"loss": [], "accuracy": [], "seconds": 0.0}
    if ckpt.path.exists():
        step, log = load_checkpoint(ckpt.path, modules, opt)
    alphas = torch.tensor(alphas_cumprod())
    weights = loss_weights(alphas, r)
    ids = PromptIds(tokenizer)
    cycle_ends = list(itertools.accumulate(n for n, _, _ in unet_cycles(r)))
    total, pairs_from = cycle_ends[-1], counterfactual_start(r)
    bar = tqdm(total=total, initial=step, desc="unet")
    started, running = time.time() - log["seconds"], None
    while step < total:
        g = torch.Generator().manual_seed(r.seed * 1_000_003 + step)
        rng = random.Random(f"unet-{r.seed}-{step}")
        idx = torch.randint(len(scenes), (r.unet_batch,), generator=g)
        x0 = data[idx]
        t = torch.randint(0, 1000, (r.unet_batch,), generator=g)
        noise = noise_like(x0, r.offset_noise, g)
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        prompts = [sample_prompt(scenes[i], rng, r) for i in idx.tolist()]
        paired = r.p_counterfactual > 0 and step >= pairs_from
        if paired:
            swap = (torch.rand(r.unet_batch, generator=g) < r.p_counterfactual) & (t >= r.counterfactual_min_t)
            x0 = torch.where(swap.view(-1, 1, 1, 1), swapped[idx], x0)
            for row in swap.nonzero().flatten().tolist():
                kind, scene = pairs[idx[row]]
                prompts[row] = sample_prompt(scene, rng, r, names=kind)
        target = objective(zt, x0, a, r.prediction_type)
        cells = torch.ones(1)
        if r.object_loss_weight > 0:
            rows = boxes[idx]
            if paired:
                rows = rows | (boxes_swapped[idx] & swap.view(-1, 1, 1, 1))
            cells = cell_weights(rows, r.object_loss_weight)
        prompt_ids = ids(prompts)
        context = text_encoder(prompt_ids)[0]
        if r.p_blank_padding > 0:
            blank = torch.rand(r.unet_batch, generator=g) < r.p_blank_padding
            empty = text_encoder(ids([""]))[0]
            context = blank_padding(context, empty, prompt_ids, tokenizer.eos_token_id, blank)
        for group in opt.param_groups:
            group["lr"] = unet_lr(step, r)
        pred = unet(zt, t, context).sample
        loss = (weights[t] * (cells * (pred - target).pow(2)).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(r.ema_decay, (1 + step) / (10 + step))
        ema_update(ema_unet, unet, decay)
        ema_update(ema_text, text_encoder, decay)
        step += 1
        bar.update(1)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        log["seconds"] = time.time() - started
        if step % r.log_every == 0:
            log["loss"].append([step, running])
            bar.set_postfix(loss=f"{running:.4f}")
        if r.eval_every and (step % r.eval_every == 0 or step == total):
            acc = generation_accuracy(ema_unet, ema_text, trained_vae(out, r), tokenizer, scaling, r.prediction_type)
            log["accuracy"].append([step, acc])
            tqdm.write(f"step {step} ({log['seconds'] / 60:.1f} min): " + json.dumps({k: round(v, 3) for k, v in acc.items()}))
        ckpt.maybe(step in cycle_ends, modules, opt, step, log)
    save_file({k: v.contiguous() for k, v in ema_unet.state_dict().items()}, str(done))
    save_file({k: v.contiguous() for k, v in ema_text.state_dict().items()}, str(work / "text_ema.safetensors"))
    (work / "unet_log.json").write_text(json.dumps(log))


def alphas_cumprod() -> list[float]:
    """alpha-bar_t of SD 1.x's scaled_linear schedule."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).tolist()


# ----------------------------------------------------------------------------- export


def assemble(r: Recipe, tokenizer, vae, unet, text_encoder):
    """The components as a StableDiffusionPipeline of SD 1.x's layout, with the recipe's DDIM scheduler."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler(**sd_scheduler_config(r.prediction_type)),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def export(out: Path, r: Recipe) -> Path:
    """Write the trained model as a diffusers StableDiffusionPipeline folder (safetensors) at `out/model`."""
    from safetensors import safe_open

    work = out / "work"
    tokenizer = build_tokenizer(words(), work / "tokenizer", r.text_positions)
    vae, unet, text = trained_vae(out, r), build_unet(r), build_text_encoder(r, tokenizer)
    with safe_open(str(work / "latents.safetensors"), "pt") as f:
        vae.register_to_config(scaling_factor=float(f.metadata()["scaling_factor"]))
    if (work / "unet_ema.safetensors").exists():
        unet.load_state_dict(load_file(str(work / "unet_ema.safetensors")))
        text.load_state_dict(load_file(str(work / "text_ema.safetensors")))
    else:  # training not finished: export the EMA weights of the last checkpoint
        tensors = load_file(str(work / "unet.ckpt"))
        unet.load_state_dict({k[9:]: v for k, v in tensors.items() if k.startswith("ema_unet.")})
        text.load_state_dict({k[9:]: v for k, v in tensors.items() if k.startswith("ema_text.")})
    pipe = assemble(r, tokenizer, vae, unet, text)
    target = out / "model"
    pipe.save_pretrained(target, safe_serialization=True)
    (target / "recipe.json").write_text(json.dumps(asdict(r), indent=1))
    (target / SETTINGS).write_text(json.dumps({"guidance_scale": r.guidance_scale}))
    plot_training(out)
    return target


def plot_training(out: Path) -> None:
    plt = pyplot()

    work = out / "work"
    if (work / "unet_log.json").exists():
        unet_log = json.loads((work / "unet_log.json").read_text())
    else:
        unet_log = checkpoint_log(work / "unet.ckpt")
    has_vae = (work / "vae_log.json").exists()  # absent when the VAE was copied in from another run
    fig, axes = plt.subplots(1, 2 + has_vae, figsize=(4.4 * (2 + has_vae), 3.5))
    loss_ax, accuracy_ax = axes[-2:]
    if has_vae:
        axes[0].plot(*zip(*json.loads((work / "vae_log.json").read_text())["psnr"]))
        axes[0].set(title="VAE reconstruction", xlabel="step", ylabel="PSNR (dB)")
    loss_ax.plot(*zip(*unet_log["loss"]))
    loss_ax.set(title="UNet loss (weighted)", xlabel="step", yscale="log")
    if unet_log["accuracy"]:
        steps = [s for s, _ in unet_log["accuracy"]]
        for key in ("all", *world.ATTRIBUTES):
            accuracy_ax.plot(steps, [a.get(key, 0) for _, a in unet_log["accuracy"]], label=key)
        accuracy_ax.set(title="generation accuracy (held-out prompts)", xlabel="step", ylim=(0, 1.02))
        accuracy_ax.legend()
    fig.tight_layout()
    save_figure(fig, out / "training.png", dpi=90)


def train(out: str | Path, recipe: Recipe | None = None) -> Path:
    """All stages; call again after a stop and it resumes where it was."""
    out, r = Path(out), recipe or Recipe()
    (out / "work").mkdir(parents=True, exist_ok=True)
    times_path = out / "work" / "times.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    for name, stage in (("vae", train_vae), ("decoder", finetune_decoder), ("latents", encode_latents),
                        ("unet", train_unet)):
        t0 = time.time()
        stage(out, r)
        times[name] = times.get(name, 0.0) + time.time() - t0
        times_path.write_text(json.dumps(times))
    return export(out, r)


if __name__ == "__main__":
    import os
    import sys

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(2)
    print(train(sys.argv[1]))
