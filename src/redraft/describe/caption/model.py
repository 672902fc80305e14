"""The BLIP captioner: `Captioner` (load from a folder or hub id, build from scratch, save, caption,
predict the vocabulary words, make training batches)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from ...errors import InputError
from ...io.loading import folder_or_hub_id
from ..vocabulary import Vocabulary
from .blip import ImageTransform, TinyBlip, blip_config, build_word_tokenizer

VOCAB_FILE = "vocabulary.json"
HEAD_FILE = "vocab_head.safetensors"


# --- The captioner --------------------------------------------------------------------------------


class Captioner:
    """A BLIP captioner: `caption(images) -> prompts`; optionally with the vocabulary head of the
    enhanced variant (`predict_words`). Build with `load` (hub id or folder) or `from_scratch`."""

    def __init__(self, model, tokenizer, transform: ImageTransform, vocabulary: Vocabulary | None = None,
                 head: nn.Linear | None = None):
        self.model, self.tokenizer, self.transform = model, tokenizer, transform
        self.vocabulary, self.head = vocabulary, head
        if (vocabulary is None) != (head is None):
            raise InputError("a vocabulary head needs its vocabulary and the other way round: pass both or neither")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def max_length(self) -> int:
        return self.model.config.text_config.max_position_embeddings

    def to(self, device) -> Captioner:
        self.model.to(device)
        if self.head is not None:
            self.head.to(device)
        return self

    def add_vocabulary_head(self, vocabulary: Vocabulary) -> None:
        """A new linear head: vision pooled output [B, hidden] -> one logit per vocabulary word."""
        self.vocabulary = vocabulary
        self.head = nn.Linear(self.model.config.vision_config.hidden_size, len(vocabulary)).to(self.device)

    # -- building and loading

    @classmethod
    def from_scratch(cls, words: list[str], arch: TinyBlip | None = None, seed: int = 0) -> Captioner:
        """A randomly initialised BLIP of `arch`'s size with a tokenizer over `words` (same seed, same weights)."""
        from transformers import BlipForConditionalGeneration

        arch = arch or TinyBlip()
        tokenizer = build_word_tokenizer(words, max_length=arch.max_length)
        torch.manual_seed(seed)
        model = BlipForConditionalGeneration(blip_config(tokenizer, arch)).eval()
        return cls(model, tokenizer, ImageTransform(size=arch.image_size))

    @classmethod
    def load(cls, source: str | Path, device: str | torch.device = "cpu") -> Captioner:
        """A BLIP captioner from a folder (saved by `save`, or any BlipForConditionalGeneration folder
        with safetensors weights) or a hub id (e.g. Salesforce/blip-image-captioning-base)."""
        from transformers import AutoTokenizer, BlipForConditionalGeneration

        folder = _check_source(source)
        try:
            model = BlipForConditionalGeneration.from_pretrained(str(source), use_safetensors=True)
            tokenizer = AutoTokenizer.from_pretrained(str(source))
        except (OSError, ValueError) as e:
            raise InputError(f"could not load a BLIP captioner from {source}: {e}") from None
        if model.config.model_type != "blip":
            raise InputError(f"{source} is a {model.config.model_type!r} model, not BLIP: give a BLIP captioning model")
        preprocessor = _read_json(source, "preprocessor_config.json")
        transform = ImageTransform.from_config(preprocessor) if preprocessor is not None else ImageTransform()
        vocabulary = head = None
        if folder is not None and (folder / VOCAB_FILE).is_file() and (folder / HEAD_FILE).is_file():
            from safetensors.torch import load_file

            vocabulary = Vocabulary.load(folder / VOCAB_FILE)
            state = load_file(str(folder / HEAD_FILE))
            head = nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
            head.load_state_dict(state)
        return cls(model.eval(), tokenizer, transform, vocabulary, head).to(device)

    def save(self, folder: str | Path) -> Path:
        """Write a folder `load` (and `BlipForConditionalGeneration.from_pretrained`) reads back:
        config.json, model.safetensors, tokenizer, preprocessor_config.json, and the vocabulary
        head with its words when there is one. Written beside and renamed in one step; an existing
        folder is not replaced."""
        from safetensors.torch import save_file

        folder = Path(folder)
        if folder.exists():
            raise InputError(f"{folder} exists; choose another folder or remove it first")
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
        try:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            (tmp / "preprocessor_config.json").write_text(json.dumps(self.transform.to_config(), indent=1) + "\n")
            if self.head is not None:
                self.vocabulary.save(tmp / VOCAB_FILE)
                save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
                          str(tmp / HEAD_FILE))
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return folder

    # -- using it

    def pixels(self, images) -> torch.Tensor:
        """Images (one or a list) -> normalised pixel values on the model's device."""
        return self.transform(_image_list(images)).to(self.device)

    @torch.no_grad()
    def caption(self, images, max_new_tokens: int = 30, num_beams: int = 1, batch_size: int = 64) -> list[str]:
        """The prompt of each image (greedy decoding by default: the same image gives the same text).
        Images are read and preprocessed a batch at a time."""
        images = _image_list(images)
        was_training = self.model.training
        self.model.eval()
        max_new_tokens = min(max_new_tokens, self.max_length - 1)
        out = []
        for start in range(0, len(images), batch_size):
            ids = self.model.generate(pixel_values=self.pixels(images[start:start + batch_size]), do_sample=False,
                                      num_beams=num_beams, max_new_tokens=max_new_tokens)
            out += [" ".join(t.split()) for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]
        self.model.train(was_training)
        return out

    @torch.no_grad()
    def predict_words(self, images, threshold: float = 0.5) -> list[list[str]]:
        """The vocabulary words the head finds in each image (probability >= threshold)."""
        if self.head is None:
            raise InputError("this captioner has no vocabulary head: train the enhanced variant to get one")
        pooled = self.model.vision_model(pixel_values=self.pixels(images)).pooler_output
        probs = torch.sigmoid(self.head(pooled))
        return [[self.vocabulary.words[j] for j in torch.nonzero(row >= threshold).flatten().tolist()]
                for row in probs]

    def batch(self, images, prompts: list[str]) -> dict[str, torch.Tensor]:
        """The training inputs of image-prompt pairs: pixel values, and the prompts for teacher forcing
        as BLIP trains ([DEC] replaces [CLS] at the start; padding is masked out of the loss with
        -100; the decoder shifts the labels itself), plus the multi-hot word targets with a head."""
        if len(images) != len(prompts):
            raise InputError(f"{len(images)} images but {len(prompts)} prompts: give one prompt per image")
        text = self.tokenizer(list(prompts), padding="longest", truncation=True, max_length=self.max_length,
                              return_tensors="pt").to(self.device)
        input_ids = text["input_ids"].clone()
        input_ids[:, 0] = self.model.config.text_config.bos_token_id
        out = {"pixel_values": self.pixels(images), "input_ids": input_ids, "attention_mask": text["attention_mask"],
               "labels": input_ids.masked_fill(text["attention_mask"] == 0, -100)}
        if self.vocabulary is not None:
            out["multi_hot"] = self.vocabulary.targets(list(prompts)).to(self.device)
        return out


def _image_list(images) -> list:
    """One image or a list of them, as a non-empty list."""
    if isinstance(images, (str, Path)) or not isinstance(images, (list, tuple)):
        images = [images]
    if not images:
        raise InputError("no images given: pass an image or a list of images")
    return list(images)


def _check_source(source) -> Path | None:
    """The folder `source` names (checked: config.json and safetensors weights), or None for a hub id
    (`folder_or_hub_id`)."""
    path = folder_or_hub_id(source)
    if isinstance(path, str):
        return None
    if not path.is_dir():
        raise InputError(f"{path} is a file; give the folder of a BLIP captioner (config.json + model.safetensors)")
    if not (path / "config.json").is_file():
        raise InputError(f"{path} has no config.json: give a folder saved by save_pretrained or Captioner.save")
    if not any(path.glob("*.safetensors")):
        found = ", ".join(sorted(p.name for p in path.iterdir())) or "nothing"
        raise InputError(f"{path} has no .safetensors weights (found: {found}). redraft never unpickles weight "
                         "files (.bin, .pt can run code when loaded): convert them to safetensors first")
    return path


def _read_json(source, name: str) -> dict | None:
    """A JSON file of a model folder or hub repo, or None when it has none."""
    path = Path(str(source)) / name
    if path.is_file():
        return json.loads(path.read_text())
    if Path(str(source)).exists():
        return None
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(str(source), name)).read_text())
    except Exception:  # not on the hub, offline, ...: BLIP's defaults apply
        return None
