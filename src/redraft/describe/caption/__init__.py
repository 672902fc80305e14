"""Text route (2): a captioner writes the prompt (Reverse Stable Diffusion, Croitoru et al. 2024,
experiments: "vanilla" BLIP fine-tuned on image-prompt pairs against "enhanced" BLIP, which adds
the multi-label vocabulary classification and curriculum learning to the captioning objective).

The model is transformers' `BlipForConditionalGeneration`: a ViT image encoder (the "vision
tower") and a BERT-style text decoder that cross-attends to the image tokens. Two variants train it:

- vanilla: the captioning loss only, next-token cross-entropy of the prompt given the image;
- enhanced: the same loss + `bce_weight` x BCE of a linear vocabulary head on the vision tower's
  pooled output (the paper's 0.1 x BCE term of its loss), on a curriculum: a first (warm-up) run
  records per-example cosine similarities between the embeddings of its caption and the prompt,
  `redraft.describe.curriculum` turns them into easy-to-hard stages, and the run trains on the
  easiest share first, then more, then all.

Two ablations take one addition each: "vocabulary" (the BCE term only), "curriculum" (only that).

Real BLIP weights load by hub id or folder (safetensors only). Without them, `Captioner.from_scratch`
builds a small BLIP of the same architecture with a WordPiece tokenizer over a fixed word list; the
shapes world trains it in minutes on a CPU (`redraft bench caption`).

The package: `blip` (preprocessing, the word tokenizer, a small BLIP's config), `model` (`Captioner`),
`train` (the losses, `CaptionRecipe`, `train_captioner`); every name is importable from here.

BLIP's text conventions, from transformers' BLIP code: the tokenizer is BERT's ([CLS] prompt [SEP],
[PAD] = 0) with an added bos token [DEC]; the decoder input starts with [DEC] in place of [CLS]
(`text_config.bos_token_id`), and generation stops at [SEP] (`text_config.sep_token_id`).
"""

from __future__ import annotations

from .blip import (BLIP_MEAN, BLIP_SIZE, BLIP_STD, LETTERS, SPECIAL_TOKENS, ImageTransform, TinyBlip, blip_config,
                   build_word_tokenizer)
from .model import HEAD_FILE, VOCAB_FILE, Captioner
from .train import (RECIPE_FILE, VARIANTS, CachedEmbedder, CaptionObjective, CaptionRecipe, TrainResult, batch_plan,
                    caption_cosines, enhanced_loss, lr_at, score_steps, train_captioner)

__all__ = ["BLIP_MEAN", "BLIP_SIZE", "BLIP_STD", "HEAD_FILE", "LETTERS", "RECIPE_FILE", "SPECIAL_TOKENS", "VARIANTS",
           "VOCAB_FILE", "CachedEmbedder", "CaptionObjective", "CaptionRecipe", "Captioner", "ImageTransform",
           "TinyBlip", "TrainResult", "batch_plan", "blip_config", "build_word_tokenizer", "caption_cosines",
           "enhanced_loss", "lr_at", "score_steps", "train_captioner"]
