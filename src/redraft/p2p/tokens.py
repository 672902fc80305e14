"""Words of a prompt, their token positions, and the token maps Prompt-to-Prompt edits with.

Prompt-to-Prompt (Hertz et al., ICLR 2023; /work/shared/reference.md, "Prompt-to-Prompt") edits an image
by editing the cross-attention maps of the prompt's tokens. Everything here speaks of positions in the
padded sequence the text encoder reads: position 0 is <|startoftext|>, then the pieces of the words, then
<|endoftext|> and padding (also <|endoftext|>) up to `max_len` (77 for CLIP). Words are separated by
spaces, and one word may be several pieces ("lion" -> 'l', 'i', 'on</w>'). Prompt 0 is the source,
the others are edits ("targets").
"""

from __future__ import annotations

import math
import re

import torch

from ..core.prompts import check_prompt
from ..errors import InputError

DEFAULT = "default_"  # the key of the window of all other tokens in a per-word step-window dict


def _check_text(text, what: str) -> None:
    """InputError unless `text` is a string."""
    if not isinstance(text, str):
        raise InputError(f"the {what} must be text, not {type(text).__name__}.")


def _pieces(tokenizer, prompt: str) -> list[list[int]]:
    """Token ids of each space-separated word, checked to add up to the tokenization of the whole prompt."""
    _check_text(prompt, "prompt")
    pieces = [tokenizer(word, add_special_tokens=False).input_ids for word in prompt.split()]
    whole = tokenizer(prompt, add_special_tokens=False).input_ids
    assert sum(pieces, []) == whole, f"word-by-word tokens {pieces} differ from the prompt's {whole}: {prompt!r}"
    return pieces


def _positions(pieces: list[list[int]]) -> list[list[int]]:
    """Positions in the padded sequence of each word's pieces: the first word starts at 1, after the start token."""
    positions, start = [], 1
    for ids in pieces:
        positions.append(list(range(start, start + len(ids))))
        start += len(ids)
    return positions


def _tokens(tokenizer, prompt: str, max_len: int) -> list[int]:
    """All token ids of the prompt, start and end tokens included; InputError if they do not fit in max_len."""
    _check_text(prompt, "prompt")
    return check_prompt(tokenizer, prompt, what=f"prompt '{prompt}'", limit=max_len)


def _normal(word: str) -> str:
    """A word as it is matched: lower case, punctuation at its ends removed ("Cat," -> "cat")."""
    return re.sub(r"^\W+|\W+$", "", word.lower())


def _real(value) -> float | None:
    """`value` as a float, or None if it is not a finite real number (a bool is not one)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def word_tokens(tokenizer, prompt: str) -> list[list[int]]:
    """Token positions of each space-separated word (P2P sec. 3: edits name words, attention is per token).

    Punctuation attached to a word is part of it: "cat," -> the positions of 'cat</w>' and ',</w>'.
    """
    return _positions(_pieces(tokenizer, prompt))


def find_word(tokenizer, prompt: str, word: str) -> list[int]:
    """Token positions of every occurrence of `word` in `prompt` (the reference's `get_word_inds`, P2P sec. 3.2).

    Whole words are matched, ignoring case and punctuation at their ends; `word` may be several words
    ("red car"), which must then follow one another in the prompt.
    """
    _check_text(word, "word")
    positions = word_tokens(tokenizer, prompt)
    have = [_normal(w) for w in prompt.split()]
    wanted = [_normal(w) for w in word.split()]
    if not wanted or "" in wanted:
        raise InputError(f"'{word}' has no letters or digits to look for; name a word of the prompt '{prompt}'.")
    n = len(wanted)
    found = {p for i in range(len(have) - n + 1) if have[i:i + n] == wanted for ps in positions[i:i + n] for p in ps}
    if not found:
        raise InputError(
            f"'{word}' is not a word of the prompt '{prompt}'; words are: {', '.join(w for w in have if w)}. "
            f"Name one of them (case and punctuation do not matter).")
    return sorted(found)


def replacement_mapper(tokenizer, source: str, target: str, max_len: int = 77) -> torch.Tensor:
    """Word-swap token map M, target maps = source maps @ M on the token axis (P2P sec. 3.2 "word swap").

    Equal words map piece to piece; each of the m target pieces of a swapped word takes the mean of the
    k source pieces (M[s, t] = 1/k). The start token maps to itself, and the i-th position after the last
    word of the target (end token, padding) takes the i-th after the last word of the source (the
    reference code maps every position after a multi-piece swap to itself instead, off by the length
    difference). Target positions whose counterpart would lie past max_len take the source's last
    position (padding), so every column sums to 1.
    """
    src, tgt = _pieces(tokenizer, source), _pieces(tokenizer, target)
    if len(src) != len(tgt):
        raise InputError(
            f"a word swap needs prompts with the same number of words, but '{source}' has {len(src)} and "
            f"'{target}' has {len(tgt)}; to add or remove words use a refinement (kind=\"refine\").")
    src_end, tgt_end = len(_tokens(tokenizer, source, max_len)) - 1, len(_tokens(tokenizer, target, max_len)) - 1
    m = torch.zeros(max_len, max_len)
    m[0, 0] = 1.0
    for src_ids, tgt_ids, s, t in zip(src, tgt, _positions(src), _positions(tgt)):
        if src_ids == tgt_ids:
            m[s, t] = 1.0  # pairs: m[s[0], t[0]], m[s[1], t[1]], ...
        else:
            m[s[0]:s[-1] + 1, t[0]:t[-1] + 1] = 1.0 / len(s)
    for i in range(max_len - tgt_end):
        m[min(src_end + i, max_len - 1), tgt_end + i] = 1.0
    return m


def _align(src: list, tgt: list) -> list[int | None]:
    """Needleman-Wunsch global alignment (match 1, mismatch -1, gap -1): for each target item, the index
    of the source item aligned to it, or None where it is inserted."""
    def diagonal(i, j):
        return score[i - 1][j - 1] + (1 if src[i - 1] == tgt[j - 1] else -1)

    n, m = len(src), len(tgt)
    score = [[-(i + j) for j in range(m + 1)] for i in range(n + 1)]  # row 0 and column 0: all gaps
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            score[i][j] = max(diagonal(i, j), score[i - 1][j] - 1, score[i][j - 1] - 1)
    aligned, i, j = [None] * m, n, m
    while i > 0 and j > 0:  # trace back, preferring the diagonal
        if score[i][j] == diagonal(i, j):
            aligned[j - 1], i, j = i - 1, i - 1, j - 1
        elif score[i][j] == score[i - 1][j] - 1:
            i -= 1
        else:
            j -= 1
    return aligned


def refinement_mapper(tokenizer, source: str, target: str, max_len: int = 77) -> tuple[torch.Tensor, torch.Tensor]:
    """(mapper, alphas) for a refinement (P2P sec. 3.2 "adding a new phrase"; reference.md "Refinement").

    The source and target tokens (start to end token) are aligned globally; then
    target maps := alphas * source_maps[..., mapper] + (1 - alphas) * target maps.
    alphas[t] is 1 where target token t is aligned to an equal source token (mapper[t] = its position)
    and 0 where it is new (mapper[t] = 0, unused). Padding after the target's end token maps to itself
    (mapper[t] = t), as in the reference (`seq_aligner.get_mapper`).
    """
    src, tgt = _tokens(tokenizer, source, max_len), _tokens(tokenizer, target, max_len)
    mapper, alphas = torch.zeros(max_len, dtype=torch.long), torch.zeros(max_len)
    for t, s in enumerate(_align(src, tgt)):
        if s is not None and src[s] == tgt[t]:
            mapper[t], alphas[t] = s, 1.0
    for t in range(len(tgt), max_len):
        mapper[t], alphas[t] = t, 1.0
    return mapper, alphas


def reweight_vector(tokenizer, prompt: str, weights: dict[str, float], max_len: int = 77) -> torch.Tensor:
    """Per-token attention factors, ones except the named words (P2P sec. 3.2 "attention re-weighting").

    Every piece of each word in `weights` gets its factor; negative factors are allowed, nothing is
    renormalised.
    """
    _tokens(tokenizer, prompt, max_len)
    if not isinstance(weights, dict):
        raise InputError(f"the re-weighting must map words to factors, e.g. {{'cat': 2.0}}, not {weights!r}.")
    vector = torch.ones(max_len)
    for word, factor in weights.items():
        number = _real(factor)
        if number is None:
            raise InputError(
                f"the re-weighting factor of '{word}' is {factor!r}, but it must be a real number, "
                f"e.g. 2.0 to strengthen the word or 0.5 (or -1.0) to weaken it.")
        vector[find_word(tokenizer, prompt, word)] = number
    return vector


def step_window(value, steps: int, what: str = "the step window") -> torch.Tensor:
    """[steps] bool: a fraction f (the window (0, f)) or a pair (start, end) of fractions of the steps
    (self-attention injection, layout guidance, feature injection; one column of `step_windows`)."""
    pair = value if isinstance(value, (tuple, list)) else (0.0, value)
    bounds = [_real(v) for v in pair]
    if len(bounds) != 2 or None in bounds or not 0.0 <= bounds[0] <= bounds[1] <= 1.0:
        raise InputError(
            f"{what} is {value!r}, but it must be a fraction of the steps in [0, 1] (meaning steps 0 to f) "
            f"or a pair (start, end) with 0 <= start <= end <= 1; e.g. 0.8 or (0.0, 0.8).")
    first, stop = (math.floor(b * steps + 1e-9) for b in bounds)  # the reference's int(f * steps), float-safe
    on = torch.zeros(steps, dtype=torch.bool)
    on[first:stop] = True
    return on


def step_windows(spec, steps: int, tokenizer=None, prompt: str | None = None, max_len: int = 77) -> torch.Tensor:
    """[steps, max_len] bool, True where attention is injected (P2P `cross_replace_steps` / `self_replace_steps`).

    spec: a fraction f (steps before f * steps), a pair (start, end), or a dict
    {word: fraction or pair, ..., "default_": fraction or pair} giving the named words of `prompt` their
    own window and every other token the default ((0, 1) if absent, as in the reference code).
    Step i (0 is the first, noisiest step) is on when floor(start * steps) <= i < floor(end * steps), as in
    the reference code (`int(f * num_steps)`: 0.45 of 50 steps is 22 steps), except that a product a float
    error puts just under a whole number counts as that number (0.29 * 100 is 29 steps, not 28).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"the number of steps must be a whole number of at least 1, not {steps!r}.")
    if not isinstance(spec, dict):
        return step_window(spec, steps, "the step window").unsqueeze(1).repeat(1, max_len)
    if tokenizer is None or prompt is None:
        raise InputError("per-word step windows need the tokenizer and the prompt their words belong to.")
    _tokens(tokenizer, prompt, max_len)
    words = {word: window for word, window in spec.items() if word != DEFAULT}
    on = step_window(spec.get(DEFAULT, (0.0, 1.0)), steps, f"the step window '{DEFAULT}'").unsqueeze(1).repeat(1, max_len)
    for word, window in words.items():
        on[:, find_word(tokenizer, prompt, word)] = step_window(window, steps, f"the step window of '{word}'").unsqueeze(1)
    return on


def edit_kind(tokenizer, source: str, target: str) -> str:
    """The edit two prompts ask for when none is named (P2P sec. 3.2): "reweight", "refine" or "replace".

    "reweight" if the prompts are the same text to the text encoder (same tokens: case and extra spaces
    do not count), "refine" if their numbers of words differ, "replace" (word swap) otherwise.
    """
    _check_text(source, "source prompt")
    _check_text(target, "target prompt")
    if tokenizer(source).input_ids == tokenizer(target).input_ids:
        return "reweight"
    return "refine" if len(source.split()) != len(target.split()) else "replace"
