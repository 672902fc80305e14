"""Stage 3: the UNet and its small CLIP text encoder, trained jointly (v objective, offset noise, Min-SNR-style
weights, object-weighted cells, counterfactual pairs, an EMA), and the in-training generation probe."""

from __future__ import annotations

import itertools
import json
import random
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ...io.checkpoints import Checkpointer, load_checkpoint
from .. import world
from ..tokenizer import build_tokenizer
from .data import PromptIds, counterfactual_scenes, sample_prompt, training_scenes
from .recipe import Recipe, alphas_cumprod, counterfactual_start, sd_scheduler_config, unet_cycles, unet_lr, words
from .vae import trained_vae


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


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1 - decay)


@torch.no_grad()
def generation_accuracy(unet, text_encoder, vae, tokenizer, scaling: float, prediction_type: str, n: int = 48,
                        steps: int = 20, guidance: float = 7.5, seed: int = 1) -> dict:
    """Share of held-out full prompts whose every attribute reads back right (a quick in-training probe)."""
    from diffusers import DDIMScheduler

    from ...core.ddim import Schedule
    from ...io.image import to_uint8
    from ...core.sampling import CountedUNet, denoise

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
