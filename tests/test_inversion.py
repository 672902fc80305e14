"""Inversion and reconstruction on tiny random SD pipelines (epsilon and v-prediction)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import redraft
import redraft.core.sampling
from redraft import InputError, Inversion

PROMPT = "a photo of a cat"
STEPS = 20
# Bounds per tiny model. A random v-prediction UNet predicts v ~ 0, which makes each DDIM step a
# contraction that inversion cannot undo exactly: its round trip has a floor (~1.6% of the variance)
# that a trained model does not have, and guidance moves it less.
ROUNDTRIP = {"epsilon": 0.005, "v_prediction": 0.025}
DRIFT = {"epsilon": 50.0, "v_prediction": 2.0}
NULL_TEXT_GAIN = {"epsilon": 5.0, "v_prediction": 3.0}


def kind(editor) -> str:
    return editor.pipeline.scheduler.config.prediction_type


def latent_error(editor, inversion) -> float:
    """Mean squared error between the regenerated clean latent and the image's own latent."""
    z = editor.replay([inversion], progress=False)[0]
    return (z - inversion.pivots[-1]).pow(2).mean().item()


def test_ddim_roundtrip_at_guidance_one_is_close(any_editor, image):
    inv = any_editor.invert(image, PROMPT, method="ddim", guidance_scale=1.0, steps=STEPS, progress=False)
    variance = inv.pivots[-1].var().item()
    assert latent_error(any_editor, inv) < ROUNDTRIP[kind(any_editor)] * variance


def test_guidance_drifts_and_null_text_brings_it_back(any_editor, image):
    exact = any_editor.invert(image, PROMPT, method="ddim", guidance_scale=1.0, steps=STEPS, progress=False)
    drift = any_editor.invert(image, PROMPT, method="ddim", guidance_scale=7.5, steps=STEPS, progress=False)
    nti = any_editor.invert(image, PROMPT, method="null-text", guidance_scale=7.5, steps=STEPS, progress=False)
    e_exact, e_drift, e_nti = (latent_error(any_editor, x) for x in (exact, drift, nti))
    assert e_drift > DRIFT[kind(any_editor)] * e_exact
    assert e_nti < e_drift / NULL_TEXT_GAIN[kind(any_editor)]


def test_null_text_costs_no_redundant_pass(editor, image):
    """The paper's rule, per step: one conditional pass, and one forward per loss evaluation, of which
    all but the last are back-propagated. So forward = backward + 3N (N for the pivot, N conditional, N
    final)."""
    inv = editor.invert(image, PROMPT, method="null-text", null_init="null", steps=STEPS, progress=False)
    assert inv.cost.unet_forward == inv.cost.unet_backward + 3 * STEPS
    assert inv.cost.unet_backward <= 10 * STEPS
    assert inv.null_embeddings.shape[0] == STEPS
    assert inv.null_embeddings.dtype == torch.float32


def test_null_text_options(editor, image):
    shared = editor.invert(image, PROMPT, method="null-text", global_null=True, steps=STEPS, progress=False)
    assert shared.null_embeddings.shape[0] == 1 and shared.options["global_null"]
    npi_init = editor.invert(image, PROMPT, method="null-text", null_init="source", steps=STEPS, progress=False)
    assert npi_init.options["null_init"] == "source"
    # Starting from the source embedding: the first step starts at the negative-prompt solution.
    cond = npi_init.prompt_embedding
    assert (npi_init.null_embeddings[0] - cond).abs().max() < (npi_init.null_embeddings[0] - editor.embed([""])[0]).abs().max()


def test_negative_prompt_follows_its_pivot_with_one_pass_per_step(any_editor, image):
    npi = any_editor.invert(image, PROMPT, method="negative-prompt", steps=STEPS, progress=False)
    assert npi.cost.unet_forward == STEPS and npi.cost.unet_backward == 0
    any_editor.unet.reset()
    z_npi = any_editor.replay([npi], progress=False)
    assert any_editor.unet.forward == STEPS  # guided = conditional: no unconditional pass
    # At guidance 7.5 it equals the conditional (guidance 1) reconstruction exactly...
    ddim1 = any_editor.invert(image, PROMPT, method="ddim", guidance_scale=1.0, steps=STEPS, progress=False)
    assert torch.equal(z_npi, any_editor.replay([ddim1], progress=False))
    # ...and ends where its pivot began.
    assert (z_npi[0] - npi.pivots[-1]).pow(2).mean() < ROUNDTRIP[kind(any_editor)] * npi.pivots[-1].var()


def test_ddim_inversion_matches_diffusers_inverse_scheduler(any_editor, image):
    """Same tiny pipeline, same timesteps: diffusers' DDIMInverseScheduler as the reference."""
    from diffusers import DDIMInverseScheduler

    inv = any_editor.invert(image, PROMPT, method="ddim", steps=STEPS, progress=False)
    pipe = any_editor.pipeline
    reference = DDIMInverseScheduler.from_config(pipe.scheduler.config)
    reference.set_timesteps(STEPS)
    z = inv.pivots[-1][None]
    cond = inv.prompt_embedding[None]
    with torch.no_grad():
        for k, t in enumerate(reference.timesteps):
            out = pipe.unet(z, t, encoder_hidden_states=cond).sample
            z = reference.step(out, t, z).prev_sample
            torch.testing.assert_close(z[0], inv.pivots[STEPS - 1 - k], rtol=1e-5, atol=1e-5)


def test_generation_matches_diffusers_pipeline(any_editor):
    """The one sampling loop, run as generation, equals StableDiffusionPipeline.__call__."""
    pipe = any_editor.pipeline
    x_T = any_editor.initial_noise(seed=3)
    ours = redraft.core.sampling.denoise(any_editor.unet, any_editor.schedule(STEPS), x_T,
                                    any_editor.embed([PROMPT]), any_editor.embed([""]), 7.5, progress=False)
    theirs = pipe(PROMPT, latents=x_T.clone(), num_inference_steps=STEPS, guidance_scale=7.5,
                  output_type="latent").images
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["ddim", "null-text", "negative-prompt"])
def test_save_load_reconstructs_bit_for_bit(editor, image, tmp_path, method):
    inv = editor.invert(image, PROMPT, method=method, steps=STEPS, progress=False)
    path = inv.save(tmp_path / "x.safetensors")
    back = Inversion.load(path)
    assert back.prompt == PROMPT and back.method == method and back.steps == STEPS
    assert back.model_fingerprint == editor.fingerprint and back.cost == inv.cost
    a = np.asarray(editor.reconstruct(inv, progress=False))
    b = np.asarray(editor.reconstruct(back, progress=False))
    assert np.array_equal(a, b)
    assert not list(tmp_path.glob("*.tmp"))


def test_inversion_refuses_another_model_or_step_count(editor, v_editor, image):
    inv = editor.invert(image, PROMPT, method="negative-prompt", steps=STEPS, progress=False)
    with pytest.raises(InputError, match="another model"):
        v_editor.reconstruct(inv)
    with pytest.raises(InputError, match="20 steps"):
        inv.check_compatible(editor.fingerprint, editor.model_id, steps=30)


def test_batch_gives_independent_inversions(editor, image):
    other = image.transpose(0)  # mirrored
    for method in ("negative-prompt", "null-text"):
        batch = editor.invert([image, other], [PROMPT, "a red car"], method=method, steps=STEPS, progress=False)
        alone = editor.invert(other, "a red car", method=method, steps=STEPS, progress=False)
        assert batch[1].prompt == "a red car" and batch[1].pivots.shape == alone.pivots.shape
        torch.testing.assert_close(batch[1].pivots, alone.pivots, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(batch[1].null_embeddings, alone.null_embeddings, rtol=1e-3, atol=1e-3)


def test_bad_prompts_give_clear_errors(editor, image):
    with pytest.raises(InputError, match="empty"):
        editor.invert(image, "  ", steps=STEPS)
    with pytest.raises(InputError, match=r"has \d+ tokens.*at most 75"):
        editor.invert(image, "a cat " * 60, steps=STEPS)
    with pytest.raises(InputError, match="unknown inversion method"):
        editor.invert(image, PROMPT, method="magic")
    with pytest.raises(InputError, match="one prompt per image"):
        editor.invert([image, image], [PROMPT], steps=STEPS)


def test_bad_model_folders_give_clear_errors(tmp_path, tiny_folder):
    import shutil

    with pytest.raises(InputError, match="model_index.json"):
        redraft.load(str(tmp_path), device="cpu")
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_folder, pickled)
    for f in (pickled / "unet").glob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    with pytest.raises(InputError, match="safetensors"):
        redraft.load(str(pickled), device="cpu")
    single = tmp_path / "model.ckpt"
    single.write_bytes(b"\x80\x04")
    with pytest.raises(InputError, match="single-file"):
        redraft.load(str(single), device="cpu")


def test_a_model_folder_sets_its_default_guidance(tmp_path, tiny_folder, image):
    import json
    import shutil

    assert redraft.load(str(tiny_folder), device="cpu").guidance_scale == 7.5  # SD's, when the folder says nothing
    folder = tmp_path / "model"
    shutil.copytree(tiny_folder, folder)
    (folder / "redraft.json").write_text(json.dumps({"guidance_scale": 3.0}))
    editor = redraft.load(str(folder), device="cpu")
    assert editor.guidance_scale == 3.0
    assert editor.invert(image, PROMPT, method="ddim", steps=2, progress=False).guidance_scale == 3.0
    assert editor.invert(image, PROMPT, method="ddim", steps=2, guidance_scale=5.0, progress=False).guidance_scale == 5.0
    three = editor.generate(PROMPT, seed=0, steps=3, progress=False)[0]
    assert np.array_equal(np.asarray(three), np.asarray(editor.generate(PROMPT, seed=0, steps=3, guidance_scale=3.0,
                                                                         progress=False)[0]))
    assert not np.array_equal(np.asarray(three), np.asarray(editor.generate(PROMPT, seed=0, steps=3, guidance_scale=7.5,
                                                                             progress=False)[0]))
    for bad in ('{"guidance_scale": "high"}', "[3]", '{"guidance_scale": -1}'):
        (folder / "redraft.json").write_text(bad)
        with pytest.raises(InputError, match="redraft.json"):
            redraft.load(str(folder), device="cpu")


@pytest.mark.parametrize("call, message", [
    (lambda e, im: e.invert(im, "a photo of a cat", guidance_scale=float("nan")), "guidance_scale is nan"),
    (lambda e, im: e.invert(im, "a photo of a cat", guidance_scale=float("inf")), "finite"),
    (lambda e, im: e.invert(im, "a photo of a cat", guidance_scale=-2.0), "at least 0"),
    (lambda e, im: e.invert(im, "a photo of a cat", steps=True), "steps is True"),
    (lambda e, im: e.invert(im, "a photo of a cat", steps=2.5), "whole number"),
    (lambda e, im: e.generate("a photo of a cat", guidance_scale=float("nan")), "guidance_scale is nan"),
    (lambda e, im: e.generate("a photo of a cat", seed=-1), "seed"),
    (lambda e, im: e.generate(["a photo of a cat", "a photo of a dog"], flavour=2), "the controls are: editing, kind"),
])
def test_bad_numbers_and_names_are_refused_before_any_work(editor, image, call, message):
    editor.unet.reset()
    with pytest.raises(InputError, match=message):
        call(editor, image)
    assert editor.unet.forward == 0
