"""Prompts to text-encoder embeddings, with the token limit checked instead of silently truncated."""

from __future__ import annotations

import torch

from ..errors import InputError


def check_prompt(tokenizer, prompt: str, *, what: str = "prompt", allow_empty: bool = True) -> None:
    """Raise a clear error for a non-string, an empty prompt where one is needed, or one over the limit."""
    if not isinstance(prompt, str):
        raise InputError(f"the {what} must be text, not {type(prompt).__name__}.")
    if not allow_empty and not prompt.strip():
        raise InputError(f"the {what} is empty; give the text that describes the image (e.g. --prompt \"a cat on a sofa\").")
    n = len(tokenizer(prompt).input_ids)
    limit = tokenizer.model_max_length
    if n > limit:
        raise InputError(
            f"the {what} has {n - 2} tokens, but the text encoder reads at most {limit - 2} "
            f"({limit} with its start and end tokens); shorten it by {n - limit} tokens.")


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    """[B, L, D] embeddings, as Stable Diffusion computes them: padded to L = model_max_length,
    last hidden state of the text encoder (fp32 out, whatever the encoder's dtype)."""
    for p in prompts:
        check_prompt(tokenizer, p)
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids.to(text_encoder.device))[0].float()
