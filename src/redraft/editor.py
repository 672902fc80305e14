"""`Editor`: a loaded model and what users do with it: invert, reconstruct, generate."""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from . import invert as inv
from .ddim import Schedule
from .errors import InputError
from .image import ImageLike, fit, load_image, to_pil, to_tensor
from .inversion import METHODS, Cost, Inversion
from .loading import BUILTIN, default_device, fingerprint, load_pipeline
from .prompts import check_prompt, encode_prompts
from .sampling import CountedUNet, denoise


def load(model: str | None = None, *, device: str | torch.device | None = None,
         dtype: torch.dtype | None = None) -> "Editor":
    """Load a Stable Diffusion pipeline (diffusers folder or hub id; None: the built-in shapes model).

    Device defaults to CUDA when present; dtype to fp16 on CUDA and fp32 on the CPU.
    """
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    pipe = load_pipeline(model, device, dtype)
    return Editor(pipe, model_id=BUILTIN if model is None else str(model))


class Editor:
    """Inverts, reconstructs and (with `redraft.edit`) edits images with one Stable Diffusion pipeline."""

    def __init__(self, pipeline, model_id: str):
        self.pipeline = pipeline
        self.model_id = model_id
        self.fingerprint = fingerprint(pipeline)
        self.unet = CountedUNet(pipeline.unet)

    # ------------------------------------------------------------------ building blocks

    @property
    def device(self) -> torch.device:
        return self.pipeline.unet.device

    @property
    def resolution(self) -> int:
        """The model's native image size (512 for SD 1.x, 768 for SD 2.x 768-v, 64 for the shapes model)."""
        return self.pipeline.unet.config.sample_size * self.pipeline.vae_scale_factor

    def schedule(self, steps: int) -> Schedule:
        if not isinstance(steps, int) or steps < 1 or steps > self.pipeline.scheduler.config.num_train_timesteps:
            raise InputError(f"steps must be a whole number from 1 to "
                             f"{self.pipeline.scheduler.config.num_train_timesteps}; got {steps!r}.")
        return Schedule.from_scheduler(self.pipeline.scheduler, steps)

    def embed(self, prompts: Sequence[str]) -> torch.Tensor:
        return encode_prompts(self.pipeline.tokenizer, self.pipeline.text_encoder, list(prompts))

    def prepare(self, image: ImageLike, *, keep_aspect: bool = False) -> Image.Image:
        """Any image -> an RGB image at the model's resolution (centre crop, or aspect kept)."""
        return fit(load_image(image), self.resolution, keep_aspect=keep_aspect,
                   multiple=self.pipeline.vae_scale_factor)

    @torch.no_grad()
    def encode(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Images -> latents: the VAE posterior mean times its scaling factor (reference.md)."""
        vae = self.pipeline.vae
        x = to_tensor(list(images)).to(self.device, vae.dtype)
        return vae.encode(x).latent_dist.mean.float() * vae.config.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        vae = self.pipeline.vae
        return to_pil(vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample)

    # ------------------------------------------------------------------ inversion

    def invert(self, image: ImageLike | Sequence[ImageLike], prompt: str | Sequence[str] | None = None, *,
               method: str = "negative-prompt", steps: int = 50, guidance_scale: float = 7.5,
               null_init: str = "null", global_null: bool = False, inner_steps: int = 10,
               keep_aspect: bool = False, progress: bool = True) -> Inversion | list[Inversion]:
        """Find the trajectory that regenerates `image` under `prompt` (a list of images: one batch).

        method: "ddim" (the pivot alone; reconstructed at `guidance_scale`, 1 for the no-CFG baseline),
        "null-text" (Mokady et al.; `null_init="source"` starts from the prompt's embedding,
        `global_null=True` optimises one embedding for all steps), or "negative-prompt" (Miyake et al.).
        """
        if method not in METHODS:
            raise InputError(f"unknown inversion method {method!r}; choose one of {', '.join(METHODS)}.")
        if null_init not in ("null", "source"):
            raise InputError(f"null_init must be 'null' (the empty prompt, as in the paper) or 'source'; got {null_init!r}.")
        single = not isinstance(image, (list, tuple))
        images = [image] if single else list(image)
        prompts = [prompt] * len(images) if prompt is None or isinstance(prompt, str) else list(prompt)
        if len(prompts) != len(images):
            raise InputError(f"{len(images)} images but {len(prompts)} prompts; give one prompt per image.")
        for p in prompts:
            if p is None:
                raise InputError("a source prompt is needed to invert an image; give the text that describes it.")
            check_prompt(self.pipeline.tokenizer, p, what="source prompt", allow_empty=False)
        prepared = [self.prepare(im, keep_aspect=keep_aspect) for im in images]
        if len({im.size for im in prepared}) > 1:  # aspect kept and sizes differ: one batch per image
            return [self._invert_batch([im], [p], method, steps, guidance_scale, null_init, global_null,
                                       inner_steps, progress)[0] for im, p in zip(prepared, prompts)]
        out = self._invert_batch(prepared, prompts, method, steps, guidance_scale, null_init, global_null,
                                 inner_steps, progress)
        return out[0] if single else out

    def _invert_batch(self, images, prompts, method, steps, guidance_scale, null_init, global_null,
                      inner_steps, progress) -> list[Inversion]:
        schedule = self.schedule(steps)
        self.unet.reset()
        started = time.perf_counter()
        cond = self.embed(prompts)
        empty = self.embed([""] * len(prompts))
        pivots = inv.ddim_inversion(self.unet, schedule, self.encode(images), cond, progress=progress)
        options: dict = {}
        if method == "null-text":
            nulls = inv.null_text_optimisation(
                self.unet, schedule, pivots, cond, cond if null_init == "source" else empty, guidance_scale,
                inner_steps=inner_steps, shared=global_null, progress=progress)
            options = {"null_init": null_init, "global_null": global_null, "inner_steps": inner_steps}
        elif method == "negative-prompt":
            nulls = cond[None]
        else:
            nulls = empty[None]
        seconds = time.perf_counter() - started
        n = len(images)
        cost = Cost(seconds / n, self.unet.forward // n, self.unet.backward // n)
        return [
            Inversion(method=method, prompt=prompts[b], steps=steps, guidance_scale=guidance_scale,
                      pivots=pivots[:, b].cpu(), null_embeddings=nulls[:, b].cpu(),
                      prompt_embedding=cond[b].cpu(), image=np.asarray(images[b]), model_id=self.model_id,
                      model_fingerprint=self.fingerprint, options=options, cost=cost)
            for b in range(n)
        ]

    def reconstruct(self, inversion: Inversion | Sequence[Inversion], *, progress: bool = True):
        """Regenerate the inverted image(s) from x_T with the saved per-step embeddings: PIL image(s)."""
        single = isinstance(inversion, Inversion)
        invs = [inversion] if single else list(inversion)
        for x in invs:
            x.check_compatible(self.fingerprint, self.model_id)
        if len({(x.steps, x.guidance_scale, tuple(x.pivots.shape)) for x in invs}) > 1:
            return [self.reconstruct(x, progress=progress) for x in invs]
        z = self.replay(invs, progress=progress)
        images = self.decode(z)
        return images[0] if single else images

    def replay(self, inversions: Sequence[Inversion], *, progress: bool = True) -> torch.Tensor:
        """The clean latents that a batch of inversions regenerate (same steps and guidance)."""
        first = inversions[0]
        schedule = self.schedule(first.steps)
        x_T = torch.stack([x.x_T for x in inversions]).to(self.device)
        cond = torch.stack([x.prompt_embedding for x in inversions]).to(self.device)
        uncond = torch.stack([per_step_nulls(x) for x in inversions], dim=1).to(self.device)
        return denoise(self.unet, schedule, x_T, cond, uncond, first.guidance_scale, progress=progress,
                       desc="reconstruction")

    # ------------------------------------------------------------------ generation

    def generate(self, prompts: str | Sequence[str], *, seed: int = 0, steps: int = 50,
                 guidance_scale: float = 7.5, negative_prompt: str = "", progress: bool = True) -> list[Image.Image]:
        """Images of `prompts`, all from the same starting noise x_T (drawn on the CPU from `seed`)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        schedule = self.schedule(steps)
        cond = self.embed(prompts)
        uncond = self.embed([negative_prompt] * len(prompts))
        z = self.initial_noise(seed).expand(len(prompts), -1, -1, -1)
        return self.decode(denoise(self.unet, schedule, z, cond, uncond, guidance_scale, progress=progress,
                                   desc="generation"))

    def initial_noise(self, seed: int, size: tuple[int, int] | None = None) -> torch.Tensor:
        """x_T ~ N(0, I) for one image, reproducible across devices (drawn on the CPU)."""
        h, w = size or (self.resolution, self.resolution)
        f = self.pipeline.vae_scale_factor
        shape = (1, self.pipeline.unet.config.in_channels, h // f, w // f)
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(self.device)


def per_step_nulls(inversion: Inversion) -> torch.Tensor:
    """[N, L, D]: the unconditional embedding of every step."""
    return inversion.null_embeddings.expand(inversion.steps, -1, -1) if len(inversion.null_embeddings) == 1 \
        else inversion.null_embeddings
