"""A model family's text conditioning as one tensor per prompt, so that one sampling loop serves all.

SD 1.x / 2.x condition the UNet on the text encoder's token embeddings alone, [B, L, D]. SDXL (Podell
et al. 2023, sec. 2.1-2.2) adds a pooled text embedding (text_encoder_2's projected output) and six
micro-conditioning numbers (`add_time_ids`: original size, crop top-left, target size, each (h, w)),
which the UNet reads through `added_cond_kwargs`. `XLLayout` packs both behind the token rows, in
`extra` more rows of width D, so that a conditioning is still one tensor [B, L + extra, D]: batch rows
are concatenated and indexed, compared (negative-prompt inversion's skipped pass), saved in an
Inversion file and optimised (null-text inversion) exactly as SD's are. `CountedUNet` unpacks it
before every call. For SD, no layout: the tensor is the token embeddings, unchanged.

Packed row layout (flattened over the extra rows): [pooled (P), time ids (6), zeros].
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch

from ..errors import InputError

TIME_IDS = 6  # original (h, w), crop top-left (top, left), target (h, w): SDXL's _get_add_time_ids


@dataclass(frozen=True)
class XLLayout:
    """Where SDXL's pooled embedding and time ids sit in a packed conditioning [B, L + extra, D]."""

    tokens: int  # L, the text encoders' max_length (77)
    width: int  # D, the concatenated token embedding width (cross_attention_dim)
    pooled: int  # P, the pooled embedding's width (text_encoder_2's projection_dim)
    train_pooled: bool = False  # whether gradients reach the pooled embedding (null-text's option)

    @property
    def extra(self) -> int:
        return math.ceil((self.pooled + TIME_IDS) / self.width)

    @classmethod
    def of(cls, unet, tokens: int = 77) -> "XLLayout | None":
        """The layout a UNet needs: None for SD 1.x / 2.x, an XLLayout for SDXL's `text_time` conditioning."""
        config = unet.config
        if getattr(config, "addition_embed_type", None) != "text_time":
            return None
        pooled = config.projection_class_embeddings_input_dim - TIME_IDS * config.addition_time_embed_dim
        width = config.cross_attention_dim
        width = width[0] if isinstance(width, (list, tuple)) else width
        return cls(tokens=tokens, width=int(width), pooled=int(pooled))

    def pack(self, tokens: torch.Tensor, pooled: torch.Tensor, time_ids: torch.Tensor) -> torch.Tensor:
        """[B, L, D] token embeddings, [B, P] pooled, [B, 6] time ids -> [B, L + extra, D]."""
        b = tokens.shape[0]
        tail = torch.zeros(b, self.extra * self.width, dtype=tokens.dtype, device=tokens.device)
        tail[:, :self.pooled] = pooled.to(tokens)
        tail[:, self.pooled:self.pooled + TIME_IDS] = time_ids.to(tokens).expand(b, TIME_IDS)
        return torch.cat([tokens, tail.view(b, self.extra, self.width)], dim=1)

    def unpack(self, context: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """[B, L + extra, D] -> the token embeddings and the UNet's `added_cond_kwargs`. The time ids
        never carry a gradient; the pooled embedding only when `train_pooled`."""
        tail = context[:, self.tokens:].flatten(1)
        pooled = tail[:, :self.pooled]
        pooled = pooled if self.train_pooled else pooled.detach()
        ids = tail[:, self.pooled:self.pooled + TIME_IDS].detach()
        return context[:, :self.tokens], {"text_embeds": pooled, "time_ids": ids}

    def time_ids(self, context: torch.Tensor) -> torch.Tensor:
        """The [B, 6] time ids of a packed conditioning ([L + extra, D] for one prompt: [6])."""
        flat = context.flatten(-2)[..., self.tokens * self.width:]
        return flat[..., self.pooled:self.pooled + TIME_IDS]


def time_ids(original: tuple[int, int], target: tuple[int, int], crop: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """SDXL's micro-conditioning (Podell et al. 2023, sec. 2.2): [orig_h, orig_w, top, left, h, w]."""
    return torch.tensor([*original, *crop, *target], dtype=torch.float32)


def family(pipeline) -> str:
    """"sdxl" for a pipeline with SDXL's two text encoders and `text_time` UNet, else "sd" (1.x / 2.x)."""
    return "sdxl" if XLLayout.of(pipeline.unet) is not None else "sd"


@torch.no_grad()
def encode_xl(pipeline, layout: XLLayout, prompts: list[str], ids: torch.Tensor,
              device: torch.device | None = None) -> torch.Tensor:
    """SDXL's prompt encoding (diffusers' `encode_prompt`; Podell et al. 2023, sec. 2.1), packed: the
    penultimate hidden states of both text encoders concatenated on the feature axis [B, 77, 768 + 1280],
    text_encoder_2's projected pooled output, and the time ids `ids` ([6] or [B, 6]). An empty prompt
    is all zeros (tokens and pooled) when the pipeline's `force_zeros_for_empty_prompt` is set, as
    SDXL's unconditional branch is by default. The encoders run on `device` (None: each encoder's own;
    with offloading, the pipeline's execution device)."""
    from .prompts import check_prompt

    for p in prompts:
        check_aligned(pipeline, p)
    hidden, pooled = [], None
    for tokenizer, encoder in ((pipeline.tokenizer, pipeline.text_encoder),
                               (pipeline.tokenizer_2, pipeline.text_encoder_2)):
        for p in prompts:
            check_prompt(tokenizer, p)
        tokens = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                           truncation=True, return_tensors="pt").input_ids
        out = encoder(tokens.to(device or encoder.device), output_hidden_states=True)
        hidden.append(out.hidden_states[-2].float())
        if out[0].ndim == 2:
            pooled = out[0].float()
    tokens, pooled = torch.cat(hidden, dim=-1), pooled
    if getattr(pipeline.config, "force_zeros_for_empty_prompt", False):
        empty = torch.tensor([not p.strip() for p in prompts], device=tokens.device)
        tokens, pooled = tokens.masked_fill(empty[:, None, None], 0), pooled.masked_fill(empty[:, None], 0)
    return layout.pack(tokens, pooled, ids.to(tokens.device))


def check_aligned(pipeline, prompt: str) -> None:
    """Refuse a prompt that SDXL's two tokenizers split differently: token position k of the
    concatenated embedding must be the same piece of the same word in both, or per-word attention
    maps and Prompt-to-Prompt's token mappers would mix two words."""

    first, second = pipeline.tokenizer, pipeline.tokenizer_2
    for word in prompt.split():
        a = first(word, add_special_tokens=False).input_ids
        b = second(word, add_special_tokens=False).input_ids
        if len(a) != len(b):
            raise InputError(
                f"the word {word!r} is {len(a)} tokens for this model's first tokenizer but {len(b)} for its "
                f"second, so its token positions differ between the two text encoders; rephrase the prompt "
                f"without it (or give the model one tokenizer for both, as SDXL's own are).")
    if len(first(prompt).input_ids) != len(second(prompt).input_ids):
        raise InputError(f"this model's two tokenizers split the prompt {prompt!r} into different numbers of "
                         f"tokens, so its token positions differ between the two text encoders; rephrase it.")


@contextmanager
def pooled_trainable(model, on: bool):
    """Within the block, gradients reach SDXL's pooled embedding in `model` (a CountedUNet) when `on`
    (null-text inversion's `null_pooled`); SD's UNets are left as they are."""
    saved = model.layout
    if saved is not None:
        model.layout = replace(saved, train_pooled=on)
    try:
        yield model
    finally:
        model.layout = saved


def check_size(size, factor: int, native: int) -> tuple[int, int]:
    """(height, width) checked to be positive multiples of the VAE's `factor`; None: the `native` square."""
    if size is None:
        return (native, native)
    if len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < factor or v % factor for v in size):
        raise InputError(f"size must be (height, width) in pixels, each a multiple of {factor} (this model's VAE "
                         f"factor); got {size!r}. The model's native size is {native}.")
    return tuple(size)
