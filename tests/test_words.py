"""Words, token positions and the Prompt-to-Prompt token maps (redraft.words), with the fixture tokenizer.

Pieces with that tokenizer: "lion" -> 3 ('l', 'i', 'on</w>'), "zebra" -> 5, "zebra," -> 6; "a", "cat",
"on", "the", "sofa", "photo", "of", "big", "red", "car", "dog", "and" -> 1 each.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from redraft.errors import InputError
from redraft.p2p.tokens import (edit_kind, find_word, refinement_mapper, replacement_mapper, reweight_vector,
                           step_windows, word_tokens)


@pytest.fixture(scope="module")
def tok():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(Path(__file__).parent / "fixtures" / "tokenizer")


# --- word_tokens / find_word ---------------------------------------------------------------------------

def test_word_tokens_multi_piece_words_and_punctuation(tok):
    assert word_tokens(tok, "a photo of a lion") == [[1], [2], [3], [4], [5, 6, 7]]
    # "zebra," is z e b r a</w> ,</w>: the comma belongs to the word; "sofa." likewise.
    assert word_tokens(tok, "A zebra, on the  sofa.") == [[1], [2, 3, 4, 5, 6, 7], [8], [9], [10, 11]]
    assert word_tokens(tok, "") == []


def test_find_word_ignores_case_and_punctuation(tok):
    assert find_word(tok, "A Cat, on the sofa", "cat") == [2, 3]  # cat</w> ,</w>: the comma is part of the word
    assert find_word(tok, "a cat on the sofa", "CAT!") == [2]
    assert find_word(tok, "a photo of a lion", "lion") == [5, 6, 7]
    assert find_word(tok, "a cat and a dog", "a") == [1, 4]  # every occurrence


def test_find_word_several_words(tok):
    assert find_word(tok, "a big red car and a red dog", "red car") == [3, 4]
    assert find_word(tok, "a zebra, on the sofa", "Zebra on") == [2, 3, 4, 5, 6, 7, 8]


def test_find_word_absent(tok):
    with pytest.raises(InputError, match=r"'dog' is not a word of the prompt 'a cat on the sofa'; "
                                         r"words are: a, cat, on, the, sofa"):
        find_word(tok, "a cat on the sofa", "dog")
    with pytest.raises(InputError, match="is not a word"):
        find_word(tok, "a big red car", "red big")  # the words must follow one another
    with pytest.raises(InputError):
        find_word(tok, "a cat", ",")


# --- replacement_mapper -------------------------------------------------------------------------------

def test_replacement_identity(tok):
    m = replacement_mapper(tok, "a photo of a lion", "a photo of a lion")
    assert torch.equal(m, torch.eye(77))


def test_replacement_one_to_three_pieces_keeps_later_tokens_aligned(tok):
    # source: a1 cat2 on3 the4 sofa5 end6 | target: a1 l2 i3 on4 on5 the6 sofa7 end8
    m = replacement_mapper(tok, "a cat on the sofa", "a lion on the sofa")
    assert m[0, 0] == 1 and m[1, 1] == 1
    assert torch.equal(m[:, 2:5], torch.zeros(77, 3).index_fill_(0, torch.tensor([2]), 1.0))
    # Words after the swap: the reference maps position j to j after a swap (m[5, 5] = 1: 'sofa' onto 'on').
    assert m[3, 5] == 1 and m[4, 6] == 1 and m[5, 7] == 1
    assert m[5, 5] == 0 and m[6, 6] == 0
    for i in range(77 - 8):  # end token to end token, padding to padding
        assert m[6 + i, 8 + i] == 1
    assert torch.allclose(m.sum(0), torch.ones(77))


def test_replacement_three_to_one_piece(tok):
    # source: a1 l2 i3 on4 on5 the6 sofa7 end8 | target: a1 cat2 on3 the4 sofa5 end6
    m = replacement_mapper(tok, "a lion on the sofa", "a cat on the sofa")
    assert torch.allclose(m[2:5, 2], torch.full((3,), 1 / 3)) and m[:, 2].sum() == pytest.approx(1.0)
    assert m[5, 3] == 1 and m[6, 4] == 1 and m[7, 5] == 1 and m[8, 6] == 1 and m[9, 7] == 1
    assert m[3, 3] == 0 and m[5, 5] == 0
    assert m[76, 74] == 1 and m[76, 75] == 1 and m[76, 76] == 1  # target padding past the source's: last position
    assert torch.allclose(m.sum(0), torch.ones(77))


def test_replacement_five_to_three_pieces(tok):
    # source: a1 zebra2-6 on7 the8 sofa9 end10 | target: a1 lion2-4 on5 the6 sofa7 end8
    m = replacement_mapper(tok, "A zebra on the sofa", "a lion on the Sofa")
    assert torch.allclose(m[2:7, 2:5], torch.full((5, 3), 0.2))
    assert m[2:7].sum() == pytest.approx(3.0) and m[:, 2:5].sum() == pytest.approx(3.0)  # nothing else
    assert m[7, 5] == 1 and m[8, 6] == 1 and m[9, 7] == 1 and m[10, 8] == 1 and m[11, 9] == 1
    assert torch.allclose(m.sum(0), torch.ones(77))


def test_replacement_mapper_applied_to_attention(tok):
    torch.manual_seed(0)
    attn = torch.rand(2, 16, 77).softmax(-1)  # [heads, pixels, tokens] of the source
    m = replacement_mapper(tok, "a cat on the sofa", "a lion on the sofa")
    edited = attn @ m  # maps[..., t] = sum_s maps[..., s] * m[s, t]
    sofa_src, sofa_tgt = find_word(tok, "a cat on the sofa", "sofa"), find_word(tok, "a lion on the sofa", "sofa")
    assert torch.equal(edited[..., sofa_tgt], attn[..., sofa_src])
    for piece in find_word(tok, "a lion on the sofa", "lion"):  # each piece of "lion" takes the map of "cat"
        assert torch.equal(edited[..., piece], attn[..., 2])
    assert torch.equal(edited[..., 8], attn[..., 6])  # end token


def test_replacement_needs_same_word_count(tok):
    with pytest.raises(InputError, match=r"has 5 and .* has 6.*refine"):
        replacement_mapper(tok, "a cat on the sofa", "a big cat on the sofa")


# --- refinement_mapper --------------------------------------------------------------------------------

def test_refinement_added_words(tok):
    # source: bos0 a1 photo2 of3 a4 cat5 end6 | target: bos0 a1 photo2 of3 a4 big5 red6 cat7 end8
    mapper, alphas = refinement_mapper(tok, "a photo of a cat", "a photo of a big red cat")
    assert mapper.dtype == torch.long and mapper.shape == alphas.shape == (77,)
    assert mapper[:5].tolist() == [0, 1, 2, 3, 4] and mapper[7] == 5 and mapper[8] == 6
    assert alphas[5] == 0 and alphas[6] == 0
    assert alphas[:5].tolist() == [1.0] * 5 and alphas[7:].tolist() == [1.0] * 70
    assert mapper[9:].tolist() == list(range(9, 77))  # padding after the end token maps to itself (the reference)


def test_refinement_removed_words(tok):
    mapper, alphas = refinement_mapper(tok, "a photo of a big red cat", "a photo of a cat")
    assert mapper[:7].tolist() == [0, 1, 2, 3, 4, 7, 8]
    assert torch.equal(alphas, torch.ones(77))
    assert mapper[7:].tolist() == list(range(7, 77))  # padding maps to itself, as the reference's get_mapper


def test_refinement_multi_piece_insertion(tok):
    # target: bos0 a1 photo2 of3 a4 l5 i6 on7 end8; "lion" is new, the end token still maps to the source's
    mapper, alphas = refinement_mapper(tok, "a photo of a cat", "a photo of a lion")
    assert alphas[5:8].tolist() == [0.0, 0.0, 0.0]
    assert mapper[8] == 6 and alphas[8] == 1


# --- reweight_vector ----------------------------------------------------------------------------------

def test_reweight_vector(tok):
    # a1 zebra2-6 on7 the8 sofa9
    v = reweight_vector(tok, "a Zebra on the sofa.", {"zebra": 2.0, "Sofa": -1.5})
    expected = torch.ones(77)
    expected[2:7] = 2.0
    expected[9:11] = -1.5  # "sofa." is sofa</w> .</w>
    assert torch.equal(v, expected)
    assert torch.equal(reweight_vector(tok, "a cat", {}), torch.ones(77))


@pytest.mark.parametrize("factor", ["abc", math.nan, math.inf, None, True])
def test_reweight_bad_factor(tok, factor):
    with pytest.raises(InputError, match="factor of 'cat'"):
        reweight_vector(tok, "a cat on the sofa", {"cat": factor})


def test_reweight_missing_word(tok):
    with pytest.raises(InputError, match="'dog' is not a word"):
        reweight_vector(tok, "a cat on the sofa", {"dog": 2.0})


# --- step_windows -------------------------------------------------------------------------------------

def test_step_windows_fraction_and_pair():
    on = step_windows(0.8, 10)
    assert on.dtype == torch.bool and on.shape == (10, 77)
    assert on[:8].all() and not on[8:].any()
    assert step_windows(0.7, 10)[:, 0].tolist() == [True] * 7 + [False] * 3  # 0.7 * 10 is 7.000000000000001
    assert step_windows(0.29, 100)[:, 0].sum() == 29  # 0.29 * 100 is 28.999999999999996
    assert step_windows(0.45, 50)[:, 0].sum() == 22  # the reference's int(0.45 * 50), not 23
    assert step_windows((0.25, 0.55), 10)[:, 0].tolist() == [False] * 2 + [True] * 3 + [False] * 5  # int(2.5)..int(5.5)
    assert step_windows((0.2, 0.5), 10)[:, 5].tolist() == [False] * 2 + [True] * 3 + [False] * 5
    assert not step_windows(0.0, 10).any() and step_windows(1, 10).all()


def test_step_windows_per_word(tok):
    on = step_windows({"lion": 0.3, "default_": (0.0, 0.8)}, 10, tok, "a lion on the sofa")
    lion = [2, 3, 4]
    for t in range(77):
        expected = 3 if t in lion else 8
        assert on[:, t].tolist() == [True] * expected + [False] * (10 - expected), t
    no_default = step_windows({"sofa": (0.5, 1.0)}, 4, tok, "a lion on the sofa")
    assert no_default[:, 7].tolist() == [False, False, True, True] and no_default[:, 0].all()


@pytest.mark.parametrize("spec", [1.5, -0.1, (0.6, 0.2), "abc", math.nan, (0.1, 0.2, 0.3), None, {"cat": 2.0},
                                  {"default_": "x"}])
def test_step_windows_invalid(tok, spec):
    with pytest.raises(InputError, match="step window"):
        step_windows(spec, 10, tok, "a cat on the sofa")


def test_step_windows_invalid_word_or_steps(tok):
    with pytest.raises(InputError, match="'dog' is not a word"):
        step_windows({"dog": 0.5}, 10, tok, "a cat on the sofa")
    with pytest.raises(InputError, match="number of steps"):
        step_windows(0.8, 0)
    with pytest.raises(InputError, match="need the tokenizer and the prompt"):
        step_windows({"cat": 0.5}, 10)


# --- edit_kind ----------------------------------------------------------------------------------------

def test_edit_kind(tok):
    assert edit_kind(tok, "a cat on the sofa", "A  cat on the Sofa ") == "reweight"
    assert edit_kind(tok, "a cat on the sofa", "a lion on the sofa") == "replace"
    assert edit_kind(tok, "a cat on the sofa", "a big cat on the sofa") == "refine"
