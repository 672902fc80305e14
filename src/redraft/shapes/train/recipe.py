"""The recipe of the built-in shapes model (`Recipe`, saved beside it as recipe.json), its words, and the
schedules it sets: SD 1.x's noise schedule and the UNet's learning-rate cycles (warm restarts)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from ...core.schedules import warmup_cosine
from .. import world

EXTRA_WORDS = ["a", "on", "background"]


class TunePhase(NamedTuple):
    """One phase of stage 1c (`decoder.retune_decoder`): its steps, its peak learning rate (linear warm-up,
    cosine decay), the weights of the far background's mean error and of its worst pixels, and the largest
    std of the noise added to the encoder's latents (drawn per image, uniform up to it)."""

    steps: int
    lr: float
    far_weight: float
    worst_weight: float
    latent_noise: float


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
    # Then the decoder alone once more, against the flaws stage 1b left (`decoder.retune_decoder`): faint ghost
    # blobs beside the object, a dark frame on black backgrounds, rounded tips on small diamonds. From stage
    # 1b's decoder, in phases (`TunePhase`, each from the last one's weights with a fresh optimiser); beside
    # its object-weighted loss, the background more than 3 px from the object (its mean error times the
    # phase's `far_weight`, and the worst `tune_worst` share of its pixels per image times `worst_weight`),
    # the outer 2 px, and the 3 x 3 pixels at each corner or tip of the shape weigh more. Chosen on
    # validation scenes (docs/shapes-model.md): the first phase lowered the flaws and raised the ceiling; the
    # second, with the far background and the worst pixels weighing more, lowers the flaws further and the
    # ceiling with them (36.2 to 35.4 dB); the third, the first's weights on latents with less noise (the
    # encoder's are what the ceiling decodes), brings the ceiling back above the first's and keeps the
    # flaws low. No phases: no stage 1c.
    tune_phases: tuple[TunePhase, ...] = (
        TunePhase(steps=400, lr=3e-4, far_weight=4.0, worst_weight=1.0, latent_noise=0.3),
        TunePhase(steps=1500, lr=3e-4, far_weight=8.0, worst_weight=10.0, latent_noise=0.3),
        TunePhase(steps=600, lr=1e-4, far_weight=4.0, worst_weight=1.0, latent_noise=0.1),
    )
    tune_batch: int = 16
    tune_worst: float = 0.02
    tune_border_weight: float = 4.0
    tune_corner_weight: float = 4.0
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


def words() -> list[str]:
    return [*world.SHAPES, *world.COLORS, *world.SIZES, *world.BACKGROUNDS, *EXTRA_WORDS]


def sd_scheduler_config(prediction_type: str = "epsilon") -> dict:
    """SD 1.x's noise schedule (reference.md: scaled_linear 0.00085 to 0.012, 1000 steps); SD 2.x's
    768-v models keep it and predict v."""
    return dict(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type,
    )


def alphas_cumprod() -> list[float]:
    """alpha-bar_t of SD 1.x's scaled_linear schedule."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).tolist()


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
    """Linear warm-up then cosine decay to 0 (`warmup_cosine`) within each cycle of `unet_cycles` (SGDR)."""
    s = step
    for n, peak, warmup in unet_cycles(r):
        if s < n:
            break
        s -= n
    return warmup_cosine(s, n, peak, warmup)
