"""What the attention processors compute explicitly during a Prompt-to-Prompt edit (`p2p.attention`): maps
only for the conditional rows the controller reads (fused SDPA for the unconditional ones), and in the
self-attention layers P2P injects in, only the source's map, a few heads at a time."""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

from redraft.p2p import attention

PROMPT, TARGET, STEPS = "a photo of a cat", "a photo of a dog", 4


class Softmaxes(TorchFunctionMode):
    """Records the shape of every softmax input."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") == "softmax":
            self.shapes.append(tuple(args[0].shape))
        return func(*args, **(kwargs or {}))


def test_maps_of_the_conditional_rows_only_and_the_source_self_map_by_heads(editor, image, monkeypatch):
    inv = editor.invert(image, PROMPT, steps=STEPS, progress=False)
    reference = editor.edit(inv, TARGET, progress=False, self_replace_steps=1.0)
    # one head of the tiny UNet's 4 x 4 self-attention (the layers P2P injects in: half the 8 x 8 latent's side)
    monkeypatch.setattr(attention, "MAP_ELEMENTS", 16 * 16, raising=False)
    with Softmaxes() as seen:
        out = editor.edit(inv, TARGET, progress=False, self_replace_steps=1.0)
    assert out.unet_forward == 3 * STEPS  # the batch: [target's unconditional, source, target]
    cross = [s for s in seen.shapes if s[-1] == 77]
    own_self = [s for s in seen.shapes if len(s) == 4 and s[-1] != 77]
    shared = [s for s in seen.shapes if len(s) == 3]
    assert cross and all(s[0] == 2 for s in cross)  # the two conditional rows, not the unconditional one
    assert not own_self  # no row's own self-attention map is made where the source's replaces it
    # one layer at 4 x 4 (the mid-block), 2 heads: the source's map, one head at a time, every step
    assert len(shared) == 2 * STEPS and set(shared) == {(1, 16, 16)}
    torch.testing.assert_close(out.latents, reference.latents, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.attention.cross_maps(), reference.attention.cross_maps())


def test_shared_source_attention_is_the_source_map_applied_to_every_row():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 4, 10, 8, generator=g) for _ in range(3))
    expected = torch.softmax(q[0] @ k[0].transpose(-1, -2) * 0.3, dim=-1) @ v  # [3, 4, 10, 8]
    torch.testing.assert_close(attention.shared_source_attention(q, k[0], v, None, 0.3), expected)
