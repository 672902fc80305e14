"""The pieces of a BLIP captioner: its image preprocessing, a WordPiece tokenizer over a fixed word list,
and the config of a small from-scratch BLIP."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import InputError
from ...io.image import ImageLike, load_image

# BLIP's image processor defaults (OpenAI CLIP's mean and std, 384 x 384, bicubic), used when a
# model has no preprocessor_config.json.
BLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
BLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BLIP_SIZE = 384

# The special tokens of BLIP's BERT tokenizer: [DEC] starts the decoder (bos), [ENC] is the
# image-grounded text encoder's, unused by captioning but kept so the vocabulary matches BLIP's layout.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]")
LETTERS = "abcdefghijklmnopqrstuvwxyz"

VOCAB_FILE = "vocabulary.json"
HEAD_FILE = "vocab_head.safetensors"
RECIPE_FILE = "recipe.json"


# --- Images in ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageTransform:
    """BLIP's preprocessing in torch: RGB, bicubic resize to size x size, /255, (x - mean) / std."""

    size: int = BLIP_SIZE
    mean: tuple[float, float, float] = BLIP_MEAN
    std: tuple[float, float, float] = BLIP_STD

    def __call__(self, images: list[ImageLike]) -> torch.Tensor:
        """Images (paths, PIL images or arrays) -> pixel values [B, 3, size, size] (float32)."""
        tensors = []
        for image in images:
            a = np.asarray(load_image(image), dtype=np.float32) / 255.0
            x = torch.from_numpy(a).permute(2, 0, 1)[None]
            if x.shape[-2:] != (self.size, self.size):
                x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", antialias=True,
                                  align_corners=False).clamp(0, 1)
            tensors.append(x[0])
        x = torch.stack(tensors)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std

    def to_config(self) -> dict:
        """The `preprocessor_config.json` of transformers' BlipImageProcessor for this transform."""
        return {"image_processor_type": "BlipImageProcessor", "do_convert_rgb": True, "do_resize": True,
                "size": {"height": self.size, "width": self.size}, "resample": 3, "do_rescale": True,
                "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(self.mean),
                "image_std": list(self.std)}

    @classmethod
    def from_config(cls, config: dict) -> ImageTransform:
        """From a BlipImageProcessor config; missing keys take BLIP's defaults."""
        size = config.get("size", BLIP_SIZE)
        if isinstance(size, dict):
            size = size.get("height", size.get("shortest_edge", BLIP_SIZE))
        return cls(size=int(size), mean=tuple(config.get("image_mean", BLIP_MEAN)),
                   std=tuple(config.get("image_std", BLIP_STD)))


# --- The tokenizer for a fixed word list ----------------------------------------------------------


def build_word_tokenizer(words: list[str], out_dir: str | Path | None = None, max_length: int = 32):
    """A BERT WordPiece tokenizer (BLIP's layout) whose vocabulary is the special tokens, the words and
    the letters (a-z and ##a-##z), so that any lower-case word still tokenizes, letter by letter.

    Written to `out_dir` (vocab.txt and the tokenizer files) when given.
    """
    from transformers import BertTokenizer

    words = [w.lower() for w in words]
    if not words or not all(w.isalpha() and w.isascii() for w in words):
        raise InputError("the tokenizer's words must be a non-empty list of ASCII letter words, e.g. ['red', 'circle']")
    vocab = list(dict.fromkeys([*SPECIAL_TOKENS, *LETTERS, *(f"##{c}" for c in LETTERS), *words]))
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(out_dir or tmp) / "vocab.txt"
        vocab_file.parent.mkdir(parents=True, exist_ok=True)
        vocab_file.write_text("\n".join(vocab) + "\n")
        tokenizer = BertTokenizer(str(vocab_file), do_lower_case=True, bos_token="[DEC]",
                                  additional_special_tokens=["[ENC]"], model_max_length=max_length)
    if out_dir is not None:
        tokenizer.save_pretrained(out_dir)
    return tokenizer


# --- A small BLIP ---------------------------------------------------------------------------------


@dataclass
class TinyBlip:
    """The size of a from-scratch BLIP (the real base model: 768 wide, 12 + 12 layers, 384 px, patch 16)."""

    image_size: int = 64
    patch_size: int = 8
    vision_hidden: int = 64
    vision_layers: int = 2
    text_hidden: int = 64
    text_layers: int = 2
    heads: int = 4
    max_length: int = 32  # text positions: the longest prompt in tokens, with [DEC] and [SEP]


def blip_config(tokenizer, arch: TinyBlip):
    """A BlipConfig of `arch`'s size whose special token ids are the tokenizer's."""
    from transformers import BlipConfig

    special = dict(bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
                   sep_token_id=tokenizer.sep_token_id, eos_token_id=tokenizer.sep_token_id)
    text = dict(vocab_size=len(tokenizer), hidden_size=arch.text_hidden, encoder_hidden_size=arch.vision_hidden,
                intermediate_size=4 * arch.text_hidden, num_hidden_layers=arch.text_layers,
                num_attention_heads=arch.heads, max_position_embeddings=arch.max_length, **special)
    vision = dict(hidden_size=arch.vision_hidden, intermediate_size=4 * arch.vision_hidden,
                  num_hidden_layers=arch.vision_layers, num_attention_heads=arch.heads,
                  image_size=arch.image_size, patch_size=arch.patch_size,
                  initializer_range=0.02)  # BlipVisionConfig's default (1e-10) suits loading, not training
    return BlipConfig(text_config=text, vision_config=vision, **special)
