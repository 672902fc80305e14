"""Prompts to text-encoder embeddings, with the token limit checked instead of silently truncated."""

from __future__ import annotations

import json
import re

import torch

from ..errors import InputError

_WORD = re.compile(r"[^\W\d_]+")  # a run of letters: what a CLIP tokenizer splits a prompt into (with digits, marks)


def check_prompt(tokenizer, prompt: str, *, what: str = "prompt", allow_empty: bool = True,
                 limit: int | None = None) -> list[int]:
    """The prompt's token ids (start and end tokens included), after a clear error for a non-string,
    an empty prompt where one is needed, a word the tokenizer maps to its unknown token, or more
    tokens than `limit` (default: the tokenizer's model_max_length)."""
    if not isinstance(prompt, str):
        raise InputError(f"the {what} must be text, not {type(prompt).__name__}.")
    if not allow_empty and not prompt.strip():
        raise InputError(f"the {what} is empty; give the text that describes the image (e.g. --prompt \"a cat on a sofa\").")
    ids = tokenizer(prompt).input_ids
    limit = tokenizer.model_max_length if limit is None else limit
    if len(ids) > limit:
        raise InputError(f"the {what} has {len(ids) - 2} tokens, but the text encoder reads at most "
                         f"{limit - 2} ({limit} with its start and end tokens)" + _too_long(tokenizer, prompt, len(ids) - limit))
    unknown = _unk_words(tokenizer, prompt)
    if unknown:
        raise InputError(f"the {what} has words the model does not know: {', '.join(unknown)}; "
                         f"{_use_known(tokenizer)}")
    return ids


def unknown_words(tokenizer, prompt: str) -> list[str]:
    """The words of `prompt` the model does not know: those the tokenizer maps to its unknown token,
    and, for a word-level tokenizer (`known_words`), those it spells out in several pieces."""
    words = known_words(tokenizer)
    if words is None:
        return _unk_words(tokenizer, prompt)
    known = set(words)
    return _unique(w for w in _WORD.findall(prompt.lower()) if len(w) > 1 and w not in known)


def known_words(tokenizer) -> list[str] | None:
    """The words a word-level tokenizer knows (each one token), sorted; None for a subword tokenizer.

    A word-level tokenizer is a vocabulary of words (a WordLevel model), or a CLIP-style BPE whose every
    merge ends a word, so that a listed word is one token and any other word several single-letter
    pieces (the built-in shapes model's, `shapes.tokenizer`). One-letter words are one token whatever
    the vocabulary, so they are always known and not listed. CLIP's own BPE merges inside words:
    every word is some pieces of it, so no word is unknown and this is None.
    """
    model = _backend_model(tokenizer)
    if model is None:
        return None
    special = set(getattr(tokenizer, "all_special_tokens", []))
    if model.get("type") == "WordLevel":
        return sorted(w for w in model.get("vocab", {}) if w not in special)
    end = model.get("end_of_word_suffix") or ""
    merges = [m.split(" ") if isinstance(m, str) else m for m in model.get("merges", [])]
    if model.get("type") != "BPE" or not end or not merges or not all(right.endswith(end) for _, right in merges):
        return None
    pieces = {right for _, right in merges}  # a token that a longer token extends is a piece, not a word
    return sorted({(left + right)[:-len(end)] for left, right in merges} - {p[:-len(end)] for p in pieces})


def _backend_model(tokenizer) -> dict | None:
    """The `tokenizers` model of a fast tokenizer as JSON (type, vocab, merges), or None."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    try:
        return json.loads(backend.to_str())["model"] if backend is not None else None
    except (AttributeError, ValueError, KeyError, TypeError):
        return None


def _too_long(tokenizer, prompt: str, over: int) -> str:
    """The end of the over-the-limit message: the unknown words that spelled out make it long, or by how much to shorten it."""
    unknown = unknown_words(tokenizer, prompt)
    if not unknown:
        return f"; shorten it by {over} tokens."
    return (f": the model does not know the words {', '.join(unknown)}, and spells each one out in pieces. "
            f"{_use_known(tokenizer)}")


def _use_known(tokenizer) -> str:
    words = known_words(tokenizer)
    if words is None:
        return "rephrase it with other words."
    return f"Use the words it knows: {', '.join(words)} (and one-letter words such as \"a\")."


def _unk_words(tokenizer, prompt: str) -> list[str]:
    """The words of `prompt` that the tokenizer maps to its unknown token."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or unk not in tokenizer(prompt, add_special_tokens=False).input_ids:
        return []
    return _unique(w for w in prompt.split() if unk in tokenizer(w, add_special_tokens=False).input_ids)


def _unique(words) -> list[str]:
    return list(dict.fromkeys(words))


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str], device: torch.device | None = None) -> torch.Tensor:
    """[B, L, D] embeddings, as Stable Diffusion computes them: padded to L = model_max_length,
    last hidden state of the text encoder (fp32 out, whatever the encoder's dtype), computed on
    `device` (None: the encoder's; with offloading, the pipeline's execution device)."""
    for p in prompts:
        check_prompt(tokenizer, p)
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids.to(device or text_encoder.device))[0].float()
