"""`Editor`: a loaded model and what users do with it: invert, reconstruct, generate."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from . import checks
from .core import conditioning
from .core.ddim import Schedule
from .core.prompts import check_prompt, encode_prompts
from .core.sampling import CountedUNet
from .describe.model import Description
from .errors import InputError
from .inversions import METHODS, methods as new_methods
from .inversions.ddim import ddim_inversion
from .inversions.direct import on_pivot
from .inversions.null_text import PAPER, WARM, null_text_optimisation
from .io.image import ImageLike, fit, load_image, to_pil, to_tensor
from .io.inversion_file import Cost, Inversion
from .io.mask import MaskLike
from .io.offload import execution_device
from .io.loading import (BUILTIN, DEFAULT_GUIDANCE, compatible_fingerprints, default_device, editing_recipe,
                         fingerprint, load_pipeline, recommended_guidance)
from .p2p.attention import AttentionControl, controlled
from .p2p.controls import Controls
from .p2p.kinds import PROBE_AT, probe
from .p2p import recipe as R
from .p2p.plan import skipped_steps
from .p2p.region import LatentBlend, Region, stop_step
from .p2p.run import run_p2p
from .results import EditResult, WordMaps


def load(model: str | None = None, *, device: str | torch.device | None = None,
         dtype: torch.dtype | None = None, describer: str | Path | None = None, offload: str | None = None) -> "Editor":
    """Load a Stable Diffusion pipeline (diffusers folder or hub id; None: the built-in shapes model).

    Device defaults to CUDA when present; dtype to fp16 on CUDA and fp32 on the CPU. `describer`: a
    describer folder for `Editor.describe` (default: `<model folder>/describer` if there is one). The
    editor's `guidance_scale` and `recipe` (how it edits when no control is passed, `p2p.recipe`) are the
    model's own (its redraft.json), else SD's 7.5 and Prompt-to-Prompt's published defaults.
    `offload`: "model" or "sequential", diffusers' CPU offloading onto `device` (`io.offload`); None: none.
    """
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    pipe = load_pipeline(model, device, dtype, offload=offload)
    return Editor(pipe, model_id=BUILTIN if model is None else str(model), describer=describer, guidance_scale=
                  recommended_guidance(model), recipe=editing_recipe(model), compatible=compatible_fingerprints(model))


class Editor:
    """Describes, inverts, reconstructs and edits images with one Stable Diffusion pipeline."""

    def __init__(self, pipeline, model_id: str, describer: str | Path | None = None,
                 guidance_scale: float = DEFAULT_GUIDANCE, recipe: R.Recipe = R.REFERENCE, compatible: Sequence[str] = ()):
        self.pipeline = pipeline
        self.guidance_scale = guidance_scale  # used wherever a call gives none
        self.recipe = recipe  # the controls of an edit that passes none (`p2p.recipe`)
        self.model_id = model_id
        self.describer_path = Path(describer) if describer is not None else None  # None: the model's own
        self._describer = None  # loaded on first use
        self.fingerprint = fingerprint(pipeline)
        self.fingerprints = (self.fingerprint, *compatible)  # inversions it accepts (`compatible_fingerprints`)
        self.unet = CountedUNet(pipeline.unet)
        self.family = conditioning.family(pipeline)  # "sd" (1.x / 2.x) or "sdxl"

    # ------------------------------------------------------------------ building blocks

    @property
    def device(self) -> torch.device:
        """Where the models compute (with offloading: the hooks' execution device, `io.offload`)."""
        return execution_device(self.pipeline)

    @property
    def resolution(self) -> int:
        """The model's native image size (512 for SD 1.x, 768 for SD 2.x 768-v, 64 for the shapes model)."""
        return self.pipeline.unet.config.sample_size * self.pipeline.vae_scale_factor

    def schedule(self, steps: int) -> Schedule:
        steps = checks.whole("steps", steps, 1, self.pipeline.scheduler.config.num_train_timesteps,
                             fix="50 is the usual number")
        return Schedule.from_scheduler(self.pipeline.scheduler, steps)

    def guidance(self, guidance_scale: float | None) -> float:
        """The guidance scale to use: the editor's for None, else a finite number of at least 0."""
        if guidance_scale is None:
            return self.guidance_scale
        return checks.finite("guidance_scale", guidance_scale, 0,
                             fix=f"this model's default is {self.guidance_scale:g} (1 turns guidance off)")

    def embed(self, prompts: Sequence[str], time_ids: torch.Tensor | None = None, *,
              like: torch.Tensor | None = None) -> torch.Tensor:
        """The prompts' conditioning [B, L, D] (SDXL: packed with the pooled embedding and the time ids,
        `core.conditioning`; `time_ids` [6] or [B, 6], else those of the conditioning `like`, else the
        native size's). SD 1.x / 2.x ignore the time ids."""
        layout = self.unet.layout
        if layout is None:
            return encode_prompts(self.pipeline.tokenizer, self.pipeline.text_encoder, list(prompts), self.device)
        if time_ids is None:
            time_ids = layout.time_ids(like) if like is not None else \
                conditioning.time_ids((self.resolution,) * 2, (self.resolution,) * 2)
        return conditioning.encode_xl(self.pipeline, layout, list(prompts), time_ids, self.device)

    def prepare(self, image: ImageLike, *, keep_aspect: bool = False) -> Image.Image:
        """Any image -> an RGB image at the model's resolution (centre crop, or aspect kept)."""
        return fit(load_image(image), self.resolution, keep_aspect=keep_aspect,
                   multiple=self.pipeline.vae_scale_factor)

    @torch.no_grad()
    def encode(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Images -> latents: the VAE posterior mean times its scale, one image at a time (VAE slicing)."""
        vae = self.pipeline.vae
        x = to_tensor(list(images)).to(self.device, vae.dtype)
        return torch.cat([vae.encode(x[i:i + 1]).latent_dist.mean.float() for i in range(len(x))]) * vae.config.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        """Latents -> images, one at a time (VAE slicing, as `encode`)."""
        vae = self.pipeline.vae
        return [to_pil(vae.decode(z[None].to(vae.dtype) / vae.config.scaling_factor).sample)[0] for z in latents]

    # ------------------------------------------------------------------ description

    @property
    def describer(self):
        """The describer (`redraft.describe.model.Describer`), loaded on first use from the folder given
        to `load(describer=...)`, else `<model folder>/describer`."""
        if self._describer is None:
            from .describe.model import Describer, describer_folder

            self._describer = Describer.load(describer_folder(self.model_id, self.describer_path), device=self.device)
        return self._describer

    def describe(self, image: ImageLike | Sequence[ImageLike], k: int = 5) -> Description | list[Description]:
        """The prompt behind an image (Croitoru et al., Reverse Stable Diffusion): a `Description` with
        the text, the predicted sentence embedding, the predicted words and the `k` nearest known
        prompts. A list of images gives a list."""
        single = not isinstance(image, (list, tuple))
        images = [load_image(im) for im in ([image] if single else image)]
        descriptions = self.describer.describe(images, k=k)
        return descriptions[0] if single else descriptions

    # ------------------------------------------------------------------ inversion

    def invert(self, image: ImageLike | Sequence[ImageLike], prompt: str | Sequence[str] | None = None, *,
               method: str = "negative-prompt", steps: int = 50, guidance_scale: float | None = None,
               null_init: str | None = None, global_null: bool = False, inner_steps: int | None = None,
               keep_aspect: bool = False, settings: dict | None = None, null_pooled: bool = False,
               progress: bool = True) -> Inversion | list[Inversion]:
        """Find the trajectory that regenerates `image` under `prompt` (a list of images: one batch).
        With no prompt (None), the image is described first and the description's prompt is used.

        method: "ddim" (the pivot alone; reconstructed at `guidance_scale`, 1 for the no-CFG baseline),
        "null-text" (Mokady et al.; `null_init` "npi", default: NPI-started steps, `null_text.WARM`; "null":
        the paper's Algorithm 1, `PAPER`; "source": it from the prompt's embedding; `inner_steps` None: the
        rule's; `global_null=True`: one embedding for all steps, from "null"), "negative-prompt" (Miyake et al.),
        "edit-friendly", "edict", "proxnpi" or "spdinv" (`inversions.methods`; `settings` overrides their
        defaults by name, e.g. {"mix": 0.9}). `guidance_scale`: None is the editor's. `null_pooled` (SDXL,
        null-text): optimise the pooled unconditional embedding too (README, "SDXL")."""
        guidance_scale = self.guidance(guidance_scale)
        self.schedule(steps)  # checked before any work
        inner_steps = None if inner_steps is None else checks.whole("inner_steps", inner_steps, 0)
        null_init = null_init or ("null" if global_null else "npi")
        if null_pooled and (self.unet.layout is None or method != "null-text"):
            raise InputError("null_pooled optimises SDXL's pooled null embedding: it needs an SDXL model and "
                             "method='null-text'.")
        if method not in METHODS:
            raise InputError(f"unknown inversion method {method!r}; choose one of {', '.join(METHODS)}.")
        if null_init not in ("null", "source", "npi") or (null_init == "npi" and global_null):
            raise InputError(f"null_init is 'null' (the empty prompt, as in the paper), 'source' or 'npi' (not with global_null); got {null_init!r}.")
        settings = new_methods.settings(method, settings)
        single = not isinstance(image, (list, tuple))
        images = [image] if single else list(image)
        prompts = [prompt] * len(images) if prompt is None or isinstance(prompt, str) else list(prompt)
        if len(prompts) != len(images):
            raise InputError(f"{len(images)} images but {len(prompts)} prompts; give one prompt per image.")
        loaded = [load_image(im) for im in images]
        prepared = [self.prepare(im, keep_aspect=keep_aspect) for im in loaded]
        ids = [conditioning.time_ids(a.size[::-1], b.size[::-1]) for a, b in zip(loaded, prepared)]  # SDXL: original (h, w)
        missing = [i for i, p in enumerate(prompts) if p is None]
        if missing:  # no source prompt: the describer's (Reverse Stable Diffusion)
            for i, description in zip(missing, self.describe([prepared[i] for i in missing])):
                prompts[i] = description.prompt
        for p in prompts:
            check_prompt(self.pipeline.tokenizer, p, what="source prompt", allow_empty=False)
        if len({im.size for im in prepared}) > 1:  # aspect kept and sizes differ: one batch per image
            return [self._invert_batch([im], [p], method, steps, guidance_scale, null_init, global_null,
                                       inner_steps, progress, settings, [i], null_pooled)[0]
                    for im, p, i in zip(prepared, prompts, ids)]
        out = self._invert_batch(prepared, prompts, method, steps, guidance_scale, null_init, global_null,
                                 inner_steps, progress, settings, ids, null_pooled)
        return out[0] if single else out

    def _invert_batch(self, images, prompts, method, steps, guidance_scale, null_init, global_null,
                      inner_steps, progress, settings=None, time_ids=None, null_pooled=False) -> list[Inversion]:
        schedule = self.schedule(steps)
        self.unet.reset()
        started = time.perf_counter()
        ids = torch.stack(time_ids) if time_ids else None
        cond = self.embed(prompts, ids)
        empty = None if method == "negative-prompt" else self.embed([""] * len(prompts), ids)  # NPI needs no ""
        options, extras = settings or {}, {}
        if method in new_methods.NEW:
            pivots, nulls, extras, options = new_methods.invert(method, self.unet, schedule, self.encode(images),
                                                                cond, empty, guidance_scale, options, progress)
        else:
            pivots = ddim_inversion(self.unet, schedule, self.encode(images), cond, progress=progress)
        if method == "null-text":
            with conditioning.pooled_trainable(self.unet, null_pooled):
                rule = (WARM if null_init == "npi" else PAPER).with_inner_steps(inner_steps)
                nulls = null_text_optimisation(
                    self.unet, schedule, pivots, cond, empty if null_init == "null" else cond, guidance_scale,
                    rule=rule, shared=global_null, from_source=null_init == "npi", progress=progress)
            options = {"null_init": null_init, "global_null": global_null, "inner_steps": rule.per_step(steps)}
            if self.unet.layout is not None:
                options["null_pooled"] = null_pooled
        elif method == "negative-prompt":
            nulls = cond[None]
        elif method == "ddim":
            nulls = empty[None]
        seconds = time.perf_counter() - started
        n = len(images)
        cost = Cost(seconds / n, self.unet.forward // n, self.unet.backward // n)
        return [
            Inversion(method=method, prompt=prompts[b], steps=steps, guidance_scale=guidance_scale,
                      pivots=pivots[:, b].cpu(), null_embeddings=nulls[:, b].cpu(),
                      prompt_embedding=cond[b].cpu(), image=np.asarray(images[b]), model_id=self.model_id,
                      model_fingerprint=self.fingerprint, options=options, cost=cost, model_family=self.family,
                      extras={k: v[:, b].cpu() for k, v in extras.items()})
            for b in range(n)
        ]

    def reconstruct(self, inversion: Inversion | Sequence[Inversion], *, progress: bool = True):
        """Regenerate the inverted image(s) from x_T with the saved per-step embeddings: PIL image(s)."""
        single = isinstance(inversion, Inversion)
        invs = [inversion] if single else list(inversion)
        for x in invs:
            x.check_compatible(self.fingerprints, self.model_id, family=self.family)
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
        uncond = torch.stack([x.per_step_nulls() for x in inversions], dim=1).to(self.device)
        h = new_methods.hooks(inversions, len(inversions), schedule, self.device)
        return h.loop(self.unet, schedule, x_T, cond, uncond, first.guidance_scale, progress=progress,
                      desc="reconstruction", noise=h.noise, rule=h.rule, callback=h.callback)

    # ------------------------------------------------------------------ generation and editing

    def generate(self, prompts: str | Sequence[str], *, seed: int = 0, steps: int = 50,
                 guidance_scale: float | None = None, negative_prompt: str = "", progress: bool = True,
                 controls: Controls | str | None = None, size: tuple[int, int] | None = None,
                 mask: MaskLike | None = None, keep_outside: str = "pixels", mask_stop: float | None = None,
                 **overrides) -> EditResult:
        """Images of `prompts`, all from the same starting noise x_T (drawn on the CPU from `seed`).

        Prompt 0 is the source, the others are Prompt-to-Prompt edits of it: `controls` (a `Controls`;
        "paper": the P2P paper's; None: the model's recipe for each edit's kind, `p2p.recipe`), with
        `overrides` set field by field (`cross_replace_steps=0.6`, ...).
        Returns an `EditResult` (one image per prompt). `guidance_scale`: None is the editor's. `size`:
        (height, width) in pixels, multiples of the VAE's factor (None: the model's native square).
        `mask` confines the edits to a region, as in `edit`; what is kept is the source branch's image.
        """
        guidance_scale = self.guidance(guidance_scale)
        seed = checks.whole("seed", seed, 0)
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        schedule, size = self.schedule(steps), self.check_size(size)
        ids = conditioning.time_ids(size, size)
        cond = self.embed(prompts, ids)
        x_T = self.initial_noise(seed, size).expand(len(prompts), -1, -1, -1)
        rows = R.per_edit(self.recipe, self.pipeline.tokenizer, prompts, controls, overrides,
                          switches := {"direct": False, "mask_stop": mask_stop},
                          lambda maps: probe(self.unet, x_T[:1], schedule.timesteps[0], cond, 0, maps))
        if len(parts := R.groups(rows)) > 1:  # edits of kinds the recipe treats apart: one run each
            return EditResult.joined([self.generate([prompts[0], *(prompts[k + 1] for k in ks)], seed=seed, steps=steps,
                                      guidance_scale=guidance_scale, negative_prompt=negative_prompt, progress=progress,
                                      controls=c, size=size, mask=mask, keep_outside=keep_outside,
                                      mask_stop=sw["mask_stop"]) for c, sw, ks in parts], [ks for *_, ks in parts])
        controls, switches = rows[0] if rows else R.in_effect(self.recipe, None, controls, overrides, switches)
        if controls.skip_steps:
            raise InputError("skip_steps starts an edit from an inversion's pivots; generation has none "
                             "(invert an image and edit it, or leave skip_steps at 0).")
        uncond = self.embed([negative_prompt] * len(prompts), ids)
        region = Region.of(mask, keep_outside, size, tuple(x_T.shape[-2:]), self.pipeline.vae_scale_factor, self.device,
                           switches["mask_stop"])
        result = self._p2p(prompts, x_T, cond, uncond, guidance_scale, schedule, controls, None, progress,
                           "generation", region=region and LatentBlend.on_source_branch(
                               region.latent, stop_step(region.mask_stop, steps)))
        return region.apply(result, result.images[0]) if region else result

    def edit(self, inversion: Inversion, target: str | Sequence[str], *, direct: bool | None = None,
             progress: bool = True, controls: Controls | str | None = None, mask: MaskLike | None = None,
             keep_outside: str = "pixels", mask_stop: float | None = None, **overrides) -> EditResult:
        """Edit an inverted image by editing its prompt: an `EditResult` [source branch, edit 1, ...].

        All branches start from the inversion's x_T (or its pivot at `skip_steps`) and use its per-step
        unconditional embeddings (null-text: the optimised ones; negative-prompt: the source prompt's).
        The source branch reproduces `reconstruct(inversion)`. `controls` (None: the model's recipe for
        each edit's kind, `p2p.recipe`; "paper": the P2P paper's; or a `Controls`) with `overrides` set
        field by field. `direct=True` is Direct Inversion (`inversions.direct`; None: the recipe's), whose
        NPI / null-text edits guide against "", not the source's nulls (docs/experiments/direct_nulls.py).

        `mask` (a PIL image, an array or a path; white or True = may change, soft values allowed; resized
        to the inversion's image when only its size differs, `io.mask`) confines every edit to a region
        (`p2p.region`, Blended Latent Diffusion, Avrahami et al. 2023): after each step an edit's latent
        outside the mask is the inversion's pivot at that step, then (`keep_outside="pixels"`) the
        pixels outside the slightly grown, feathered mask are the input image's own; `"latents"` keeps
        the latent blend only. With LocalBlend, the mask bounds its region. `mask_stop` (a fraction of
        the steps; None: the recipe's, else Blended Latent Diffusion's 1: all) ends the latent blend early,
        so that the last steps can mend a VAE whose latents are not local (the built-in model's).
        """
        inversion.check_compatible(self.fingerprints, self.model_id, family=self.family)
        targets = [target] if isinstance(target, str) else list(target)
        if not targets:
            raise InputError("give at least one target prompt to edit towards.")
        for t in targets:
            check_prompt(self.pipeline.tokenizer, t, what="target prompt", allow_empty=False)
        prompts = [inversion.prompt, *targets]
        schedule = self.schedule(inversion.steps)
        b, at = len(prompts), min(int(PROBE_AT * inversion.steps), inversion.steps - 1)  # where kinds are read
        source = inversion.prompt_embedding[None].to(self.device)
        cond = torch.cat([source, self.embed(targets, like=source)])
        pivots = inversion.pivots.to(self.device)
        rows = R.per_edit(self.recipe, self.pipeline.tokenizer, prompts, controls, overrides,
                          {"direct": direct, "mask_stop": mask_stop},
                          lambda maps: probe(self.unet, pivots[at][None], schedule.timesteps[at], cond, at, maps),
                          drop=new_methods.NOT_FROM_RECIPE.get(inversion.method, ()))
        if len(parts := R.groups(rows)) > 1:  # edits of kinds the recipe treats apart: one run each
            return EditResult.joined([self.edit(inversion, [targets[k] for k in ks], progress=progress, controls=c,
                                                mask=mask, keep_outside=keep_outside, **sw)
                                      for c, sw, ks in parts], [ks for *_, ks in parts])
        (controls, switches), direct = rows[0], rows[0][1]["direct"]
        nulls = self.embed([""], like=source).cpu().expand(inversion.steps, -1, -1) \
            if direct and inversion.method in new_methods.SOURCE_NULLS else inversion.per_step_nulls()
        uncond = nulls[:, None].expand(-1, b, -1, -1).to(self.device)
        start = skipped_steps(controls.skip_steps, inversion.steps)
        z_start = pivots[start][None].expand(b, -1, -1, -1)  # x_T unless the first steps are skipped
        region = Region.of(mask, keep_outside, inversion.image.shape[:2], tuple(z_start.shape[-2:]),
                           self.pipeline.vae_scale_factor, self.device, switches["mask_stop"])
        hooks = new_methods.hooks([inversion], b, schedule, self.device, start, direct)
        result = self._p2p(prompts, z_start, cond, uncond, inversion.guidance_scale, schedule, controls,
                           on_pivot(pivots) if direct else None, progress, "editing", start=start, hooks=hooks,
                           region=region and LatentBlend.on_pivots(region.latent, pivots,
                                                                   stop_step(region.mask_stop, inversion.steps)))
        result.direct = direct
        return region.apply(result, inversion.image) if region else result

    def attention_maps(self, image: ImageLike | Inversion, prompt: str | None = None, *, resolution: int | None = None,
                       steps: int = 50, progress: bool = True) -> WordMaps:
        """Per-word attention maps of an image under its prompt (averaged over steps, layers and heads).

        A real image is inverted first (negative-prompt: no optimisation) and the maps are read while
        it is regenerated; an `Inversion` is replayed as it is. `resolution`: a map size the UNet has
        (e.g. 16 or 32 for SD 1.x at 512 px), or None for all of them averaged.
        """
        inversion = image if isinstance(image, Inversion) else \
            self.invert(image, prompt, method="negative-prompt", steps=steps, progress=progress)
        inversion.check_compatible(self.fingerprints, self.model_id, family=self.family)
        control = AttentionControl(tuple(inversion.x_T.shape[-2:]))
        with controlled(self.unet, control):
            self.replay([inversion], progress=progress)
        return self.word_maps(control, inversion.prompt, Image.fromarray(inversion.image), resolution)

    def word_maps(self, source: EditResult | AttentionControl, prompt: str | None = None,
                  image: Image.Image | None = None, resolution: int | None = None, row: int = 0) -> WordMaps:
        """One map per word of prompt `row`, from an `EditResult` (its prompt and image by default) or
        an attention store."""
        return WordMaps.read(self.pipeline.tokenizer, source, prompt, image, resolution, row)

    @contextmanager
    def using_unet(self, unet: CountedUNet):
        """Within the block, every sampling loop of this editor calls `unet` (e.g. a UNet whose encoder
        is swapped: `describe.discovery`); the attention processors installed on it stay."""
        saved, self.unet = self.unet, unet
        unet.controller = saved.controller
        try:
            yield self
        finally:
            self.unet = saved

    def _p2p(self, prompts, z_start, cond, uncond, guidance_scale, schedule, controls: Controls, reset,
             progress: bool, desc: str, start: int = 0, region: LatentBlend | None = None,
             hooks: new_methods.Hooks | None = None) -> EditResult:
        """`p2p.run.run_p2p` on this editor's UNet, tokenizer and VAE."""
        return run_p2p(self.unet, self.pipeline.tokenizer, self.decode, prompts, z_start, cond, uncond, guidance_scale,
                       schedule, controls, reset, progress, desc, start, region, hooks)

    def check_size(self, size) -> tuple[int, int]:
        """(height, width) checked to be positive multiples of the VAE's factor; None: the native square."""
        return conditioning.check_size(size, self.pipeline.vae_scale_factor, self.resolution)

    def initial_noise(self, seed: int, size: tuple[int, int] | None = None) -> torch.Tensor:
        """x_T ~ N(0, I) for one image, reproducible across devices (drawn on the CPU)."""
        (h, w), f = size or (self.resolution, self.resolution), self.pipeline.vae_scale_factor
        shape = (1, self.pipeline.unet.config.in_channels, h // f, w // f)
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(self.device)

