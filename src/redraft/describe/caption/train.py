"""Training a captioner (vanilla, enhanced and the two ablations): the losses, the recipe, the batch plan,
the per-example cosine history that feeds the curriculum, and the resumable run itself."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...core.schedules import warmup_cosine
from ...errors import InputError
from ...io.checkpoints import Checkpointer, load_checkpoint
from ..curriculum import curriculum_stages, difficulty_scores
from ..vocabulary import Vocabulary
from .blip import TinyBlip
from .model import Captioner

# variant -> (vocabulary classification, curriculum): the paper's two; the other two are ablations.
VARIANTS = {"vanilla": (False, False), "enhanced": (True, True), "vocabulary": (True, False),
            "curriculum": (False, True)}

RECIPE_FILE = "recipe.json"


# --- The losses -----------------------------------------------------------------------------------


def enhanced_loss(lm_loss: torch.Tensor, word_logits: torch.Tensor, multi_hot: torch.Tensor,
                  bce_weight: float = 0.1) -> torch.Tensor:
    """The enhanced objective: captioning loss + bce_weight x BCE(vocabulary words), the paper's
    classification term (weight 0.1) added to BLIP's language-modelling loss."""
    if word_logits.shape != multi_hot.shape:
        raise InputError(f"word logits {list(word_logits.shape)} and targets {list(multi_hot.shape)} differ in shape")
    return lm_loss + bce_weight * F.binary_cross_entropy_with_logits(word_logits, multi_hot.to(word_logits.dtype))


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
    """Linear warm-up, then cosine annealing to 0 over the run (`warmup_cosine`)."""
    return warmup_cosine(step, r.steps, r.lr, r.warmup_steps)


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

    from ..vocabulary import words as letter_runs

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
    ckpt = Checkpointer(out_dir / "checkpoint.safetensors", minutes=r.checkpoint_minutes)
    step, log = 0, {"losses": [], "history": [], "seconds": 0.0, "cpu_seconds": 0.0}
    if ckpt.path.exists():
        step, log = load_checkpoint(ckpt.path, modules, optimizer)
    objective, optimizer = accelerator.prepare(objective, optimizer)

    plan = batch_plan(len(dataset), r, stages)
    record = score_steps(r) if r.variant == "vanilla" else set()
    embed = CachedEmbedder(embedder) if embedder is not None else None
    started, running = time.time() - log["seconds"], None
    ckpt.saved()  # the wall-time clock starts with the loop
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
        ckpt.maybe(step == r.steps, modules, optimizer, step, log)
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
