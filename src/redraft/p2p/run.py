"""One Prompt-to-Prompt run: the one sampling loop (`core.sampling`, or an inversion method's) with the
edit's attention control, LocalBlend, layout guidance, feature injection, the re-noised step, Direct
Inversion's reset and a user mask's latent blend, each installed for the run and removed after it."""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Callable

import torch

from ..inversions import methods as new_methods
from ..results import EditResult
from . import editors
from .attention import AttentionControl, controlled
from .blend import LocalBlend
from .controls import Controls
from .features import injected
from .layout import layout_guidance
from .plan import plan
from .region import LatentBlend
from .renoise import Renoise


def run_p2p(unet, tokenizer, decode: Callable, prompts, z_start, cond, uncond, guidance_scale, schedule,
            controls: Controls, reset, progress: bool, desc: str, start: int = 0, region: LatentBlend | None = None,
            hooks: new_methods.Hooks | None = None) -> EditResult:
    """The one sampling loop with attention control, from `z_start` at step `start`; `reset(i, z)` is
    Direct Inversion's callback (or None); `region` the user mask's blend, after LocalBlend's; `hooks`
    the inversion method's (`inversions.methods`); `decode` turns the final latents into images."""
    hooks = hooks or new_methods.Hooks()
    if controls.target_guidance is not None and len(prompts) > 1:  # the source keeps its own
        guidance_scale = torch.tensor([guidance_scale] + [controls.target_guidance] * (len(prompts) - 1))
    started = time.perf_counter()
    unet.reset()
    steps = schedule.steps
    editing, latent_hw = len(prompts) > 1, tuple(z_start.shape[-2:])
    control = AttentionControl(latent_hw, plan=editors.own_plan(
        plan(tokenizer, prompts, controls, steps, latent_hw, inverted=desc != "generation"), controls) if editing else None)
    processors = editors.processors(unet.unet, control, controls, tokenizer, prompts, steps) if editing else {}
    blend = LocalBlend.from_controls(tokenizer, prompts, controls, control, steps)
    guide = layout_guidance(unet, control, tokenizer, prompts, cond, controls.layout_guidance,
                            controls.layout_guidance_steps, steps) if editing and controls.layout_guidance else None
    renoise = Renoise(controls.renoise_step, steps, controls.renoise_strength, controls.renoise_seed, start) \
        if editing and controls.renoise_step is not None else None
    features = editors.feature_window(controls, steps) if editing else None
    callbacks = [fn for fn in (hooks.callback, reset, blend, region) if fn is not None]
    noise = renoise if hooks.noise is None else \
        hooks.noise if renoise is None else (lambda i, eps: renoise(i, hooks.noise(i, eps)))

    def callback(i: int, z: torch.Tensor):
        for fn in callbacks:
            replaced = fn(i, z)
            z = z if replaced is None else replaced
        return z

    with controlled(unet, control, processors), \
            injected(unet.unet, control, controls.feature_layers, features) if features is not None else nullcontext():
        z = hooks.loop(unet, schedule, z_start, cond, uncond, guidance_scale, callback=callback, guide=guide,
                       noise=noise, rule=hooks.rule, start=start, progress=progress, desc=desc)
    images = decode(z)
    blend_mask = blend.mask if blend is not None else None
    if blend_mask is not None and region is not None:  # the user's mask bounds LocalBlend's region
        blend_mask = blend_mask & (region.mask > 0)
    return EditResult(images, list(prompts), controls, control, z, blend_mask,
                      unet.forward, unet.backward, time.perf_counter() - started)
