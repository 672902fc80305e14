"""The paper's "discovery" (Reverse Stable Diffusion, Croitoru et al. 2024, section "discovery"): a
U-Net encoder fine-tuned to predict prompts, put back into the diffusion model, makes generated
images follow their prompts better.

`tuned_encoder(editor, describer)` is the switch: inside the `with` block the editor's U-Net runs
the describer's encoder (conv_in, time embedding, input and middle blocks) in place of its own from
sampling step `from_step` on (the paper keeps the original for the first step, which lays out the
image from pure noise); the decoder half is the model's own. Nothing changes outside the block.

    with tuned_encoder(editor, Describer.load("runs/unet-describer")):
        images = editor.generate("a small red circle on a black background")
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

from ..errors import InputError
from ..core.sampling import CountedUNet
from .backbones import UNetEncoder

ENCODER_PARTS = ("conv_in", "time_embedding", "down_blocks", "mid_block")


def tuned_unet(unet, encoder: UNetEncoder):
    """A copy of `unet` whose encoder parts are the (fine-tuned) describer encoder's."""
    if dict(encoder.unet_config) != dict(unet.config):
        raise InputError("the describer's U-Net encoder was made from another U-Net architecture than this "
                         "model's; train it with --backbone unet on this model")
    tuned = copy.copy(unet)  # a shallow copy shares every module; only the encoder parts are replaced
    tuned._modules = dict(unet._modules)
    for name in ENCODER_PARTS:
        tuned._modules[name] = copy.deepcopy(getattr(encoder, name)).to(unet.device, unet.dtype).requires_grad_(False)
    return tuned


class SwitchedUNet(CountedUNet):
    """`CountedUNet` that calls `tuned` for sampling steps >= `from_step` and the original before."""

    def __init__(self, original, tuned, from_step: int = 1):
        super().__init__(original)
        self.original, self.tuned, self.from_step = original, tuned, from_step

    def __call__(self, z, t, context, *, step=None, cond_rows=None):
        self.unet = self.tuned if step is not None and step >= self.from_step else self.original
        return super().__call__(z, t, context, step=step, cond_rows=cond_rows)


@contextmanager
def tuned_encoder(editor, describer, from_step: int = 1):
    """Within the block, `editor` samples with the describer's U-Net encoder from step `from_step` on."""
    if not isinstance(describer.backbone, UNetEncoder):
        raise InputError("this describer's backbone is not a U-Net encoder; train one with --backbone unet --finetune")
    switched = SwitchedUNet(editor.pipeline.unet, tuned_unet(editor.pipeline.unet, describer.backbone), from_step)
    with editor.using_unet(switched):
        yield editor
