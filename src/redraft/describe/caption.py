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

BLIP's text conventions, from transformers' BLIP code: the tokenizer is BERT's ([CLS] prompt [SEP],
[PAD] = 0) with an added bos token [DEC]; the decoder input starts with [DEC] in place of [CLS]
(`text_config.bos_token_id`), and generation stops at [SEP] (`text_config.sep_token_id`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..io.checkpoints import load_checkpoint, save_checkpoint
from ..errors import InputError
from ..io.image import ImageLike, load_image
from .curriculum import curriculum_stages, difficulty_scores
from .vocabulary import Vocabulary

# variant -> (vocabulary classification, curriculum): the paper's two; the other two are ablations.
VARIANTS = {"vanilla": (False, False), "enhanced": (True, True), "vocabulary": (True, False),
            "curriculum": (False, True)}

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


# --- The losses -----------------------------------------------------------------------------------


def enhanced_loss(lm_loss: torch.Tensor, word_logits: torch.Tensor, multi_hot: torch.Tensor,
                  bce_weight: float = 0.1) -> torch.Tensor:
    """The enhanced objective: captioning loss + bce_weight x BCE(vocabulary words), the paper's
    classification term (weight 0.1) added to BLIP's language-modelling loss."""
    if word_logits.shape != multi_hot.shape:
        raise InputError(f"word logits {list(word_logits.shape)} and targets {list(multi_hot.shape)} differ in shape")
    return lm_loss + bce_weight * F.binary_cross_entropy_with_logits(word_logits, multi_hot.to(word_logits.dtype))


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


class CaptionObjective(nn.Module):
    """BLIP (and the vocabulary head) as one module whose forward is the training loss.

    `forward(**captioner.batch(images, prompts)) -> (loss, lm_loss)`. With `bce_weight` None the
    loss is BLIP's captioning (LM) loss (vanilla); otherwise `enhanced_loss`, whose BCE reads the
    head's logits on the vision tower's pooled output (the [CLS] token after the final layer norm).
    """

    def __init__(self, model, head: nn.Linear | None = None, bce_weight: float | None = None):
        super().__init__()
        if bce_weight is not None and head is None:
            raise InputError("the enhanced loss needs a vocabulary head: call add_vocabulary_head(vocabulary) first")
        self.model, self.head, self.bce_weight = model, head, bce_weight

    def forward(self, pixel_values, input_ids, attention_mask, labels, multi_hot=None):
        vision = self.model.vision_model(pixel_values=pixel_values)
        lm = self.model.text_decoder(input_ids=input_ids, attention_mask=attention_mask,
                                     encoder_hidden_states=vision.last_hidden_state, labels=labels,
                                     reduction="mean").loss
        if self.bce_weight is None:
            return lm, lm.detach()
        return enhanced_loss(lm, self.head(vision.pooler_output), multi_hot, self.bce_weight), lm.detach()


def _image_list(images) -> list:
    """One image or a list of them, as a non-empty list."""
    if isinstance(images, (str, Path)) or not isinstance(images, (list, tuple)):
        images = [images]
    if not images:
        raise InputError("no images given: pass an image or a list of images")
    return list(images)


def _check_source(source) -> Path | None:
    """The folder `source` names (checked: config.json and safetensors weights), or None for a hub id."""
    path = Path(str(source)).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InputError(f"{path} is a file; give the folder of a BLIP captioner (config.json + model.safetensors)")
        if not (path / "config.json").is_file():
            raise InputError(f"{path} has no config.json: give a folder saved by save_pretrained or Captioner.save")
        if not any(path.glob("*.safetensors")):
            found = ", ".join(sorted(p.name for p in path.iterdir())) or "nothing"
            raise InputError(f"{path} has no .safetensors weights (found: {found}). redraft never unpickles weight "
                             "files (.bin, .pt can run code when loaded): convert them to safetensors first")
        return path
    if str(source).count("/") != 1 or str(source).startswith((".", "/", "~")):
        raise InputError(f"{source}: no such folder, and not a hub id of the form owner/name")
    return None


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


# --- Scoring captions against prompts -------------------------------------------------------------


class CachedEmbedder:
    """A `SentenceEmbedder` that embeds each distinct text once (captions and prompts repeat a lot;
    kept in float16: 768 bytes a text)."""

    def __init__(self, embedder):
        self.embedder, self.cache = embedder, {}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        new = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if new:
            self.cache.update(zip(new, self.embedder.encode(new).half()))
        return torch.stack([self.cache[t] for t in texts]).float()


def caption_cosines(captioner: Captioner, images: list, prompts: list[str], embed: CachedEmbedder,
                    batch_size: int = 64) -> tuple[torch.Tensor, list[str]]:
    """Per-example cosine between the sentence embeddings of the generated caption and the prompt
    (the paper's metric, per pair), and the captions."""
    captions = captioner.caption(images, batch_size=batch_size)
    return (embed(captions) * embed(prompts)).sum(-1), captions


# --- Training -------------------------------------------------------------------------------------


@dataclass
class CaptionRecipe:
    """Every choice of a captioner training run; saved beside the model as recipe.json."""

    variant: str = "enhanced"  # "vanilla": LM loss only; "enhanced": + vocabulary BCE + curriculum (VARIANTS)
    seed: int = 0
    steps: int = 600
    batch_size: int = 32
    lr: float = 2e-3  # from scratch; fine-tuning real BLIP wants about 1e-5
    weight_decay: float = 0.05
    warmup_steps: int = 30
    bce_weight: float = 0.1  # the paper's weight of the classification term
    vocabulary_size: int = 1000
    stages: int = 3  # curriculum stages: the easiest 1/S of the pairs, then 1/(S-1), ..., then all
    schedule: str = "reciprocal"  # the reference's shares; "linear": k/S (see redraft.describe.curriculum)
    score_points: int = 5  # a vanilla run records per-example cosines this many times (the warm-up history)
    checkpoint_minutes: float = 3.0
    arch: TinyBlip = field(default_factory=TinyBlip)

    def __post_init__(self):
        if isinstance(self.arch, dict):
            self.arch = TinyBlip(**self.arch)
        if self.variant not in VARIANTS:
            raise InputError(f"variant must be one of {list(VARIANTS)}, not {self.variant!r}")
        for name in ("steps", "batch_size", "stages", "score_points", "vocabulary_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise InputError(f"{name} must be a positive integer, not {getattr(self, name)!r}")


@dataclass
class TrainResult:
    """A finished run: the model folder, its losses and, for vanilla runs, the per-example history."""

    folder: Path
    seconds: float  # wall time of training (scoring passes included)
    cpu_seconds: float  # this process's CPU time over the same span (the machine may be shared)
    losses: list[list[float]]  # [step, running loss]
    history: list[list[float]]  # [points, N] per-example cosines (vanilla runs; the curriculum's input)


def lr_at(step: int, r: CaptionRecipe) -> float:
    """Linear warm-up, then cosine annealing to 0 over the run."""
    warm = min(1.0, (step + 1) / max(1, r.warmup_steps))
    return r.lr * warm * 0.5 * (1 + math.cos(math.pi * step / r.steps))


def batch_plan(n: int, r: CaptionRecipe, stages: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """The example indices of every step, fixed in advance (so a resumed run sees the same batches).

    Without stages: shuffled epochs over all n examples. With curriculum stages: each stage gets a
    share of the steps in proportion to its size (as training every stage for the same number of
    epochs does, the reference's way, here within the same step budget as a run without stages),
    and passes over its indices in their easy-to-hard order, again and again.
    """
    rng = np.random.default_rng(r.seed)
    if stages is None:
        passes = [rng.permutation(n) for _ in range(-(-r.steps * r.batch_size // n) + 1)]
        flat = np.concatenate(passes)
        return [flat[i * r.batch_size:(i + 1) * r.batch_size] for i in range(r.steps)]
    sizes = np.array([len(order) for order in stages], dtype=np.float64)
    bounds = [0, *(round(r.steps * c) for c in np.cumsum(sizes) / sizes.sum())]
    plan = []
    for order, start, end in zip(stages, bounds, bounds[1:]):
        flat = np.resize(order, (end - start) * r.batch_size)  # repeats `order` as often as needed
        plan += [flat[i * r.batch_size:(i + 1) * r.batch_size] for i in range(end - start)]
    return plan


def score_steps(r: CaptionRecipe) -> set[int]:
    """The steps after which a vanilla run records per-example cosines: evenly spaced, the last at the end."""
    return {round(r.steps * k / r.score_points) for k in range(1, r.score_points + 1)}


def train_captioner(out_dir: str | Path, dataset, recipe: CaptionRecipe, *, base: str | Path | None = None,
                    words: list[str] | None = None, warmup: str | Path | None = None, embedder=None,
                    device: str | None = None, progress: bool = True) -> TrainResult:
    """Train a captioner on `dataset` (a `redraft.describe.data` reader: `dataset[i]` -> (image, prompt)
    or None) into `out_dir/model`; run again to resume from `out_dir/checkpoint.safetensors`.

    `base`: a BLIP folder or hub id to fine-tune; without it a `TinyBlip` is built from scratch with
    a tokenizer over `words` (default: the words of the training prompts). Vanilla runs record the
    per-example cosine history (needs `embedder`, a `SentenceEmbedder`). Runs with a curriculum
    (enhanced, curriculum) take it from the history of a vanilla run: `warmup` (a finished run's
    folder), or else one trained first into `out_dir/warmup` with the same recipe, as the paper's
    first run.
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from .vocabulary import words as letter_runs

    out_dir = Path(out_dir)
    r = recipe
    if len(dataset) == 0:
        raise InputError("the training set is empty: give image-prompt pairs")
    if (done := _finished(out_dir)) is not None:
        return done
    prompts = [prompt for _, prompt in dataset.rows]
    stages = None
    uses_head, uses_curriculum = VARIANTS[r.variant]
    if uses_curriculum:
        warm = _finished(Path(warmup)) if warmup is not None else None
        if warmup is not None and warm is None:
            raise InputError(f"{warmup} is not a finished captioner run (no model/ and log.json): train it first")
        if warm is None:
            warm_recipe = CaptionRecipe(**{**asdict(r), "variant": "vanilla"})
            warm = train_captioner(out_dir / "warmup", dataset, warm_recipe, base=base, words=words,
                                   embedder=embedder, device=device, progress=progress)
        if not warm.history or len(warm.history[0]) != len(dataset):
            raise InputError(f"the warm-up run {warm.folder.parent} has no per-example history for these "
                             f"{len(dataset)} pairs: train a vanilla run on the same data first")
        stages = curriculum_stages(difficulty_scores(warm.history), r.stages, shuffle_within=True, seed=r.seed,
                                   schedule=r.schedule)
    elif r.variant == "vanilla" and embedder is None:
        raise InputError("a vanilla run records per-example cosines for the curriculum: pass embedder="
                         "SentenceEmbedder()")

    accelerator = Accelerator(cpu=(device == "cpu"))
    if base is not None:
        captioner = Captioner.load(base)
    else:
        vocab_words = words or sorted({w.lower() for p in prompts for w in letter_runs(p) if w.isascii()})
        captioner = Captioner.from_scratch(vocab_words, r.arch, seed=r.seed)
    if uses_head:
        torch.manual_seed(r.seed + 1)  # the head is made after the model: both variants start from the same BLIP
        captioner.add_vocabulary_head(Vocabulary.build(prompts, size=r.vocabulary_size))
    captioner.to(accelerator.device)
    modules = {"model": captioner.model, **({"head": captioner.head} if captioner.head is not None else {})}
    objective = CaptionObjective(captioner.model, captioner.head,
                                 r.bce_weight if uses_head else None)
    optimizer = torch.optim.AdamW(objective.parameters(), lr=r.lr, weight_decay=r.weight_decay)
    ckpt = out_dir / "checkpoint.safetensors"
    step, log = 0, {"losses": [], "history": [], "seconds": 0.0, "cpu_seconds": 0.0}
    if ckpt.exists():
        step, log = load_checkpoint(ckpt, modules, optimizer)
    objective, optimizer = accelerator.prepare(objective, optimizer)

    plan = batch_plan(len(dataset), r, stages)
    record = score_steps(r) if r.variant == "vanilla" else set()
    embed = CachedEmbedder(embedder) if embedder is not None else None
    started, last_save, running = time.time() - log["seconds"], time.time(), None
    cpu_started = time.process_time() - log["cpu_seconds"]
    bar = tqdm(total=r.steps, initial=step, desc=f"captioner ({r.variant})", disable=not progress)
    objective.train()
    while step < r.steps:
        rows = plan[step][accelerator.process_index::accelerator.num_processes]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, r)
        loss, lm = objective(**captioner.batch(*_pairs(dataset, rows)))
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(objective.parameters(), 1.0)
        optimizer.step()
        step += 1
        bar.update(1)
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if step % 10 == 0 or step == r.steps:
            log["losses"].append([step, running])
            bar.set_postfix(loss=f"{running:.3f}", lm=f"{lm.item():.3f}")
        if step in record:
            log["history"].append(_history_row(captioner, dataset, embed))
            objective.train()
        log["seconds"], log["cpu_seconds"] = time.time() - started, time.process_time() - cpu_started
        if step == r.steps or time.time() - last_save > 60 * r.checkpoint_minutes:
            save_checkpoint(ckpt, modules, optimizer, step, log)
            last_save = time.time()
    bar.close()
    captioner.model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RECIPE_FILE).write_text(json.dumps({**asdict(r), "base": str(base) if base else None}, indent=1) + "\n")
    (out_dir / "log.json").write_text(json.dumps(log) + "\n")
    captioner.save(out_dir / "model")
    return _finished(out_dir)


def _finished(out_dir: Path) -> TrainResult | None:
    """The result of a finished run in `out_dir` (its model folder and log), or None."""
    if not (out_dir / "model").is_dir() or not (out_dir / "log.json").is_file():
        return None
    log = json.loads((out_dir / "log.json").read_text())
    return TrainResult(out_dir / "model", log["seconds"], log["cpu_seconds"], log["losses"], log["history"])


def _pairs(dataset, rows) -> tuple[list, list[str]]:
    """(images, prompts) of the given rows; rows whose image does not decode are left out."""
    pairs = [p for p in (dataset[int(i)] for i in rows) if p is not None]
    if not pairs:
        raise InputError("a whole batch of images failed to decode: check the data set (see the log)")
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _history_row(captioner: Captioner, dataset, embed: CachedEmbedder, batch_size: int = 256) -> list[float]:
    """Per-example cosine of caption and prompt for every training pair (0 for an undecodable image)."""
    row = []
    for start in range(0, len(dataset), batch_size):
        pairs = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        good = [p for p in pairs if p is not None]
        cos = caption_cosines(captioner, [p[0] for p in good], [p[1] for p in good], embed)[0].tolist() if good else []
        it = iter(cos)
        row += [next(it) if p is not None else 0.0 for p in pairs]
    return row

