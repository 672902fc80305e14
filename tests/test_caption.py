"""The BLIP captioner (text route 2): save/load, captions, the enhanced loss, the vocabulary head,
training with its curriculum, and bad inputs. All on tiny random BLIPs over shapes scenes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from redraft.describe.caption import (CaptionObjective, Captioner, CaptionRecipe, ImageTransform, TinyBlip,
                                      batch_plan, build_word_tokenizer, train_captioner)
from redraft.describe.curriculum import curriculum_stages
from redraft.describe.data import ShapesDataset
from redraft.describe.vocabulary import Vocabulary
from redraft.errors import InputError
from redraft.shapes import world

WORDS = sorted({*world.SHAPES, *world.COLORS, *world.SIZES, *world.BACKGROUNDS, "a", "on", "background"})
TINY = TinyBlip(image_size=32, patch_size=8, vision_hidden=32, vision_layers=1, text_hidden=32, text_layers=1,
                heads=2, max_length=16)


def scenes(n: int, seed: int = 3):
    chosen = world.scenes(seed, n, "train")
    return [world.render(s) for s in chosen], [s.prompt() for s in chosen]


def tiny_captioner(seed: int = 0, head: bool = True) -> Captioner:
    captioner = Captioner.from_scratch(WORDS, TINY, seed=seed)
    if head:
        captioner.add_vocabulary_head(Vocabulary.build([s.prompt() for s in world.scenes(0, 50)], rule="frequency"))
    return captioner


def test_tokenizer_has_blips_special_tokens_and_spells_unknown_words():
    tokenizer = build_word_tokenizer(WORDS)
    ids = tokenizer(["a red circle on a white background"]).input_ids[0]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens == ["[CLS]", "a", "red", "circle", "on", "a", "white", "background", "[SEP]"]
    assert tokenizer.pad_token_id == 0 and tokenizer.bos_token == "[DEC]"
    assert tokenizer.tokenize("orange") == ["o", "##r", "##a", "##n", "##g", "##e"]  # not in the word list
    with pytest.raises(InputError, match="letter words"):
        build_word_tokenizer(["red", "8k"])


def test_image_transform_normalises_and_resizes():
    transform = ImageTransform.from_config({"size": {"height": 16, "width": 16}, "image_mean": [0.5, 0.5, 0.5],
                                            "image_std": [0.25, 0.5, 1.0]})
    flat = Image.new("RGB", (40, 30), (255, 0, 102))
    x = transform([flat])
    assert x.shape == (1, 3, 16, 16)
    expected = torch.tensor([(1 - 0.5) / 0.25, (0 - 0.5) / 0.5, (0.4 - 0.5) / 1.0])
    assert torch.allclose(x[0].mean(dim=(1, 2)), expected, atol=1e-3)
    defaults = ImageTransform.from_config({})  # BLIP's own defaults when the config has none
    assert defaults.size == 384 and defaults.mean[0] == pytest.approx(0.4815, abs=1e-4)


def test_save_load_round_trip_and_deterministic_captions(tmp_path):
    from transformers import BlipForConditionalGeneration

    captioner = tiny_captioner()
    images, _ = scenes(4)
    first = captioner.caption(images)
    assert captioner.caption(images) == first  # greedy decoding: the same text every time
    assert len(first) == 4 and all(isinstance(c, str) for c in first)
    folder = captioner.save(tmp_path / "captioner")
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    loaded = Captioner.load(folder)
    assert loaded.caption(images) == first
    for (name, a), (_, b) in zip(captioner.model.state_dict().items(), loaded.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert torch.equal(loaded.head.weight, captioner.head.weight) and loaded.vocabulary.words == captioner.vocabulary.words
    assert loaded.transform == captioner.transform
    # The folder stands alone for transformers too.
    plain = BlipForConditionalGeneration.from_pretrained(folder, use_safetensors=True)
    assert torch.equal(plain.text_decoder.cls.predictions.decoder.weight,
                       captioner.model.text_decoder.cls.predictions.decoder.weight)
    with pytest.raises(InputError, match="exists"):
        captioner.save(folder)  # never replaces a folder


def test_batch_uses_dec_token_and_masks_padding():
    captioner = tiny_captioner()
    images, _ = scenes(2)
    batch = captioner.batch(images, ["a red circle", "a large red circle on a white background"])
    dec = captioner.model.config.text_config.bos_token_id
    assert captioner.tokenizer.convert_ids_to_tokens(dec) == "[DEC]"
    assert (batch["input_ids"][:, 0] == dec).all()
    assert (batch["labels"][0] == -100).sum() == 5 and (batch["labels"][1] != -100).all()  # 5 vs 10 tokens
    assert batch["multi_hot"].shape == (2, len(captioner.vocabulary)) and batch["multi_hot"][0].sum() == 2


def test_enhanced_loss_is_lm_loss_plus_weighted_bce_by_hand():
    captioner = tiny_captioner()
    images, prompts = scenes(3)
    batch = captioner.batch(images, prompts)
    weight = 0.37
    total, lm = CaptionObjective(captioner.model, captioner.head, weight)(**batch)
    vanilla, _ = CaptionObjective(captioner.model)(**batch)

    # By hand: next-token cross-entropy over the real tokens, and the mean binary cross-entropy.
    logits = captioner.model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"],
                             attention_mask=batch["attention_mask"]).logits
    log_probs = logits[:, :-1].log_softmax(-1)
    targets = batch["labels"][:, 1:]
    real = targets != -100
    picked = log_probs.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    lm_by_hand = -(picked * real).sum() / real.sum()
    z = captioner.head(captioner.model.vision_model(pixel_values=batch["pixel_values"]).pooler_output)
    y = batch["multi_hot"]
    bce_by_hand = -(y * torch.log(torch.sigmoid(z)) + (1 - y) * torch.log(1 - torch.sigmoid(z))).mean()

    assert lm.item() == pytest.approx(lm_by_hand.item(), rel=1e-5)
    assert vanilla.item() == pytest.approx(lm_by_hand.item(), rel=1e-5)
    assert total.item() == pytest.approx(lm_by_hand.item() + weight * bce_by_hand.item(), rel=1e-5)
    assert total.item() - vanilla.item() > 0.05  # the BCE term is really there (a random head: BCE ~ 0.7)


def test_vocabulary_head_shape_and_words():
    captioner = tiny_captioner()
    vocabulary = captioner.vocabulary
    assert len(vocabulary) == 16  # 4 shapes, 6 colours, 2 sizes, 3 backgrounds, "background"
    assert captioner.head.in_features == TINY.vision_hidden and captioner.head.out_features == 16
    images, _ = scenes(3)
    pooled = captioner.model.vision_model(pixel_values=captioner.pixels(images)).pooler_output
    assert captioner.head(pooled).shape == (3, 16)
    words = captioner.predict_words(images, threshold=0.0)  # every word passes a threshold of 0
    assert [sorted(w) for w in words] == [sorted(vocabulary.words)] * 3
    with pytest.raises(InputError, match="no vocabulary head"):
        tiny_captioner(head=False).predict_words(images)


class FakeEmbedder:
    """Stands in for MiniLM: a bag of words over the shapes words, unit norm (cosine = word overlap)."""

    def encode(self, texts):
        rows = torch.tensor([[float(w in t.split()) for w in WORDS] for t in texts]) + 1e-3
        return F.normalize(rows, dim=-1)


def test_training_reduces_the_loss_and_resumes(tmp_path):
    data = ShapesDataset(seed=5, n=8)
    recipe = CaptionRecipe(variant="vanilla", steps=40, batch_size=8, lr=1e-2, warmup_steps=5, score_points=2,
                           arch=TINY)
    result = train_captioner(tmp_path / "vanilla", data, recipe, embedder=FakeEmbedder(), words=WORDS,
                             progress=False)
    losses = [loss for _, loss in result.losses]
    assert losses[-1] < 0.5 * losses[0], losses  # the running loss at least halves in 40 steps
    assert np.asarray(result.history).shape == (2, 8)  # two scoring points x eight pairs, cosines in [0, 1]
    assert all(0.0 <= c <= 1.0 + 1e-3 for row in result.history for c in row)  # float16 embeddings

    # Resume: a finished checkpoint restores the weights exactly (the loop has nothing left to do).
    saved = Captioner.load(result.folder).model.state_dict()
    (tmp_path / "vanilla" / "log.json").unlink()
    import shutil

    shutil.rmtree(result.folder)
    again = train_captioner(tmp_path / "vanilla", data, recipe, embedder=FakeEmbedder(), words=WORDS, progress=False)
    for name, tensor in Captioner.load(again.folder).model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    assert again.history == result.history

    # The enhanced run takes its curriculum from that run and trains the head too.
    enhanced = train_captioner(tmp_path / "enhanced", data, CaptionRecipe(**{**recipe.__dict__, "variant": "enhanced"}),
                               words=WORDS, warmup=tmp_path / "vanilla", progress=False)
    assert Captioner.load(enhanced.folder).head is not None
    assert json.loads((tmp_path / "enhanced" / "recipe.json").read_text())["variant"] == "enhanced"


def test_curriculum_plan_keeps_easy_to_hard_stages():
    scores = np.linspace(1.0, 0.0, 12)  # example 0 is the easiest
    stages = curriculum_stages(scores, 3, shuffle_within=True, seed=0, schedule="reciprocal")  # 4, 6, 12
    recipe = CaptionRecipe(steps=11, batch_size=2)
    plan = batch_plan(12, recipe, stages)  # steps in proportion to the stage sizes 4 : 6 : 12 -> 2, 3, 6
    assert len(plan) == 11 and all(len(b) == 2 for b in plan)
    assert set(np.concatenate(plan[:2])) == set(range(4))  # stage 1: the easiest third
    assert set(np.concatenate(plan[2:5])) == set(range(6))  # stage 2: the easiest half
    last = np.concatenate(plan[5:])
    assert sorted(last) == list(range(12)) and list(last) == list(stages[2])  # all, in easy-to-hard order
    shuffled = batch_plan(12, CaptionRecipe(steps=6, batch_size=2))
    assert sorted(np.concatenate(shuffled)) == list(range(12))  # one shuffled epoch: every example once


def test_bad_inputs_raise_input_error(tmp_path):
    captioner = tiny_captioner(head=False)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(InputError, match="not an image"):
        captioner.caption(str(text))
    with pytest.raises(InputError, match="cannot read an image"):
        captioner.caption([42])
    with pytest.raises(InputError, match="no images"):
        captioner.caption([])
    empty = tmp_path / "no-weights"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    (empty / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(InputError, match="no .safetensors weights"):
        Captioner.load(empty)
    with pytest.raises(InputError, match="no config.json"):
        Captioner.load(tmp_path)
    with pytest.raises(InputError, match="no such folder"):
        Captioner.load(tmp_path / "missing")
    with pytest.raises(InputError, match="variant"):
        CaptionRecipe(variant="fancy")
    with pytest.raises(InputError, match="not a finished captioner run"):
        train_captioner(tmp_path / "run", ShapesDataset(seed=0, n=4), CaptionRecipe(variant="enhanced"),
                        warmup=empty, progress=False)


def test_cli_trains_a_captioner_and_rejects_unknown_variants(tmp_path):
    from click.testing import CliRunner

    from redraft.apps.cli import main

    runner = CliRunner()
    out = tmp_path / "run"
    result = runner.invoke(main, ["train", "captioner", "--variant", "vanilla", "--scenes", "8", "--steps", "4",
                                  "--batch-size", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "captioner written to" in result.output
    captioner = Captioner.load(out / "model")
    assert captioner.head is None and len(captioner.caption(scenes(2)[0])) == 2
    bad = runner.invoke(main, ["bench", "caption", "--variants", "vanilla,fancy", "--out", str(tmp_path / "b")])
    assert bad.exit_code == 2 and "unknown variant" in bad.output
