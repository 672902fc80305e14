"""Train the built-in shapes model: a Stable Diffusion 1.x pipeline of the shapes world, from scratch, on a CPU.

Three stages, each resumable from its own checkpoint (`DIR/work/`):
1. `vae`: an AutoencoderKL (64 x 64 RGB <-> 4 x 16 x 16), L1 + MSE + a tiny KL term; then
   `decoder`: its decoder alone, object-weighted, on noised latents (the latent space stays); then
   `decoder-tune` (`decoder.retune_decoder`): the decoder once more, against its ghosts, frame and tips.
2. `latents`: encode a fixed set of training scenes once (the VAE mean), and set the VAE's
   `scaling_factor` to 1 / std of those latents, as SD 1.x's 0.18215 was chosen.
3. `unet`: the UNet and a small CLIP text encoder, trained jointly on the v objective (SD 2.x's
   `v_prediction`, Salimans & Ho 2022) with offset noise (a per-channel constant added to the noise) so
   that the noisiest steps must read the prompt, Min-SNR-style capping of the low-noise weights
   (Hang et al., ICCV 2023), 10% empty prompts for classifier-free guidance, optional prompt words
   dropped at random, and an EMA of the weights.
Then `export` writes the EMA weights as a diffusers `StableDiffusionPipeline` folder (safetensors).

Scenes whose `split` is "test" are never used here: benchmarks and the demo draw from them.

The package: `recipe` (`Recipe`, the schedules), `data` (scenes, pairs, prompts), `vae` (stages 1-2), `decoder` (stage 1c),
`unet` (stage 3), `pipeline` (`export`: the pipeline folder; the plot; `train`); every name is importable from
here (`from redraft.shapes.train import Recipe, train`). `python -m redraft.shapes.train DIR` trains.
"""

from __future__ import annotations

from ...io.checkpoints import Checkpointer
from .decoder import retune_decoder, retune_loss, retune_model
from .data import PromptIds, counterfactual_scenes, render_batch, sample_prompt, training_scenes
from .pipeline import assemble, export, plot_training, train
from .recipe import (EXTRA_WORDS, Recipe, TunePhase, alphas_cumprod, counterfactual_start, sd_scheduler_config, unet_cycles,
                     unet_lr, words)
from .unet import (blank_padding, build_text_encoder, build_unet, cell_weights, ema_update, generation_accuracy,
                   loss_weights, noise_like, object_cells, objective, train_unet)
from .vae import (DECODER_WARMUP, build_vae, encode_latents, encode_scenes, finetune_decoder, object_weights,
                  train_vae, trained_vae)

__all__ = ["DECODER_WARMUP", "EXTRA_WORDS", "Checkpointer", "PromptIds", "Recipe", "TunePhase", "alphas_cumprod", "assemble",
           "blank_padding", "build_text_encoder", "build_unet", "build_vae", "cell_weights", "counterfactual_scenes",
           "counterfactual_start", "ema_update", "encode_latents", "encode_scenes", "export", "finetune_decoder",
           "generation_accuracy", "loss_weights", "noise_like", "object_cells", "object_weights", "objective",
           "plot_training", "render_batch", "retune_decoder", "retune_loss", "retune_model", "sample_prompt", "sd_scheduler_config", "train", "train_unet",
           "train_vae", "trained_vae", "training_scenes", "unet_cycles", "unet_lr", "words"]
