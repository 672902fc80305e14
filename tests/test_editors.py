"""The editors besides Prompt-to-Prompt: MasaCtrl (mutual self-attention) and Plug-and-Play (feature and
Q/K injection). Their mechanics on the tiny SD, their one effect each on the built-in shapes model."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from redraft.errors import InputError
from redraft.p2p.branches import latent_of_rows, self_attention_layers, source_rows
from redraft.p2p.masactrl import start_layer
from redraft.p2p.pnp import injection_layers
from redraft.shapes import world

SOURCE, TARGET = "a photo of a cat", "a photo of a dog"


@pytest.fixture(scope="module")
def builtin(reference_builtin):
    """The built-in model with P2P's defaults: the baselines here are the editors against P2P's defaults."""
    return reference_builtin


def test_layers_run_in_the_forward_order_and_l_keeps_its_fraction(builtin):
    layers = self_attention_layers(builtin.pipeline.unet)
    assert [n.split(".attentions")[0] for n in layers] == ["down_blocks.0", "down_blocks.1", "mid_block",
                                                          "up_blocks.1", "up_blocks.1", "up_blocks.2", "up_blocks.2"]
    assert start_layer(10, 16) == 10 and start_layer(10, 7) == 4 and start_layer(4, 4) == 1
    # PnP: the decoder's self-attention but its first (SD: 8 of 9)
    assert [n.split(".transformer")[0] for n in injection_layers(builtin.pipeline.unet)] == [
        "up_blocks.1.attentions.1", "up_blocks.2.attentions.0", "up_blocks.2.attentions.1"]


def test_each_row_reads_the_source_row_of_its_own_guidance_half():
    # null-text: [u0, u1, u2, c0, c1, c2]; negative-prompt: the source has no unconditional pass: [u1, u2, c0, c1, c2]
    assert source_rows(slice(3, 6), 6).tolist() == [0, 0, 0, 3, 3, 3]
    assert source_rows(slice(2, 5), 5).tolist() == [2, 2, 2, 2, 2]
    assert latent_of_rows(slice(2, 5), 5).tolist() == [1, 2, 0, 1, 2]
    assert source_rows(slice(0, 2), 2).tolist() == [0, 0]  # guidance 1: conditional rows alone


@pytest.mark.parametrize("editing, method, per_step", [("masactrl", "null-text", 4), ("pnp", "null-text", 4),
                                                       ("masactrl", "negative-prompt", 3), ("pnp", "negative-prompt", 3)])
def test_unet_passes_and_the_source_branch(editor, image, editing, method, per_step):
    inv = editor.invert(image, SOURCE, method=method, steps=4, inner_steps=1, progress=False)
    plain = editor.edit(inv, TARGET, progress=False, cross_replace_steps=0.0, self_replace_steps=0.0)
    saved = editor.pipeline.unet.attn_processors
    result = editor.edit(inv, TARGET, editing=editing, masactrl_step=1, masactrl_layer=0, progress=False)
    assert result.unet_forward == 4 * per_step and result.unet_backward == 0  # 2 branches x (uncond, cond)
    assert result.controls.editing == editing
    assert torch.equal(result.latents[0], plain.latents[0])  # the source branch regenerates itself
    assert (result.latents[1] - plain.latents[1]).abs().max() > 1e-3  # the edit reads the source
    assert editor.pipeline.unet.attn_processors.keys() == saved.keys()
    assert all(type(p) is type(saved[n]) for n, p in editor.pipeline.unet.attn_processors.items())


def test_masactrl_reads_nothing_before_its_start_step(editor, image):
    inv = editor.invert(image, SOURCE, method="ddim", steps=3, progress=False)
    off = dict(cross_replace_steps=0.0, self_replace_steps=0.0)
    assert torch.equal(editor.edit(inv, TARGET, editing="masactrl", masactrl_step=3, progress=False).latents,
                       editor.edit(inv, TARGET, progress=False, **off).latents)


@pytest.mark.parametrize("controls, message", [
    (dict(editing="instructpix2pix"), "unknown editing 'instructpix2pix'; choose one of p2p, masactrl, pnp"),
    (dict(editing="masactrl", masactrl_mask=["horse"]), "none of the masactrl_mask words"),
    (dict(editing="pnp", pnp_attn_t=(0.6, 0.2)), "after its end"),
])
def test_bad_editor_controls_say_what_is_wrong(editor, image, controls, message):
    inv = editor.invert(image, SOURCE, method="ddim", steps=2, progress=False)
    with pytest.raises(InputError, match=message):
        editor.edit(inv, TARGET, progress=False, **controls)


def coloured_scenes(n: int):
    """Held-out scenes on a background other than white (the model's most common), for the MasaCtrl test."""
    return [s for s in world.scenes(5, 40, split="test") if s.background != "white"][:n]


def test_masactrl_keeps_the_objects_colour_and_background_under_a_shape_edit(builtin):
    """The target prompt names the new shape and the colour but no background: MasaCtrl's edit reads the
    background (and the colour) from the source; the same prompt without control draws its own."""
    kept = {"masactrl": [], "none": []}
    for k, scene in enumerate(coloured_scenes(4)):
        inv = builtin.invert(world.render(scene), scene.prompt(), method="ddim", steps=12, progress=False)
        shape = random.Random(k).choice([s for s in world.SHAPES if s != scene.shape])
        target = f"a {scene.size} {scene.color} {shape}"
        for name, controls in (("masactrl", dict(editing="masactrl")),
                               ("none", dict(cross_replace_steps=0.0, self_replace_steps=0.0))):
            got = world.read(np.asarray(builtin.edit(inv, target, progress=False, **controls)[1]))
            kept[name].append((got.shape, got.color, got.background) == (shape, scene.color, scene.background))
    assert sum(kept["masactrl"]) == 4, kept
    assert sum(kept["none"]) <= 2, kept


def test_pnp_injection_keeps_the_structure_of_the_source(builtin):
    """A colour swap from Direct Inversion's pivots (PnP's source branch is the inversion's latent): with
    the features and Q/K injected the object stays where it was; with both thresholds at 0 it moves."""
    shifts = {"pnp": [], "off": []}
    for k, scene in enumerate(world.scenes(5, 4, split="test")):
        inv = builtin.invert(world.render(scene), scene.prompt(), method="ddim", steps=12, progress=False)
        colour = random.Random(k).choice([c for c in world.COLORS if c != scene.color])
        target = scene.prompt().replace(f" {scene.color} ", f" {colour} ")
        for name, controls in (("pnp", {}), ("off", dict(pnp_f_t=0.0, pnp_attn_t=0.0))):
            image = builtin.edit(inv, target, editing="pnp", direct=True, progress=False, **controls)[1]
            got = world.read(np.asarray(image))
            assert got.color == colour
            shifts[name].append(world.shift_of(got, scene))
    assert np.median(shifts["pnp"]) < 2.0 and np.median(shifts["off"]) > 2 * np.median(shifts["pnp"]) + 2, shifts


def test_mask_guided_masactrl_composes_foreground_and_background(editor, image):
    inv = editor.invert(image, SOURCE, method="null-text", steps=3, inner_steps=1, progress=False)
    both = dict(editing="masactrl", masactrl_step=1, masactrl_layer=0, progress=False)
    masked = editor.edit(inv, TARGET, masactrl_mask=["cat", "dog"], masactrl_mask_threshold=0.5, **both)
    plain = editor.edit(inv, TARGET, **both)
    assert masked.unet_forward == plain.unet_forward == 3 * 4
    assert torch.equal(masked.latents[0], plain.latents[0])  # the source attends to itself either way
    assert (masked.latents[1] - plain.latents[1]).abs().max() > 1e-4


def test_pnp_injects_features_for_pnp_f_t_not_p2ps_window(editor, image):
    inv = editor.invert(image, SOURCE, method="ddim", steps=3, progress=False)
    pnp = dict(editing="pnp", pnp_attn_t=0.0, progress=False)
    assert torch.equal(editor.edit(inv, TARGET, pnp_f_t=0.0, feature_replace_steps=1.0, **pnp).latents,
                       editor.edit(inv, TARGET, cross_replace_steps=0.0, self_replace_steps=0.0, progress=False).latents)
    assert not torch.equal(editor.edit(inv, TARGET, pnp_f_t=1.0, **pnp).latents,
                           editor.edit(inv, TARGET, pnp_f_t=0.0, **pnp).latents)
