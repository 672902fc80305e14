"""Region edits (issue 30): the user's mask in (`io.mask`), the latent blend and the pixel keep (`p2p.region`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from redraft import InputError
from redraft.io.mask import crop_like, load_mask
from redraft.p2p.region import LatentBlend, band, keep_pixels, latent_mask

PROMPT = "a photo of a cat"
STEPS = 6


def box(h=16, w=16, top=3, bottom=11, left=4, right=12) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[top:bottom, left:right] = True
    return m


# ---------------------------------------------------------------- the mask in

def test_masks_from_pil_numpy_and_paths_agree(tmp_path):
    m = box()
    path = tmp_path / "mask.png"
    Image.fromarray((m * 255).astype(np.uint8)).save(path)
    rgba = Image.fromarray(np.dstack([np.full((16, 16, 3), 255, np.uint8), (m * 255).astype(np.uint8)]), "RGBA")
    for given in (m, m.astype(np.uint8), m.astype(np.float32), (m * 255).astype(np.uint8), str(path),
                  Image.open(path), rgba, torch.from_numpy(m)):
        assert np.array_equal(load_mask(given, (16, 16)), m.astype(np.float32)), type(given)
    soft = np.where(m, 0.5, 0.0).astype(np.float32)  # soft masks stay soft
    assert np.allclose(load_mask(soft, (16, 16)), soft)


def test_a_mask_of_the_same_aspect_is_resized_and_another_aspect_is_an_error():
    big = np.kron(box(), np.ones((4, 4), bool))  # 64 x 64, the same box
    resized = load_mask(big, (16, 16))
    assert np.abs(resized - box()).max() < 0.3 and np.array_equal(resized > 0.5, box())
    with pytest.raises(InputError, match=r"mask is 20x16 but the image is 16x16"):
        load_mask(np.ones((16, 20), bool) & (np.arange(20) < 10), (16, 16))
    # a mask of the original image's size is cropped as the image is (centre crop of 40 x 20 -> 20 x 20)
    wide = np.zeros((20, 40), bool)
    wide[:, 10:20] = True  # the left half of the centre square
    cropped = load_mask(crop_like(wide, (40, 20), 16, multiple=2), (16, 16))
    assert cropped[:, :7].min() > 0.9 and cropped[:, 9:].max() < 0.1


@pytest.mark.parametrize("bad, message", [
    (np.zeros((16, 16), bool), "black everywhere"),
    (np.ones((16, 16), bool), "white everywhere"),
    (np.full((16, 16), 2.0), r"values in \[0, 1\]"),
    (np.zeros((16, 16, 2)), "HxW"),
    ("no-such-mask.png", "no such file"),
    (3, "cannot read a mask from a int"),
])
def test_bad_masks_are_clear_errors(bad, message):
    with pytest.raises(InputError, match=message):
        load_mask(bad, (16, 16))


def test_a_file_that_is_not_an_image_is_an_error(tmp_path):
    path = tmp_path / "mask.png"
    path.write_text("not a picture")
    with pytest.raises(InputError, match="not an image"):
        load_mask(path, (16, 16))


# ---------------------------------------------------------------- the mechanism, as tensors

def test_latent_blend_sets_the_edits_outside_the_mask_to_the_source():
    mask = latent_mask(box().astype(np.float32), (8, 8))
    assert mask.shape == (1, 1, 8, 8) and 0 < mask[0, 0, 1, 2] < 1  # a cell on the edge: a share of its pixels
    pivots = torch.randn(4, 4, 8, 8)
    z = torch.randn(3, 4, 8, 8)
    out = LatentBlend.on_pivots(mask, pivots)(1, z)
    assert torch.equal(out[0], z[0])  # the source branch is left alone
    outside, inside = mask[0, 0] == 0, mask[0, 0] == 1
    assert torch.equal(out[1:, :, outside], pivots[2][None].expand(2, -1, -1, -1)[:, :, outside])
    assert torch.allclose(out[1:, :, inside], z[1:, :, inside], atol=1e-6)
    assert LatentBlend.on_pivots(mask, pivots, stop=1)(1, z) is None  # ended by mask_stop
    branch = LatentBlend.on_source_branch(mask)(0, z)
    assert torch.equal(branch[2, :, outside], z[0, :, outside])


def test_band_is_one_on_the_mask_and_zero_beyond_grow_plus_feather():
    m = box(32, 32, 10, 20, 10, 20).astype(np.float32)
    w = band(m, 2, 3)
    assert (w[m > 0] == 1).all()
    ys, xs = np.nonzero(w)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (10 - 5, 19 + 5, 10 - 5, 19 + 5)
    assert 0 < w[10, 6] < w[10, 8] < 1  # feathered
    edit = Image.fromarray(np.full((32, 32, 3), 200, np.uint8))
    original = np.full((32, 32, 3), 10, np.uint8)
    out = np.asarray(keep_pixels(edit, original, w))
    assert np.array_equal(out[w == 0], original[w == 0]) and (out[m > 0] == 200).all()


# ---------------------------------------------------------------- through the Editor

def test_masked_edit_keeps_the_input_outside_and_costs_no_pass(editor, image):
    m = box()
    inv = editor.invert(image, PROMPT, method="ddim", steps=STEPS, progress=False)
    plain = editor.edit(inv, "a photo of a dog", progress=False)
    pixels = editor.edit(inv, "a photo of a dog", mask=m, progress=False)
    latents = editor.edit(inv, "a photo of a dog", mask=m, keep_outside="latents", progress=False)
    assert pixels.unet_forward == latents.unet_forward == plain.unet_forward == 2 * 2 * STEPS
    original = inv.image.astype(int)
    keep = pixels.region.keep
    assert (keep == 0).sum() > 100 and np.array_equal(np.asarray(pixels[1]).astype(int)[keep == 0], original[keep == 0])
    inside = latents.region.latent[0, 0] == 1
    assert not torch.equal(latents.latents[1][:, inside], inv.pivots[-1][:, inside])  # the edit did change inside
    outside = latents.region.latent[0, 0] == 0
    assert torch.allclose(latents.latents[1][:, outside], inv.pivots[-1][:, outside])  # ... and kept the rest
    assert not torch.allclose(plain.latents[1][:, outside], inv.pivots[-1][:, outside], atol=1e-3)
    assert np.array_equal(np.asarray(pixels[0]), np.asarray(plain[0]))  # the source branch is untouched


def test_the_mask_bounds_local_blend(editor, image):
    inv = editor.invert(image, PROMPT, method="null-text", inner_steps=1, steps=STEPS, progress=False)
    m = box(top=0, bottom=8, left=0, right=16)  # the upper half may change
    out = editor.edit(inv, "a photo of a dog", mask=m, blend=["cat", "dog"], blend_threshold=0.0, progress=False)
    lower = out.blend_mask[1, 0, 4:]
    assert not lower.any() and out.blend_mask[1, 0, :4].all()


def test_masked_generation_keeps_the_source_image_outside(editor):
    m = box()
    out = editor.generate([PROMPT, "a photo of a dog"], seed=2, steps=STEPS, mask=m, progress=False)
    keep = out.region.keep
    assert np.array_equal(np.asarray(out[1])[keep == 0], np.asarray(out[0])[keep == 0])
    assert not np.array_equal(np.asarray(out[1])[m], np.asarray(out[0])[m])


def test_bad_masks_fail_before_any_pass(editor, image):
    inv = editor.invert(image, PROMPT, method="ddim", steps=STEPS, progress=False)
    editor.unet.reset()
    for bad, message in ((np.zeros((16, 16)), "black everywhere"), (np.ones((8, 16), bool), "16x8 but the image is 16x16"),
                         (box(), "keep_outside")):
        with pytest.raises(InputError, match=message):
            editor.edit(inv, "a photo of a dog", mask=bad, keep_outside="latents" if message != "keep_outside" else "x",
                        progress=False)
    assert editor.unet.forward == 0
    with pytest.raises(InputError, match="mask_stop"):
        editor.edit(inv, "a photo of a dog", mask=box(), mask_stop=1.5, progress=False)


def test_cli_edit_with_a_mask_keeps_the_outside_and_a_bad_mask_writes_nothing(tiny_folder, image, tmp_path):
    from click.testing import CliRunner

    from redraft.apps.cli import main

    image.save(tmp_path / "in.png")
    m = box()
    Image.fromarray((m * 255).astype(np.uint8)).resize((64, 64), Image.Resampling.NEAREST).save(tmp_path / "mask.png")
    Image.fromarray(np.zeros((16, 32), np.uint8)).save(tmp_path / "wide.png")

    def run(*args):
        return CliRunner().invoke(main, ["--model", str(tiny_folder), "--device", "cpu", "edit", str(tmp_path / "in.png"),
                                         "-p", PROMPT, "-m", "ddim", "--steps", "4", "-t", "a photo of a dog", *args])

    bad = run("--mask", str(tmp_path / "wide.png"), "-o", str(tmp_path / "bad.png"))
    assert bad.exit_code != 0 and "32x16 but the image is 16x16" in bad.output
    assert not (tmp_path / "bad.png").exists() and not (tmp_path / "bad.grid.png").exists()
    ok = run("--mask", str(tmp_path / "mask.png"), "-o", str(tmp_path / "dog.png"))
    assert ok.exit_code == 0, ok.output
    out = np.asarray(Image.open(tmp_path / "dog.png").convert("RGB"))
    far = ~box(top=2, bottom=12, left=3, right=13)  # the 64 px mask resized to 16 px is soft on its edge pixels
    assert np.array_equal(out[far], np.asarray(image)[far]) and not np.array_equal(out, np.asarray(image))


def test_batch_edit_mask_column_and_use_pie_masks_say_mask_given(tiny_folder, image, tmp_path):
    import json

    from click.testing import CliRunner

    from redraft.apps.cli import main

    image.save(tmp_path / "in.png")
    Image.fromarray((box() * 255).astype(np.uint8)).save(tmp_path / "mask.png")
    items = [{"id": "a", "image": "in.png", "prompt": PROMPT, "target": "a photo of a dog", "edit_mask": "mask.png"},
             {"id": "b", "image": "in.png", "prompt": PROMPT, "target": "a photo of a dog", "mask": "mask.png"}]
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(i) for i in items))
    r = CliRunner().invoke(main, ["--model", str(tiny_folder), "--device", "cpu", "batch", str(tmp_path / "items.jsonl"),
                                  "-o", str(tmp_path / "run"), "--steps", "3", "-m", "ddim", "--use-pie-masks"])
    assert r.exit_code == 0, r.output
    assert "mask given: 2 of 2" in r.output
    rows = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert [row["mask_given"] for row in rows] == [True, True]
    for k in ("a", "b"):
        edit = np.asarray(Image.open(tmp_path / "run" / "items" / k / "edit-1.png").convert("RGB"))
        assert np.array_equal(edit[~box()], np.asarray(image)[~box()])
