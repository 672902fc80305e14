"""The trained model as a diffusers StableDiffusionPipeline folder, its training plot, and `train`: every
stage in order, resumable."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from safetensors.torch import load_file

from ...io.checkpoints import checkpoint_log
from ...io.files import pyplot, save_figure
from ...io.loading import SETTINGS
from .. import world
from ..tokenizer import build_tokenizer
from .decoder import retune_decoder
from .recipe import Recipe, sd_scheduler_config, words
from .unet import build_text_encoder, build_unet, train_unet
from .vae import encode_latents, finetune_decoder, train_vae, trained_vae


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
    for name, stage in (("vae", train_vae), ("decoder", finetune_decoder), ("decoder-tune", retune_decoder),
                        ("latents", encode_latents), ("unet", train_unet)):
        t0 = time.time()
        stage(out, r)
        times[name] = times.get(name, 0.0) + time.time() - t0
        times_path.write_text(json.dumps(times))
    return export(out, r)
