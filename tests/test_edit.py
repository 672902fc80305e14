"""Prompt-to-Prompt editing on the tiny pipelines: identities, LocalBlend, source branch, maps, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from redraft import InputError
from redraft.p2p.attention import ControlProcessor
from redraft.p2p.blend import LocalBlend
from redraft.p2p.controls import Controls
from redraft.p2p.plan import skipped_steps

PROMPT = "a photo of a cat"
STEPS = 10


def pixels(image) -> np.ndarray:
    return np.asarray(image).astype(int)


def test_identities_change_nothing(any_editor):
    source = any_editor.generate(PROMPT, seed=1, steps=STEPS, progress=False)[0]
    same_word = any_editor.generate([PROMPT, PROMPT], seed=1, steps=STEPS, kind="replace",
                                    cross_replace_steps=1.0, self_replace_steps=1.0, progress=False)
    by_one = any_editor.generate([PROMPT, PROMPT], seed=1, steps=STEPS, reweight={"cat": 1.0}, progress=False)
    for image in (*same_word, *by_one):
        assert np.abs(pixels(image) - pixels(source)).max() <= 1
    # ...while a real re-weighting does change the image (a random tiny UNet listens little to its text:
    # a factor of 20 changes its images by about 1.5 levels on average).
    strong = any_editor.generate([PROMPT, PROMPT], seed=1, steps=STEPS, reweight={"cat": 20.0},
                                 cross_replace_steps=1.0, progress=False)[1]
    assert np.abs(pixels(strong) - pixels(source)).mean() > 0.75


def test_local_blend_keeps_latents_outside_the_mask(editor):
    schedule = editor.schedule(STEPS)
    prompts = [PROMPT, "a photo of a dog", "a photo of a lion"]
    x_T = editor.initial_noise(5).expand(3, -1, -1, -1)
    cond, uncond = editor.embed(prompts), editor.embed([""] * 3)
    result = editor._p2p(prompts, x_T, cond, uncond, 7.5, schedule,
                         Controls(blend=["cat", "dog", "lion"], blend_threshold=0.9), None, False, "test")
    z, mask = result.latents, result.blend_mask  # [3, 1, h, w]; random maps are flat: a high threshold makes a region
    assert mask.shape[0] == 3 and 0 < mask[1].float().mean() < 1  # a real region, for every target
    outside = ~mask.expand_as(z)
    assert torch.equal(z[1:][outside[1:]], z[:1].expand_as(z)[1:][outside[1:]])
    assert not torch.equal(z[1], z[0])


def test_local_blend_exclude_takes_a_region_out_of_the_mask(editor):
    schedule = editor.schedule(STEPS)
    prompts = [PROMPT, "a photo of a dog"]
    x_T = editor.initial_noise(5).expand(2, -1, -1, -1)
    cond, uncond = editor.embed(prompts), editor.embed([""] * 2)

    def blended(blend=("cat", "dog"), **controls):
        result = editor._p2p(prompts, x_T, cond, uncond, 7.5, schedule, Controls(blend=blend, **controls),
                             None, False, "test")
        return result.latents, result.blend_mask

    _, whole = blended(blend_threshold=0.9)  # random maps are flat: a high threshold makes regions
    z, mask = blended(blend_threshold=0.9, blend_exclude=["photo"])
    assert not (mask & ~whole).any()  # excluding only removes cells...
    assert 0 < mask[1].float().sum() < whole[1].float().sum()  # ...some of them, not all
    outside = ~mask.expand_as(z)
    assert torch.equal(z[1][outside[1]], z[0][outside[1]])  # the excluded cells are the source's
    z, alone = blended(blend=(), blend_threshold=0.9, blend_exclude=["photo"])  # everything but "photo"'s region
    assert 0 < alone[1].float().mean() < 1 and torch.equal(mask, whole & alone)
    outside = ~alone.expand_as(z)
    assert torch.equal(z[1][outside[1]], z[0][outside[1]])
    with pytest.raises(InputError, match="horse"):
        blended(blend_exclude=["horse"])


def test_local_blend_stops_at_blend_stop(editor):
    """Blending from `blend_start` until `blend_stop`: after the stop the edit runs free, so outside the
    mask it no longer equals the source at the end; the blend is called but does nothing then."""
    schedule = editor.schedule(STEPS)
    prompts = [PROMPT, "a photo of a dog"]
    x_T = editor.initial_noise(5).expand(2, -1, -1, -1)
    cond, uncond = editor.embed(prompts), editor.embed([""] * 2)
    controls = Controls(blend=["cat", "dog"], blend_threshold=0.9, blend_stop=0.5)
    result = editor._p2p(prompts, x_T, cond, uncond, 7.5, schedule, controls, None, False, "test")
    z = result.latents
    blend = LocalBlend.from_controls(editor.pipeline.tokenizer, prompts, controls, result.attention, STEPS)
    assert (blend.start, blend.stop) == (2, 5)
    assert blend(4, z) is not None and blend(5, z) is None and blend(STEPS - 1, z) is None
    outside = ~result.blend_mask.expand_as(z)
    assert 0 < outside[1].float().mean() and not torch.equal(z[1][outside[1]], z[0][outside[1]])
    with pytest.raises(InputError, match="blend_stop"):
        editor.edit(editor.invert(editor.decode(z[:1])[0], PROMPT, method="ddim", steps=STEPS, progress=False),
                    "a photo of a dog", blend=["cat", "dog"], blend_start=0.5, blend_stop=0.2, progress=False)


@pytest.mark.parametrize("method", ["ddim", "null-text", "negative-prompt"])
def test_source_branch_of_edit_equals_reconstruction(editor, image, method):
    inv = editor.invert(image, PROMPT, method=method, steps=STEPS, progress=False)
    reconstruction = editor.reconstruct(inv, progress=False)
    for targets in (["a photo of a dog"], ["a photo of a dog", "a photo of a big cat", "a photo of a lion"]):
        out = editor.edit(inv, targets, progress=False)
        assert len(out) == 1 + len(targets)
        assert np.abs(pixels(out[0]) - pixels(reconstruction)).max() <= 1


def test_negative_prompt_edit_passes(editor, image):
    inv = editor.invert(image, PROMPT, method="negative-prompt", steps=STEPS, progress=False)
    editor.unet.reset()
    editor.edit(inv, ["a photo of a dog", "a photo of a big cat"], progress=False)
    assert editor.unet.forward == STEPS * (1 + 2 * 2)  # source: one pass per step; each target: two


def test_direct_inversion_keeps_the_source_on_its_pivot(editor, image):
    inv = editor.invert(image, PROMPT, method="ddim", steps=STEPS, progress=False)
    out = editor.edit(inv, "a photo of a dog", direct=True, progress=False)
    on_pivot = editor.decode(inv.pivots[-1][None])[0]
    assert np.array_equal(pixels(out[0]), pixels(on_pivot))
    assert not np.array_equal(pixels(out[1]), pixels(on_pivot))


def test_direct_inversion_guides_npi_and_nti_edits_against_the_empty_prompt(editor, image):
    """With Direct Inversion every branch is put back on the pivot, so NPI's source-prompt nulls only
    pull the edit towards the source: a Direct edit of an NPI or a null-text inversion is the Direct edit
    of the same DDIM pivot (guided against ""), and differs from the plain NPI edit. (So with a recipe
    that turns Direct Inversion on, NPI and null-text inversions of a scene give the same edits.)"""
    ddim = editor.invert(image, PROMPT, method="ddim", steps=STEPS, progress=False)
    npi = editor.invert(image, PROMPT, method="negative-prompt", steps=STEPS, progress=False)
    assert torch.equal(ddim.pivots, npi.pivots)
    on_ddim = editor.edit(ddim, "a photo of a dog", direct=True, progress=False)
    on_npi = editor.edit(npi, "a photo of a dog", direct=True, progress=False)
    plain = editor.edit(npi, "a photo of a dog", direct=False, progress=False)
    assert np.array_equal(pixels(on_npi[1]), pixels(on_ddim[1]))
    nti = editor.invert(image, PROMPT, method="null-text", steps=STEPS, progress=False)
    assert np.array_equal(pixels(editor.edit(nti, "a photo of a dog", direct=True, progress=False)[1]),
                          pixels(on_ddim[1]))
    assert np.abs(pixels(plain[1]) - pixels(on_npi[1])).max() > 1


def test_processors_are_restored(editor):
    before = {k: type(v) for k, v in editor.pipeline.unet.attn_processors.items()}
    editor.generate([PROMPT, "a photo of a dog"], seed=0, steps=2, progress=False)
    after = {k: type(v) for k, v in editor.pipeline.unet.attn_processors.items()}
    assert before == after and ControlProcessor not in after.values()


def test_attention_maps_shapes_normalisation_and_word_merge(editor, image):
    inv = editor.invert(image, "a photo of a lion", method="negative-prompt", steps=STEPS, progress=False)
    maps = editor.attention_maps(inv, progress=False)
    assert maps.words == ["a", "photo", "of", "a", "lion"]
    assert maps.maps.shape == (5, 8, 8)
    from redraft.p2p.attention import AttentionControl, controlled

    control = AttentionControl(tuple(inv.x_T.shape[-2:]))
    with controlled(editor.unet, control):
        editor.replay([inv], progress=False)
    assert control.resolutions() == [4, 8]
    tokens = control.cross_maps(8)[0]  # [8, 8, 77]
    torch.testing.assert_close(tokens.sum(-1), torch.ones(8, 8))  # softmax over tokens, averaged
    lion = tokens[..., 5:8].mean(-1).numpy()  # 'l', 'i', 'on</w>' merged
    np.testing.assert_allclose(editor.word_maps(control, inv.prompt, maps.image, 8).maps[4], lion, rtol=1e-6)
    picture = maps.draw(cell=64)
    assert picture.size[0] == 6 * 64


def test_edit_errors(editor, image):
    inv = editor.invert(image, PROMPT, method="negative-prompt", steps=STEPS, progress=False)
    with pytest.raises(InputError, match="words"):
        editor.edit(inv, "a photo of a big cat", kind="replace", progress=False)
    with pytest.raises(InputError, match="not a word of the prompt"):
        editor.edit(inv, PROMPT, reweight={"zebra": 2.0}, progress=False)
    with pytest.raises(InputError, match="cat"):
        editor.edit(inv, PROMPT, reweight={"cat": "lots"}, progress=False)
    with pytest.raises(InputError, match="none of the prompts"):
        editor.edit(inv, "a photo of a dog", blend=["zebra"], progress=False)
    with pytest.raises(InputError, match="edit kind"):
        editor.edit(inv, "a photo of a dog", kind="morph", progress=False)




def test_self_max_resolution_sets_the_layers_with_self_attention_injected(editor):
    """The reference notebooks' rule: self-attention in layers of at most half the latent's side for an
    inverted image (null_text_w_ptp: 32 of SD's 64), a quarter when generating (prompt-to-prompt_stable: 16 of
    64); `self_max_resolution` moves it."""
    from redraft.p2p.plan import plan

    prompts = [PROMPT, "a photo of a dog"]
    tok = editor.pipeline.tokenizer
    assert plan(tok, prompts, Controls(), STEPS, (16, 16)).self_max_pixels == 64
    assert plan(tok, prompts, Controls(), STEPS, (64, 64)).self_max_pixels == 32 ** 2
    assert plan(tok, prompts, Controls(), STEPS, (64, 64), inverted=False).self_max_pixels == 16 ** 2
    assert plan(editor.pipeline.tokenizer, prompts, Controls(self_max_resolution=16), STEPS, (16, 16)).self_max_pixels == 256


def test_layout_guidance_step_lowers_its_loss_and_leaves_the_source(editor):
    """One guidance step moves the edit's latent downhill on L (own maps vs the source's mapped maps)."""
    from redraft.p2p.attention import AttentionControl, controlled
    from redraft.p2p.plan import plan
    from redraft.p2p.layout import layout_guidance

    prompts = [PROMPT, "a photo of a dog"]
    schedule = editor.schedule(STEPS)
    cond = editor.embed(prompts)
    z = torch.randn(2, *editor.initial_noise(0).shape[1:], generator=torch.Generator().manual_seed(3))
    control = AttentionControl((z.shape[-2], z.shape[-1]),
                               plan=plan(editor.pipeline.tokenizer, prompts, Controls(), STEPS, tuple(z.shape[-2:])))
    with controlled(editor.unet, control):
        guide = layout_guidance(editor.unet, control, editor.pipeline.tokenizer, prompts, cond, 0.05, 0.5, STEPS)
        t = schedule.timesteps[1]
        moved = guide(1, t, z)
        before = float(guide.loss)
        guide(1, t, moved)
        after = float(guide.loss)
        assert torch.equal(guide(STEPS - 1, t, z), z)  # outside its window (the first half) it does nothing
    assert before > 0 and after < 0.99 * before
    assert torch.equal(moved[0], z[0]) and not torch.equal(moved[1], z[1])
    assert abs(float((moved[1] - z[1]).pow(2).mean().sqrt()) - 0.05) < 1e-4  # a step of `scale`, in rms
    assert control.maps == {}  # guidance passes store no maps


def test_layout_guidance_changes_the_edit_only(editor):
    prompts = [PROMPT, "a photo of a dog"]
    plain = editor.generate(prompts, seed=2, steps=STEPS, progress=False)
    zero = editor.generate(prompts, seed=2, steps=STEPS, layout_guidance=0.0, progress=False)
    guided = editor.generate(prompts, seed=2, steps=STEPS, layout_guidance=0.5, progress=False)
    assert np.array_equal(pixels(zero[1]), pixels(plain[1]))
    assert np.array_equal(pixels(guided[0]), pixels(plain[0]))
    assert np.abs(pixels(guided[1]) - pixels(plain[1])).mean() > 0.5
    with pytest.raises(InputError, match="layout_guidance"):
        editor.generate(prompts, seed=2, steps=STEPS, layout_guidance=-1.0, progress=False)


def test_skip_steps_starts_every_branch_on_the_pivot(editor, image):
    """`skip_steps`: the edit starts from the inversion's pivot at that step, so it costs only the
    steps left and, skipping all but the last step, stays next to the source, where an edit from x_T
    moves far from it."""
    inv = editor.invert(image, PROMPT, method="ddim", steps=STEPS, progress=False)
    target = dict(target="a photo of a cat", reweight={"cat": 20.0}, cross_replace_steps=1.0, progress=False)
    editor.unet.reset()
    full = editor.edit(inv, **target)
    passes = editor.unet.forward
    editor.unet.reset()
    half = editor.edit(inv, **target, skip_steps=0.5)
    assert editor.unet.forward == passes // 2
    last = editor.edit(inv, **target, skip_steps=0.9)
    moved = {name: np.abs(pixels(out[1]) - pixels(out[0])).mean() for name, out in
             (("full", full), ("half", half), ("last", last))}
    assert moved["last"] < 0.3 * moved["full"], moved
    assert [skipped_steps(f, 10) for f in (0.0, 0.3, 0.7, 0.99)] == [0, 3, 7, 9]  # at least one step left
    for bad in (1.0, -0.1):
        with pytest.raises(InputError, match="skip_steps"):
            editor.edit(inv, **target, skip_steps=bad)
    with pytest.raises(InputError, match="skip_steps"):
        editor.generate([PROMPT, "a photo of a dog"], steps=STEPS, skip_steps=0.5, progress=False)


def test_feature_injection_copies_the_source_rows_of_the_batch():
    """`FeatureInjection` follows `guided_output`'s layout: [unconditional rows..., conditional rows...],
    the source first in each; a source without an unconditional pass lends its conditional row."""
    from redraft.p2p.attention import AttentionControl
    from redraft.p2p.features import FeatureInjection

    control = AttentionControl((4, 4), store=False)
    hook = FeatureInjection(control, torch.tensor([True, False]))
    rows = torch.arange(6.0)[:, None].expand(6, 2)
    control.begin_call(step=0, cond_rows=slice(3, 6), batch=6)  # 3 latents, each with an unconditional pass
    assert hook(None, (), rows)[:, 0].tolist() == [0, 0, 0, 3, 3, 3]
    control.begin_call(step=0, cond_rows=slice(2, 5), batch=5)  # negative-prompt inversion: the source has none
    assert hook(None, (), rows[:5])[:, 0].tolist() == [2, 2, 2, 2, 2]
    control.begin_call(step=1, cond_rows=slice(3, 6), batch=6)  # outside the window
    assert hook(None, (), rows) is None


def test_feature_injection_keeps_the_edit_on_the_source(editor, image):
    """Plug-and-Play feature injection (`feature_replace_steps`): the edit stays closer to the source, the
    source branch does not change, no hook is left on the UNet, and a block it does not have is named."""
    for method in ("ddim", "negative-prompt"):
        inv = editor.invert(image, PROMPT, method=method, steps=STEPS, progress=False)
        target = dict(target="a photo of a dog", cross_replace_steps=0.2, self_replace_steps=0.0, progress=False)
        plain = editor.edit(inv, **target)
        injected = editor.edit(inv, **target, feature_replace_steps=1.0)
        assert np.array_equal(pixels(injected[0]), pixels(plain[0]))
        moved = {name: np.abs(pixels(out[1]) - pixels(out[0])).mean() for name, out in
                 (("plain", plain), ("injected", injected))}
        assert moved["injected"] < 0.7 * moved["plain"], (method, moved)
    assert not any(m._forward_hooks for m in editor.pipeline.unet.modules())
    with pytest.raises(InputError, match="up_blocks.1.resnets.0"):
        editor.edit(inv, **target, feature_replace_steps=0.5, feature_layers=("up_blocks.9.resnets.0",))


def test_renoise_mixes_fresh_noise_into_the_edits_at_its_step_only():
    """`Renoise`: DDIM eq. 12 with sigma_t = s sqrt(1 - alpha_{t-1}) at one step: the edits' noise becomes
    sqrt(1 - s^2) eps + s xi (unit variance kept), the source's stays eps, other steps are untouched."""
    from redraft.p2p.renoise import Renoise

    eps = torch.randn(3, 4, 64, 64, generator=torch.Generator().manual_seed(1))
    hook = Renoise(0.6, 50, strength=0.8, seed=3)
    assert hook.at == 30 and hook(29, eps) is eps and hook(31, eps) is eps
    mixed = hook(30, eps)
    assert torch.equal(mixed[0], eps[0])
    fresh = (mixed[1:] - 0.6 * eps[1:]) / 0.8
    assert 0.97 < float(fresh.std()) < 1.03 and 0.97 < float(mixed[1:].std()) < 1.03
    assert abs(float((fresh * eps[1:]).mean())) < 0.02  # independent of the predicted noise
    assert torch.equal(Renoise(0.6, 50, strength=0.8, seed=3)(30, eps), mixed)  # reproducible by seed
    assert torch.equal(Renoise(0.6, 50, strength=0.0)(30, eps), eps)
    for bad, match in (({"renoise_step": 1.0}, "renoise_step"), ({"renoise_step": 0.5, "strength": 1.5}, "renoise_strength"),
                       ({"renoise_step": 0.2, "start": 20}, "skip")):
        with pytest.raises(InputError, match=match):
            Renoise(bad.pop("renoise_step"), 50, **bad)


def test_renoise_changes_the_edit_only(editor, image):
    """`renoise_step`: the source branch (which reconstructs without Direct Inversion) is unchanged, the
    edit differs from the deterministic one, and the same seed gives the same edit."""
    inv = editor.invert(image, PROMPT, method="null-text", steps=STEPS, progress=False)
    target = dict(target="a photo of a dog", progress=False)
    plain = editor.edit(inv, **target)
    renoised = editor.edit(inv, **target, renoise_step=0.5)
    again = editor.edit(inv, **target, renoise_step=0.5)
    other = editor.edit(inv, **target, renoise_step=0.5, renoise_seed=1)
    assert np.array_equal(pixels(renoised[0]), pixels(plain[0]))
    assert np.array_equal(pixels(renoised[1]), pixels(again[1]))
    assert np.abs(pixels(renoised[1]) - pixels(plain[1])).mean() > 0.5
    assert np.abs(pixels(other[1]) - pixels(renoised[1])).mean() > 0.5
    with pytest.raises(InputError, match="renoise_strength"):
        editor.edit(inv, **target, renoise_step=0.5, renoise_strength=2.0)
