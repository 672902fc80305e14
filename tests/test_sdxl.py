"""SDXL as a model family: tiny random StableDiffusionXLPipelines (conftest.build_tiny_sdxl), saved with
save_pretrained and loaded through `redraft.load(folder)`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import redraft
from redraft import InputError, Inversion
from redraft.core.conditioning import XLLayout
from redraft.core.sampling import denoise

PROMPT = "a photo of a cat"
STEPS = 10


@pytest.fixture
def xl_image():
    """A 32 x 32 picture with structure (the tiny SDXL's native size)."""
    y, x = np.mgrid[0:32, 0:32]
    a = np.stack([x * 7, y * 7, np.full_like(x, 90)], -1).astype(np.uint8)
    a[8:20, 10:22] = (230, 40, 40)
    return Image.fromarray(a)


def latent_error(editor, inversion) -> float:
    z = editor.replay([inversion], progress=False)[0]
    return (z - inversion.pivots[-1]).pow(2).mean().item()


def test_loads_as_sdxl_and_encodes_as_diffusers(xl_editor):
    """Both encoders' penultimate states concatenated, the pooled projection, zeros for the empty prompt
    (force_zeros_for_empty_prompt), the native size's time ids: diffusers' encode_prompt as reference."""
    pipe = xl_editor.pipeline
    assert type(pipe).__name__ == "StableDiffusionXLPipeline" and xl_editor.family == "sdxl"
    assert xl_editor.resolution == 32
    layout = xl_editor.unet.layout
    assert layout == XLLayout(tokens=77, width=64, pooled=32)
    packed = xl_editor.embed([PROMPT, ""])
    assert packed.shape == (2, 78, 64)
    tokens, added = layout.unpack(packed)
    emb, neg, pooled, neg_pooled = pipe.encode_prompt(PROMPT, device="cpu", do_classifier_free_guidance=True)
    torch.testing.assert_close(tokens[0], emb[0])
    torch.testing.assert_close(added["text_embeds"][0], pooled[0])
    assert not tokens[1].any() and not added["text_embeds"][1].any() and not neg.any() and not neg_pooled.any()
    assert added["time_ids"].tolist() == [[32, 32, 0, 0, 32, 32]] * 2


def test_generation_matches_diffusers_sdxl_pipeline(xl_editor):
    """The one sampling loop with the packed conditioning equals StableDiffusionXLPipeline.__call__."""
    x_T = xl_editor.initial_noise(seed=3)
    ours = denoise(xl_editor.unet, xl_editor.schedule(STEPS), x_T, xl_editor.embed([PROMPT]), xl_editor.embed([""]),
                   7.5, progress=False)
    theirs = xl_editor.pipeline(PROMPT, latents=x_T.clone(), num_inference_steps=STEPS, guidance_scale=7.5,
                                output_type="latent").images
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_every_inversion_with_exact_passes_and_round_trips(xl_editor, xl_image):
    ddim1 = xl_editor.invert(xl_image, PROMPT, method="ddim", guidance_scale=1.0, steps=STEPS, progress=False)
    ddim = xl_editor.invert(xl_image, PROMPT, method="ddim", steps=STEPS, progress=False)
    npi = xl_editor.invert(xl_image, PROMPT, method="negative-prompt", steps=STEPS, progress=False)
    nti = xl_editor.invert(xl_image, PROMPT, method="null-text", null_init="null", steps=STEPS, inner_steps=5,
                           progress=False)  # the paper's Algorithm 1: its pass structure, from the empty prompt
    assert ddim.cost.unet_forward == npi.cost.unet_forward == STEPS  # the pivot: one pass per step
    assert nti.cost.unet_forward == nti.cost.unet_backward + 3 * STEPS and nti.cost.unet_backward <= 5 * STEPS
    variance = ddim.pivots[-1].var().item()
    e_exact, e_drift, e_npi, e_nti = (latent_error(xl_editor, x) for x in (ddim1, ddim, npi, nti))
    assert e_exact < 0.01 * variance
    assert e_drift > 20 * e_exact  # guidance 7.5 drifts from the pivot...
    # ...null-text brings it back (on this random model from the zero embedding slowly: 2.5x in 10 x 10
    # updates, 400x from the source prompt's, docs/sdxl.md); NPI is the guidance-1 replay exactly
    assert e_nti < e_drift / 1.5 and e_npi == e_exact
    xl_editor.unet.reset()
    xl_editor.reconstruct(npi, progress=False)
    assert xl_editor.unet.forward == STEPS  # negative-prompt reconstruction at the UNet floor
    # null-text optimised the token rows only: the pooled row and the time ids are the start's (zeros, sizes)
    assert not nti.null_embeddings[:, 77, :32].any()
    assert nti.null_embeddings[:, 77, 32:38].eq(torch.tensor([32.0, 32, 0, 0, 32, 32])).all()
    assert nti.null_embeddings[:, :77].abs().sum() > 0 and nti.options["null_pooled"] is False


def test_negative_prompt_inversion_encodes_only_its_prompt(xl_editor, xl_image):
    """NPI's null is its prompt: the empty prompt is not encoded (one pass of each of SDXL's text encoders
    per inversion, 0.7 B parameters in all); DDIM's replay needs "" too (two passes each)."""
    pipe, passes = xl_editor.pipeline, []
    hooks = [m.register_forward_hook(lambda m, a, o: passes.append(a[0].shape[0]))
             for m in (pipe.text_encoder, pipe.text_encoder_2)]
    try:
        xl_editor.invert(xl_image, PROMPT, method="negative-prompt", steps=2, progress=False)
        npi, passes[:] = list(passes), []
        xl_editor.invert(xl_image, PROMPT, method="ddim", steps=2, progress=False)
    finally:
        for h in hooks:
            h.remove()
    assert npi == [1, 1] and passes == [1, 1, 1, 1]


def test_null_text_can_optimise_the_pooled_embedding_too(xl_editor, xl_image):
    nti = xl_editor.invert(xl_image, PROMPT, method="null-text", null_init="null", steps=2, inner_steps=2,
                           null_pooled=True, progress=False)
    assert nti.null_embeddings[:, 77, :32].abs().sum() > 0 and nti.options["null_pooled"] is True
    assert nti.null_embeddings[:, 77, 32:38].eq(torch.tensor([32.0, 32, 0, 0, 32, 32])).all()
    with pytest.raises(InputError, match="null_pooled"):
        xl_editor.invert(xl_image, PROMPT, method="negative-prompt", steps=4, null_pooled=True, progress=False)


CONTROLS = [
    ("a photo of a dog", {}),
    ("a photo of a big cat", {}),  # refinement
    (PROMPT, {"reweight": {"cat": 2.0}}),
    ("a photo of a dog", {"blend": ["cat", "dog"]}),
    ("a photo of a dog", {"cross_replace_steps": {"default_": 0.8, "dog": 0.4}, "self_replace_steps": (0.1, 0.5)}),
    ("a photo of a dog", {"self_max_resolution": 8}),
    ("a photo of a dog", {"layout_guidance": 0.05}),
    ("a photo of a dog", {"feature_replace_steps": 0.5}),
    ("a photo of a dog", {"renoise_step": 0.5}),
    ("a photo of a dog", {"skip_steps": 0.2}),
    ("a photo of a dog", {"direct": True}),
]


@pytest.mark.parametrize("target,controls", CONTROLS, ids=lambda v: str(v)[:30])
def test_every_control_edits_on_sdxl(xl_editor, xl_image, target, controls):
    inv = xl_editor.invert(xl_image, PROMPT, method="negative-prompt", steps=STEPS, progress=False)
    reconstruction = np.asarray(xl_editor.reconstruct(inv, progress=False)).astype(int)
    out = xl_editor.edit(inv, target, progress=False, **controls)
    start = 2 if controls.get("skip_steps") else 0
    guided = 1 if controls.get("layout_guidance") else 0  # layout guidance: one more pass per edit and step
    edit = 1 if target == PROMPT else 2  # the edit's prompt is the source's: its null is its prompt too (NPI)
    if controls.get("direct"):  # Direct Inversion guides NPI's branches against "": two passes each
        edit, source_passes = 2, 2
    else:
        source_passes = 1  # source: 1 pass a step (NPI)
    assert out.unet_forward == (STEPS - start) * (source_passes + edit + guided)
    source, edit = (np.asarray(im).astype(int) for im in out.images)
    if controls.get("direct"):
        assert np.array_equal(source, np.asarray(xl_editor.decode(inv.pivots[-1][None])[0]).astype(int))
    elif not controls.get("skip_steps"):
        assert np.abs(source - reconstruction).max() <= 1
    assert np.abs(edit - source).mean() > 0.05
    maps = xl_editor.word_maps(out, row=1)
    assert maps.words == target.split() and np.isfinite(maps.maps).all()


def test_attention_at_sdxl_resolutions_only(xl_editor):
    """No attention at the highest resolution (16 x 16 latent): maps at 8 and 4; the store is one
    [B, pixels, L] sum per resolution whatever the number of steps."""
    out = xl_editor.generate([PROMPT, "a photo of a dog"], steps=2, progress=False)
    assert out.attention.resolutions() == [4, 8]
    sizes = {p: tuple(m.shape) for p, m in out.attention.maps.items()}
    longer = xl_editor.generate([PROMPT, "a photo of a dog"], steps=6, progress=False)
    assert {p: tuple(m.shape) for p, m in longer.attention.maps.items()} == sizes == {16: (2, 16, 77), 64: (2, 64, 77)}
    assert out.unet_forward == 2 * 4  # two prompts, guided: 2 passes each a step


def test_inversion_files_record_the_family_and_refuse_another(xl_editor, editor, xl_image, image, tmp_path):
    xl = xl_editor.invert(xl_image, PROMPT, method="negative-prompt", steps=4, progress=False)
    back = Inversion.load(xl.save(tmp_path / "xl.safetensors"))
    assert back.model_family == "sdxl"
    assert np.array_equal(np.asarray(xl_editor.reconstruct(back, progress=False)),
                          np.asarray(xl_editor.reconstruct(xl, progress=False)))
    sd = Inversion.load(editor.invert(image, PROMPT, method="negative-prompt", steps=4, progress=False)
                        .save(tmp_path / "sd.safetensors"))
    assert sd.model_family == "sd"
    with pytest.raises(InputError, match="Stable Diffusion 1.x / 2.x model .* is SDXL"):
        xl_editor.edit(sd, "a photo of a dog", progress=False)
    with pytest.raises(InputError, match="SDXL model .* is Stable Diffusion 1.x / 2.x"):
        editor.reconstruct(back, progress=False)


def test_sizes_non_square_and_original_size_in_time_ids(xl_editor):
    wide = Image.fromarray(np.random.RandomState(0).randint(0, 255, (60, 90, 3), dtype=np.uint8))
    inv = xl_editor.invert(wide, PROMPT, method="negative-prompt", steps=4, keep_aspect=True, progress=False)
    h, w = inv.image.shape[:2]
    assert w > h and h % 2 == 0 and w % 2 == 0 and tuple(inv.pivots.shape[-2:]) == (h // 2, w // 2)
    ids = xl_editor.unet.layout.time_ids(inv.prompt_embedding)
    assert ids.tolist() == [60, 90, 0, 0, h, w]  # the original size, then the size it was inverted at
    out = xl_editor.edit(inv, "a photo of a dog", progress=False)
    assert out.images[1].size == (w, h)
    gen = xl_editor.generate([PROMPT], size=(16, 48), steps=2, progress=False)
    assert gen.images[0].size == (48, 16)
    with pytest.raises(InputError, match="multiple of 2"):
        xl_editor.generate([PROMPT], size=(15, 48), steps=2, progress=False)


def test_tokenizers_that_disagree_are_refused(tiny_xl_folder, tmp_path):
    """A word that is one token for one tokenizer and several for the other would put two words at one
    position of the concatenated embedding: refused, naming the word."""
    from redraft.shapes.tokenizer import build_tokenizer

    from conftest import build_tiny_sdxl

    other = build_tokenizer(["a", "photo", "of", "cat"], tmp_path / "tok")  # "dog": pieces here, one token there
    build_tiny_sdxl(tokenizer_2=other).save_pretrained(tmp_path / "xl", safe_serialization=True)
    ed = redraft.load(str(tmp_path / "xl"), device="cpu")
    ed.generate([PROMPT], steps=1, progress=False)  # words both split alike: fine
    with pytest.raises(InputError, match="'dog' is 1 tokens .* but 3 for its second"):
        ed.generate([PROMPT, "a photo of a dog"], steps=1, progress=False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_gives_finite_images(tiny_xl_folder, tiny_folder, xl_image, dtype):
    """fp16 / bf16 UNet and text encoders, the VAE kept in fp32 (force_upcast), null-text in fp32."""
    for folder in (tiny_xl_folder, tiny_folder):
        ed = redraft.load(str(folder), device="cpu", dtype=dtype)
        assert ed.pipeline.unet.dtype == dtype and ed.pipeline.vae.dtype == torch.float32
        image = xl_image.resize((ed.resolution,) * 2)
        inv = ed.invert(image, PROMPT, method="null-text", steps=3, inner_steps=2, progress=False)
        assert inv.null_embeddings.dtype == torch.float32 and torch.isfinite(inv.null_embeddings).all()
        out = ed.edit(inv, "a photo of a dog", progress=False)
        assert torch.isfinite(out.latents).all()
        assert all(np.asarray(im).std() > 0 for im in out.images)


# ---------------------------------------------------------------- front-ends on SDXL

def test_batch_run_on_sdxl_writes_its_outputs(tiny_xl_folder, xl_image, tmp_path):
    import json

    from click.testing import CliRunner

    from redraft.apps.cli import main

    xl_image.save(tmp_path / "cat.png")
    (tmp_path / "items.jsonl").write_text(json.dumps({"id": "one", "image": "cat.png", "prompt": PROMPT,
                                                      "target": "a photo of a dog", "steps": 3}) + "\n")
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["--model", str(tiny_xl_folder), "--device", "cpu", "batch", str(tmp_path / "items.jsonl"),
                                  "-o", str(out), "--lpips", str(tmp_path / "none.safetensors")])
    assert r.exit_code == 0, r.output
    row = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert row["status"] == "ok" and row["unet_forward"] == 3 and row["edit_unet_forward"] == 3 * 3
    folder = out / "items" / "one"
    inv = Inversion.load(folder / "inversion.safetensors")
    assert inv.model_family == "sdxl" and inv.steps == 3
    edit = np.asarray(Image.open(folder / "edit-1.png")).astype(int)
    recon = np.asarray(Image.open(folder / "reconstruction.png")).astype(int)
    assert edit.shape == (32, 32, 3) and np.abs(edit - recon).mean() > 0.05 and (folder / "grid.png").is_file()


def test_web_app_edits_on_sdxl_and_refuses_an_sd_inversion(xl_editor, editor, xl_image, image, tmp_path):
    import gradio as gr

    from redraft.apps.web import App

    app = App(xl_editor)
    xl_image.save(tmp_path / "in.png")
    gallery, maps, files, inversion_file, cache, status = app.edit({}, str(tmp_path / "in.png"), PROMPT,
                                                                    "negative-prompt", 3, "a photo of a dog")
    assert status.startswith("Inverted") and "3 UNet passes" in status
    shown = [np.asarray(Image.open(p)).astype(int) for p, _ in gallery]
    assert [a.shape for a in shown] == [(32, 32, 3)] * 3 and np.abs(shown[2] - shown[1]).mean() > 0.05
    assert Inversion.load(inversion_file).model_family == "sdxl"
    sd = editor.invert(image, PROMPT, method="negative-prompt", steps=2, progress=False).save(tmp_path / "sd.safetensors")
    with pytest.raises(gr.Error, match="Stable Diffusion 1.x / 2.x model .* is SDXL"):
        app.use_inversion(str(sd), {})
    _, prompt, method, *_ = app.use_inversion(inversion_file, {})  # its own: taken
    assert (prompt, method) == (PROMPT, "negative-prompt")


def test_web_cache_never_reuses_an_inversion_of_another_family(xl_editor, xl_image, tmp_path):
    """The session's cache is keyed by the model too: an SD model at SDXL's size prepares the same pixels
    (same digest), yet its inversion is not reused by the SDXL app, which inverts again."""
    from conftest import build_tiny_pipeline

    from redraft.apps.web import App
    from redraft.editor import Editor

    pipe = build_tiny_pipeline()
    pipe.unet.register_to_config(sample_size=16)  # 32 px, as the tiny SDXL
    for part in (pipe.unet, pipe.vae, pipe.text_encoder):
        part.requires_grad_(False)
    sd_app, xl_app = App(Editor(pipe, model_id="tiny-sd-32")), App(xl_editor)
    assert sd_app.editor.family == "sd" and sd_app.editor.resolution == xl_editor.resolution
    assert sd_app.key(xl_image, PROMPT, "negative-prompt", 2)[2:] == xl_app.key(xl_image, PROMPT, "negative-prompt", 2)[2:]
    xl_image.save(tmp_path / "in.png")
    args = (str(tmp_path / "in.png"), PROMPT, "negative-prompt", 2, "a photo of a dog")
    *_, sd_file, cache, status = sd_app.edit({}, *args)
    assert status.startswith("Inverted")
    *_, cache, status = sd_app.edit(cache, *args)
    assert status.startswith("Reused")  # the same model: the cache works
    gallery, _, _, xl_file, cache, status = xl_app.edit(cache, *args)
    assert status.startswith("Inverted") and len(cache) == 2
    assert Inversion.load(xl_file).model_family == "sdxl" and Inversion.load(sd_file).model_family == "sd"
    edit = np.asarray(Image.open(gallery[2][0])).astype(float)
    assert edit.shape == (32, 32, 3) and np.isfinite(edit).all() and edit.std() > 0
