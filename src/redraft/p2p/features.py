"""Feature injection: the source's spatial features replace the edits' in chosen UNet blocks.

Plug-and-Play (Tumanyan et al., CVPR 2023, sec. 4.1) shows that the output of a ResNet block of
the UNet's decoder (SD's "layer 4": `up_blocks.1.resnets.1`) carries the image's structure (where
things are and their outlines) and little of its appearance. Replacing the edits' output of that block
by the source's for the first `feature_replace_steps` of the steps (PnP's tau_f) keeps every object
where the source has it, while cross-attention still draws what the target prompt names:

    f_b <- f_0    for every edit b, at the steps of the window, in the blocks of `feature_layers`

The rows follow the sampling loop's batch: an edit's conditional row takes the source's conditional
row, and its unconditional row the source's unconditional row (the conditional one when the source
has no unconditional pass: negative-prompt inversion, where the two are the same). A layout-guidance
pass (`redraft.guidance`) sees the edits' own features: it measures where the edit itself draws.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import torch

from .attention import AttentionControl
from ..errors import InputError


class FeatureInjection:
    """A forward hook: the source's rows of a block's output copied onto the edits' rows at the steps of `window`."""

    def __init__(self, control: AttentionControl, window: torch.Tensor):
        self.control, self.window = control, window  # the control knows the step and the batch's layout

    def __call__(self, module, inputs, output: torch.Tensor) -> torch.Tensor | None:
        step, cond = self.control.step, self.control.cond_rows
        if step is None or not self.window[step] or output.requires_grad or cond.stop - cond.start < 2:
            return None
        output = output.clone()
        output[cond.start + 1:cond.stop] = output[cond.start]
        uncond = cond.start  # unconditional rows 0 .. uncond - 1 (`sampling.guided_output`'s layout)
        if uncond:  # one per latent: the source's is row 0; one fewer: the source has none
            output[:uncond] = output[0 if uncond == cond.stop - cond.start else cond.start]
        return output


def blocks(unet, names: Sequence[str]) -> list[torch.nn.Module]:
    """The UNet's submodules called `names` (e.g. "up_blocks.1.resnets.1"), or an error naming the candidates."""
    modules = dict(unet.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        resnets = [n for n in modules if n.startswith("up_blocks.") and ".resnets." in n and n.count(".") == 3]
        raise InputError(f"feature_layers {missing} are not blocks of this UNet; its decoder's ResNet blocks are {resnets}.")
    return [modules[n] for n in names]


@contextmanager
def injected(unet, control: AttentionControl, names: Sequence[str], window: torch.Tensor):
    """Inject the source's features in `names` for the duration of a call (no hook is left behind)."""
    hook = FeatureInjection(control, window)
    handles = [m.register_forward_hook(hook) for m in blocks(unet, names)]
    try:
        yield hook
    finally:
        for h in handles:
            h.remove()
