"""diffusers' CPU offloading (`io.offload`) under redraft: inversion and a Prompt-to-Prompt edit on the tiny
SD and SDXL pipelines, offloaded, give the plain editor's results with the same UNet passes.

There is no accelerator here: the offload device is the CPU. With "sequential" the weights really are on
the meta device between calls and come from accelerate's CPU copies layer by layer (asserted below), so
any read of a parameter's device or data by redraft fails as it would on a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import redraft
from redraft import InputError, Inversion

PROMPT, TARGET, STEPS = "a photo of a cat", "a photo of a dog", 4


def picture(size: int):
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size]
    a = np.stack([x * 255 // size, y * 255 // size, np.full_like(x, 90)], -1).astype(np.uint8)
    a[size // 4:size // 2, size // 3:2 * size // 3] = (230, 40, 40)
    return Image.fromarray(a)


@pytest.fixture(scope="module", params=["sd", "sdxl"])
def family(request, tiny_folder, tiny_xl_folder, editor, xl_editor):
    """(model folder, the plain editor of it, its inversion and its edit without offloading)."""
    folder, plain = (tiny_folder, editor) if request.param == "sd" else (tiny_xl_folder, xl_editor)
    inv = plain.invert(picture(plain.resolution), PROMPT, steps=STEPS, progress=False)
    return folder, plain, inv, plain.edit(inv, TARGET, progress=False)


@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_offloaded_editor_inverts_and_edits_as_the_plain_one(family, mode):
    folder, plain, inv, edit = family
    ed = redraft.load(str(folder), device="cpu", offload=mode)
    unet = ed.pipeline.unet
    if mode == "sequential":  # the weights live in the hooks' CPU copies, not in the modules
        assert unet.conv_in.weight.is_meta and ed.pipeline.vae.decoder.conv_out.weight.is_meta
    else:
        assert hasattr(unet, "_hf_hook") and not unet.conv_in.weight.is_meta
    assert ed.device == torch.device("cpu") and ed.fingerprint == plain.fingerprint
    mine = ed.invert(picture(ed.resolution), PROMPT, steps=STEPS, progress=False)
    assert mine.cost.unet_forward == inv.cost.unet_forward == STEPS
    torch.testing.assert_close(mine.pivots, inv.pivots, rtol=1e-5, atol=1e-5)
    out = ed.edit(inv, TARGET, progress=False)  # the plain editor's inversion: accepted (same fingerprint)
    assert out.unet_forward == edit.unet_forward == 3 * STEPS  # source 1 + target 2 passes a step (NPI)
    torch.testing.assert_close(out.latents, edit.latents, rtol=1e-5, atol=1e-5)
    for a, b in zip(out.images, edit.images):
        assert np.abs(np.asarray(a).astype(int) - np.asarray(b).astype(int)).max() <= 1
    torch.testing.assert_close(out.attention.cross_maps(), edit.attention.cross_maps())
    assert np.abs(np.asarray(out.images[1]).astype(int) - np.asarray(out.images[0]).astype(int)).mean() > 0.05


def test_null_text_backpropagates_through_sequential_offload(tiny_folder, editor, image):
    ed = redraft.load(str(tiny_folder), device="cpu", offload="sequential")
    ours, theirs = (e.invert(image, PROMPT, method="null-text", steps=3, inner_steps=2, progress=False)
                    for e in (ed, editor))
    assert ours.cost.unet_backward == theirs.cost.unet_backward > 0
    torch.testing.assert_close(ours.null_embeddings, theirs.null_embeddings, rtol=1e-4, atol=1e-5)


def test_unknown_offload_mode_is_refused(tiny_folder):
    with pytest.raises(InputError, match="unknown offload mode 'cpu'.*'model'.*'sequential'"):
        redraft.load(str(tiny_folder), device="cpu", offload="cpu")


def test_cli_offload_flag(tiny_folder, editor, image, tmp_path):
    from redraft.apps.cli import main

    image.save(tmp_path / "in.png")
    r = CliRunner().invoke(main, ["--model", str(tiny_folder), "--device", "cpu", "--offload", "sequential", "invert",
                                  str(tmp_path / "in.png"), "-p", PROMPT, "--steps", "3", "-o", str(tmp_path / "i.safetensors")])
    assert r.exit_code == 0, r.output
    plain = editor.invert(image, PROMPT, steps=3, progress=False)
    torch.testing.assert_close(Inversion.load(tmp_path / "i.safetensors").pivots, plain.pivots, rtol=1e-5, atol=1e-5)
    r = CliRunner().invoke(main, ["--model", str(tiny_folder), "--offload", "disk", "invert", "x.png", "-o", "y"])
    assert r.exit_code == 2 and "'disk' is not one of 'model', 'sequential'" in r.output
