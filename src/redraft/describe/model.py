"""The describer: an image -> the prompt behind it (Reverse Stable Diffusion, Croitoru et al. 2024).

`Describer` = a backbone (`backbones`) + the joint heads (`heads`) + the vocabulary the
classification head predicts + a bank of known prompts (`retrieval`). It predicts the prompt's
all-MiniLM-L6-v2 embedding and its words; the text is the nearest known prompt, re-ranked by the
predicted words.

A describer lives in one folder, which loads alone:

    config.json          what to rebuild: backbone spec, head configuration, training summary
    model.safetensors    every weight (backbone included, so a copy of a U-Net encoder too)
    vocabulary.json      the classification vocabulary
    bank/                the prompt bank (embeddings.safetensors, prompts.json)
    backbone/ | unet/, vae/ (text_encoder/, tokenizer/)   the backbone's architecture configs
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from ..errors import InputError
from ..io.files import atomic_path
from .backbones import TransformersBackbone, UNetEncoder, to_pixels
from .heads import JointHeads
from .retrieval import PromptBank
from .vocabulary import Vocabulary

FORMAT = "redraft-describer"
VERSION = 1
WORD_THRESHOLD = 0.5  # a word is predicted when its probability reaches this


@dataclass
class Description:
    """What a describer says about one image.

    - `prompt`: the text, the best known prompt after re-ranking (`neighbours[0]`);
    - `embedding`: the predicted all-MiniLM-L6-v2 embedding [384], unit L2 norm;
    - `words`: the vocabulary words predicted present, (word, probability), most probable first;
    - `neighbours`: the nearest known prompts, (prompt, cosine with `embedding`), in re-ranked order.
    """

    prompt: str
    embedding: torch.Tensor = field(repr=False)
    words: list[tuple[str, float]] = field(default_factory=list)
    neighbours: list[tuple[str, float]] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"prompt": self.prompt, "words": [[w, round(p, 4)] for w, p in self.words],
                "neighbours": [[t, round(c, 4)] for t, c in self.neighbours],
                "embedding": [round(v, 6) for v in self.embedding.tolist()]}


class Describer(nn.Module):
    """backbone -> features -> JointHeads -> (embedding, word logits); `describe` adds the text."""

    def __init__(self, backbone: TransformersBackbone | UNetEncoder, heads: JointHeads, vocabulary: Vocabulary,
                 bank: PromptBank, *, words: bool = True, training: dict | None = None):
        super().__init__()
        if heads.feature_dim != backbone.feature_dim:
            raise InputError(f"the heads read {heads.feature_dim} features but the backbone gives "
                             f"{backbone.feature_dim}")
        self.backbone, self.heads = backbone, heads
        self.vocabulary, self.bank = vocabulary, bank
        self.words = words  # False: trained for regression only; no word predictions, no re-ranking
        self.training_summary = dict(training or {})
        self.captioner = None  # for a U-Net read with a caption: a function (images) -> captions

    @classmethod
    def build(cls, backbone, vocabulary: Vocabulary, bank: PromptBank, *, config: int = 3,
              hidden: int | None = None, words: bool = True) -> Describer:
        heads = JointHeads(backbone.feature_dim, bank.embeddings.shape[1], vocab_size=len(vocabulary),
                           hidden=hidden, config=config)
        return cls(backbone, heads, vocabulary, bank, words=words)

    @property
    def image_size(self) -> int:
        return self.backbone.image_size

    @property
    def device(self) -> torch.device:
        return next(self.heads.parameters()).device

    def pixels(self, images: list[Image.Image]) -> torch.Tensor:
        """Images -> the backbone's input, [B, 3, S, S] in [0, 1] on this describer's device."""
        return to_pixels(images, self.image_size).to(self.device)

    def forward(self, pixels: torch.Tensor, captions: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding [B, 384] unit norm, word logits [B, V]) for pixels from `pixels`."""
        return self.heads(self.backbone(pixels, captions))

    @torch.no_grad()
    def describe(self, images: list[Image.Image], k: int = 5, captions: list[str] | None = None,
                 batch_size: int = 64) -> list[Description]:
        """One `Description` per image (RGB PIL images), with `k` neighbours each."""
        if not isinstance(k, int) or k < 1:
            raise InputError(f"k must be a positive integer, not {k!r}")
        if isinstance(self.backbone, UNetEncoder) and self.backbone.context_kind == "caption" and captions is None:
            if self.captioner is None and self.backbone.spec_extra.get("captioner"):
                from .caption import Captioner

                self.captioner = Captioner.load(self.backbone.spec_extra["captioner"], device=self.device).caption
            if self.captioner is None:
                raise InputError("this describer reads a caption of each image: pass captions=[...] or set "
                                 "describer.captioner to a function images -> captions")
            captions = list(self.captioner(images))
        was_training = self.training
        self.eval()
        out = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            caps = captions[start:start + batch_size] if captions is not None else None
            embedding, logits = self(self.pixels(chunk), caps)
            embedding = embedding.float().cpu()
            probs = torch.sigmoid(logits.float().cpu()) if self.words else None
            found = self.bank.search(embedding, k, word_probs=probs,
                                     vocabulary=self.vocabulary if self.words else None)
            for b, neighbours in enumerate(found):
                words = [] if probs is None else predicted_words(probs[b], self.vocabulary)
                out.append(Description(neighbours[0][0], embedding[b], words, neighbours))
        self.train(was_training)
        return out

    # ------------------------------------------------------------------ saving and loading

    def spec(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "backbone": self.backbone.spec(),
                "heads": {"config": self.heads.config, "hidden": _hidden(self.heads),
                          "embed_dim": self.bank.embeddings.shape[1], "vocab_size": len(self.vocabulary)},
                "words": self.words, "training": self.training_summary}

    def save(self, folder: str | Path) -> Path:
        """Write the describer folder (see the module docstring); files are replaced atomically."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.backbone.save_files(folder)
        self.vocabulary.save(folder / "vocabulary.json")
        self.bank.save(folder / "bank")
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(folder / "model.safetensors") as tmp:
            save_file(state, tmp)
        with atomic_path(folder / "config.json") as tmp:
            tmp.write_text(json.dumps(self.spec(), indent=1) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> Describer:
        """Read a describer folder written by `save` (safetensors only)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(f"{folder}: no such describer folder; train one with `redraft train describer`")
        missing = [name for name in ("config.json", "model.safetensors", "vocabulary.json",
                                     "bank/embeddings.safetensors", "bank/prompts.json")
                   if not (folder / name).is_file()]
        if missing:
            raise InputError(f"{folder} is not a complete describer folder: it lacks {', '.join(missing)}; "
                             "train one with `redraft train describer --out FOLDER`")
        try:
            spec = json.loads((folder / "config.json").read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"{folder / 'config.json'} is not valid JSON ({e}); retrain the describer") from None
        if spec.get("format") != FORMAT or spec.get("version") != VERSION:
            raise InputError(f"{folder / 'config.json'} is not a redraft describer config (version {VERSION})")
        kind = spec["backbone"]["kind"]
        backbone = (UNetEncoder if kind == "unet" else TransformersBackbone).rebuild(folder, spec["backbone"])
        vocabulary = Vocabulary.load(folder / "vocabulary.json")
        bank = PromptBank.load(folder / "bank")
        h = spec["heads"]
        if h["vocab_size"] != len(vocabulary):
            raise InputError(f"{folder}: vocabulary.json has {len(vocabulary)} words, the heads expect "
                             f"{h['vocab_size']}; the folder mixes files of two describers")
        heads = JointHeads(backbone.feature_dim, h["embed_dim"], vocab_size=h["vocab_size"], hidden=h["hidden"],
                           config=h["config"])
        describer = cls(backbone, heads, vocabulary, bank, words=spec.get("words", True),
                        training=spec.get("training"))
        try:
            state = load_file(folder / "model.safetensors")
        except (SafetensorError, OSError) as e:
            raise InputError(f"{folder / 'model.safetensors'} does not read as safetensors ({e})") from None
        try:
            describer.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as e:
            raise InputError(f"{folder / 'model.safetensors'} does not fit config.json: {e}") from None
        return describer.to(device).eval().requires_grad_(False)


def describer_folder(model: str | None, describer: str | Path | None = None) -> Path:
    """The describer of a model: `describer` if given, else `<model folder>/describer` (None: the
    built-in shapes model's). Raises InputError when there is none."""
    from ..io.loading import BUILTIN, builtin_path

    if describer is not None:
        return Path(describer)
    folder = builtin_path() if model in (None, BUILTIN) else Path(model)
    path = folder / "describer"
    if not path.is_dir():
        raise InputError(f"the model {model or BUILTIN} has no describer (no {path}); give the source prompt, or "
                         "a describer folder with redraft.load(..., describer=FOLDER) / redraft --describer FOLDER "
                         "(train one with `redraft train describer`).")
    return path


def predicted_words(probs: torch.Tensor, vocabulary: Vocabulary,
                    threshold: float = WORD_THRESHOLD) -> list[tuple[str, float]]:
    """(word, probability) for the words at or above `threshold`, most probable first."""
    keep = (probs >= threshold).nonzero().flatten().tolist()
    return sorted(((vocabulary.words[i], float(probs[i])) for i in keep), key=lambda wp: -wp[1])


def _hidden(heads: JointHeads) -> int | None:
    first = heads.regression
    return None if isinstance(first, nn.Linear) else first[0].out_features
