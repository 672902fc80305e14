"""Prompts the model cannot read (redraft.core.prompts): words it does not know are named, with the words
it knows; one token-limit check for the encoder and for the token maps."""

from __future__ import annotations

from pathlib import Path

import pytest

from redraft.core.prompts import check_prompt, known_words, unknown_words
from redraft.errors import InputError
from redraft.io.loading import builtin_path

FIXTURE = Path(__file__).parent / "fixtures" / "tokenizer"


@pytest.fixture(scope="module")
def shapes():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(builtin_path() / "tokenizer")


@pytest.fixture(scope="module")
def fixture_tok():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(FIXTURE)


def test_the_shapes_model_knows_its_word_list(shapes):
    from redraft.shapes.train import words

    assert known_words(shapes) == sorted(set(words()) - {"a"})  # one-letter words are one token anyway


def test_unknown_words_of_a_word_level_tokenizer(shapes):
    assert unknown_words(shapes, "a fluffy cat on a sofa") == ["fluffy", "cat", "sofa"]
    assert unknown_words(shapes, "A Red circle, on a blue background.") == []
    assert unknown_words(shapes, "a cat and a cat") == ["cat", "and"]


def test_a_long_prompt_of_unknown_words_names_them_and_the_known_ones(shapes):
    with pytest.raises(InputError) as e:
        check_prompt(shapes, "a fluffy cat on a sofa", what="source prompt")
    message = str(e.value)
    assert "the source prompt has 16 tokens, but the text encoder reads at most 14" in message
    assert "does not know the words fluffy, cat, sofa" in message
    assert "Use the words it knows: background, black, blue, circle, diamond, gray, green, large, on, " \
           "pink, purple, red, small, square, triangle, white, yellow" in message
    assert "shorten it by" not in message


def test_a_long_prompt_of_known_words_is_told_to_shorten(shapes):
    prompt = " ".join(["a red circle"] * 6)
    with pytest.raises(InputError, match=r"has 18 tokens, .* at most 14 .*; shorten it by 4 tokens\.$"):
        check_prompt(shapes, prompt)
    assert check_prompt(shapes, "a red circle on a blue background") == shapes("a red circle on a blue background").input_ids


def test_a_subword_tokenizer_has_no_word_list(tmp_path):
    from transformers import CLIPTokenizer

    from redraft.shapes.tokenizer import BOS, EOS, byte_symbols

    chars = list(byte_symbols().values())
    vocab = {t: i for i, t in enumerate([*chars, *(c + "</w>" for c in chars), "ca", "cat</w>", BOS, EOS])}
    tok = CLIPTokenizer(vocab=vocab, merges=[("c", "a"), ("ca", "t</w>")], bos_token=BOS, eos_token=EOS,
                        unk_token=EOS, pad_token=EOS)
    assert known_words(tok) is None
    assert unknown_words(tok, "a cat on a mat") == []


def test_a_word_mapped_to_the_unknown_token_is_refused_even_in_a_short_prompt():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "cat": 2, "dog": 3}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", model_max_length=8)
    assert known_words(tok) == ["a", "cat", "dog"]
    assert unknown_words(tok, "a zebra") == ["zebra"]
    with pytest.raises(InputError, match=r"the prompt has words the model does not know: zebra; "
                                         r"Use the words it knows: a, cat, dog"):
        check_prompt(tok, "a zebra")


def test_the_token_maps_use_the_same_limit_check(fixture_tok):
    from redraft.p2p.tokens import refinement_mapper, replacement_mapper

    long = "a photo of a cat " * 4
    with pytest.raises(InputError, match=r"the prompt 'a photo of a cat .*' has 20 tokens, but the text encoder "
                                         r"reads at most 8 \(10 with its start and end tokens\); shorten it by 12"):
        replacement_mapper(fixture_tok, long, long, max_len=10)
    with pytest.raises(InputError, match="shorten it by 12 tokens"):
        refinement_mapper(fixture_tok, "a cat", long, max_len=10)
    assert known_words(fixture_tok) is not None and "lion" not in known_words(fixture_tok)
