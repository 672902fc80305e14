"""Training a describer (Reverse Stable Diffusion, Croitoru et al. 2024, section "training"): AdamW
with cosine annealing on the joint loss, optionally with the curriculum, on one CPU, one GPU, or many
GPUs (`accelerate launch -m redraft train describer ...`; `accelerate.Accelerator` does the
device placement, the process group and the sharding of batches).

    redraft train describer --data shapes --backbone resnet-tiny --out DIR

The work folder DIR:

    DIR/training/options.json       the options (a resumed run must be given the same ones)
    DIR/training/targets.safetensors  the sentence embeddings of the prompts (computed once)
    DIR/training/checkpoint-*.safetensors  weights, optimiser state, step, history
                                    (deleted at the end with the targets, unless --keep-checkpoint)
    DIR/training/log.jsonl, curves.png  losses and validation cosine, and their plot
    DIR/config.json, model.safetensors, vocabulary.json, bank/, ...   the describer, when finished

Running the same command again resumes from the last checkpoint. Every random choice (the initial
weights, the order of examples in every epoch) comes from the seed, so a resumed run takes the same
steps as an uninterrupted one. A frozen backbone's features are computed once (one pass over the
data, kept in memory: examples x features x 4 bytes) and the heads are trained on them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..io.checkpoints import checkpoint_extra, load_checkpoint, save_checkpoint
from ..errors import InputError
from ..io.files import atomic_path, pyplot, save_figure
from . import data as readers
from .curriculum import curriculum_stages, difficulty_scores
from .loss import joint_loss, per_example_cosine
from .model import Describer
from .retrieval import PromptBank
from .vocabulary import Vocabulary

VAL_SEED_OFFSET = 10_000  # shapes validation scenes: split "test", seed = seed + this
LOSS_WEIGHTS = (1.0, 0.1, 1.0)  # cosine, BCE, Huber (the paper's)


@dataclass
class TrainOptions:
    """Everything a training run depends on (saved as training/options.json)."""

    data: str = "shapes"  # "shapes" (scenes drawn on the fly), or a folder: prompts.csv/.jsonl, or DiffusionDB
    backbone: str = "resnet-tiny"  # a preset, config:PATH, a transformers model folder / hub id, or "unet"
    model: str | None = None  # the diffusion model whose U-Net the "unet" backbone uses (None: built-in)
    finetune: bool | None = None  # None: train from-scratch backbones, freeze pretrained ones and the U-Net
    heads: int = 3  # the paper's head configuration, 1, 2 or 3
    hidden: int | None = None  # heads' hidden width; None: 512 on a frozen backbone, linear heads otherwise
    words: bool = True  # the joint task; False: regression only (no BCE, no re-ranking)
    image_size: int | None = None  # None: the model's (64 on shapes for from-scratch presets)
    timestep: int = 50  # "unet": the timestep the encoder reads the latents at
    context: str = "empty"  # "unet": the text context, "empty" or "caption"
    captioner: str | None = None  # context "caption": a BLIP captioner folder or hub id (redraft.describe.caption)
    epochs: int = 4  # passes over the data (with a curriculum: per stage)
    batch_size: int = 64  # per process
    lr: float = 1e-3
    backbone_lr: float | None = None  # a trained backbone's learning rate (None: lr), e.g. lower to fine-tune
    weight_decay: float = 0.01
    seed: int = 0
    train_size: int = 20_000  # shapes: scenes of split "train"
    val_size: int = 512  # shapes: validation scenes (split "test"); folders: at most this many held out
    val_fraction: float = 0.05  # folders: share held out for validation
    vocab_size: int = 1000
    curriculum: int = 0  # stages S (0: none); needs warmup_epochs of a first run to score the pairs
    warmup_epochs: int = 2
    shuffle_within: bool = False  # curriculum: shuffle inside each newly added block
    save_every: int = 200  # steps between checkpoints (and one at every epoch's end)
    num_workers: int = 0  # DataLoader worker processes

    def check(self) -> None:
        if self.heads not in (1, 2, 3):
            raise InputError(f"heads must be 1, 2 or 3 (the paper's configurations), not {self.heads!r}")
        for name in ("epochs", "batch_size", "train_size", "val_size", "vocab_size", "save_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise InputError(f"{name} must be a positive integer, not {getattr(self, name)!r}")
        if self.curriculum < 0 or self.warmup_epochs < 1:
            raise InputError("curriculum must be 0 (off) or a number of stages, and warmup_epochs at least 1")
        if not 0 < self.val_fraction < 1:
            raise InputError(f"val_fraction must be between 0 and 1, not {self.val_fraction}")
        if self.lr <= 0 or (self.backbone_lr is not None and self.backbone_lr <= 0):
            raise InputError(f"learning rates must be positive, not {self.lr} / {self.backbone_lr}")
        if self.backbone != "unet" and self.model is not None:
            raise InputError("--model is only used by the U-Net backbone (--backbone unet)")
        if (self.context == "caption") != (self.captioner is not None) or \
                (self.context == "caption" and self.backbone != "unet"):
            raise InputError("a caption context is for the U-Net backbone and needs a captioner: "
                             "--backbone unet --context caption --captioner FOLDER_OR_HUB_ID")

    def trains_backbone(self) -> bool:
        from .backbones import PRESETS

        from_scratch = self.backbone in PRESETS or self.backbone.startswith("config:")
        if from_scratch and self.finetune is False:
            raise InputError(f"{self.backbone} is built from scratch: it cannot be frozen")
        return True if from_scratch else bool(self.finetune)


# --- data ------------------------------------------------------------------------------------------

@dataclass
class Split:
    """Rows of a reader: `dataset[rows[j]]` is example j; `prompts[j]` its prompt."""

    dataset: readers.PairDataset
    rows: list[int]

    @property
    def prompts(self) -> list[str]:
        return [self.dataset.rows[i][1] for i in self.rows]

    def __len__(self) -> int:
        return len(self.rows)


def splits(options: TrainOptions) -> tuple[Split, Split]:
    """(train, validation). Shapes: fresh scenes, validation from split "test" with another seed.
    A folder: a seeded share held out (at most val_size)."""
    if options.data == "shapes":
        train = readers.ShapesDataset(options.seed, options.train_size, "train")
        val = readers.ShapesDataset(options.seed + VAL_SEED_OFFSET, options.val_size, "test")
        return Split(train, list(range(len(train)))), Split(val, list(range(len(val))))
    folder = Path(options.data)
    if not folder.is_dir():
        raise InputError(f"--data {options.data}: not 'shapes' and not a folder; give a folder with "
                         "prompts.csv / prompts.jsonl, or with DiffusionDB's part-*.zip files")
    zips = [*folder.glob("part-*.zip"), *folder.glob("*/part-*.zip")]
    dataset = readers.DiffusionDBDataset(folder) if zips else readers.FolderDataset(folder)
    n = len(dataset)
    if n < 2:
        raise InputError(f"{folder} has {n} usable (image, prompt) pairs; training needs at least 2")
    order = np.random.default_rng(options.seed).permutation(n).tolist()
    n_val = max(1, min(options.val_size, round(n * options.val_fraction)))
    return Split(dataset, sorted(order[n_val:])), Split(dataset, sorted(order[:n_val]))


def prompt_targets(prompts: list[str], cache: Path) -> tuple[list[str], torch.Tensor]:
    """(unique prompts, their all-MiniLM-L6-v2 embeddings [U, 384]), computed once and cached."""
    from safetensors.torch import load_file, save_file

    unique = list(dict.fromkeys(prompts))
    names = cache.with_suffix(".json")
    if cache.is_file() and names.is_file() and json.loads(names.read_text()) == unique:
        return unique, load_file(cache)["embeddings"]
    from .embed import SentenceEmbedder

    embeddings = SentenceEmbedder().encode(unique)
    with atomic_path(cache) as tmp:
        save_file({"embeddings": embeddings}, tmp)
    with atomic_path(names) as tmp:
        tmp.write_text(json.dumps(unique))
    return unique, embeddings


class _Rows(torch.utils.data.Dataset):
    """Example j of an epoch -> (example index, pixels [3, S, S]), None when its image does not decode;
    just the index when the features are precomputed (`size` None)."""

    def __init__(self, order, split: Split, size: int | None):
        self.order, self.split, self.size = list(order), split, size

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, j: int):
        from .backbones import to_pixels

        i = int(self.order[j])
        if self.size is None:
            return i
        pair = self.split.dataset[self.split.rows[i]]
        return None if pair is None else (i, to_pixels([pair[0]], self.size)[0])


def _collate(items) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(indices [B], pixels [B, 3, S, S]), unreadable images dropped; (indices, None) for features."""
    if all(isinstance(item, int) for item in items):
        return torch.tensor(items, dtype=torch.long), None
    kept = [item for item in items if item is not None]
    if not kept:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0)
    return torch.tensor([i for i, _ in kept], dtype=torch.long), torch.stack([x for _, x in kept])


# --- one run ---------------------------------------------------------------------------------------

def cosine_lr(step: int, total: int, base: float) -> float:
    """Cosine annealing (Loshchilov & Hutter 2017) from `base` to 0 over `total` steps."""
    return 0.5 * base * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))


class Run:
    """One training run of a describer along a fixed plan (a list of epochs, each an order of example
    indices), with checkpoints named `name`. Records each example's cosine per epoch (`history`)."""

    def __init__(self, name: str, options: TrainOptions, describer: Describer, train: Split, val: Split,
                 targets: torch.Tensor, target_rows: dict[str, torch.Tensor], plan: list[np.ndarray],
                 work: Path, accelerator, progress: bool):
        self.name, self.options, self.describer = name, options, describer
        self.train_split, self.val_split, self.targets, self.target_rows = train, val, targets, target_rows
        self.plan, self.work, self.accelerator, self.progress = plan, work, accelerator, progress
        self.finetune = options.trains_backbone()
        self.weights = LOSS_WEIGHTS if options.words else (LOSS_WEIGHTS[0], 0.0, LOSS_WEIGHTS[2])
        self.history = torch.full((len(plan), len(train)), float("nan"))
        self.log: list[dict] = []
        self.step = 0
        self.features: dict[str, torch.Tensor] = {}
        self.val_loader = None
        self.captions: dict[str, list[str]] | None = None  # context "caption": one per example, per split

    @property
    def checkpoint(self) -> Path:
        return self.work / f"checkpoint-{self.name}.safetensors"

    def multi_hot(self, split: str, indices: torch.Tensor) -> torch.Tensor:
        s = self.train_split if split == "train" else self.val_split
        return self.describer.vocabulary.targets([s.dataset.rows[s.rows[i]][1] for i in indices.tolist()])

    def loader(self, order, split: Split, features: bool):
        rows = _Rows(order, split, None if features else self.describer.image_size)
        return torch.utils.data.DataLoader(rows, batch_size=self.options.batch_size, shuffle=False,
                                           collate_fn=_collate, num_workers=self.options.num_workers)

    @torch.no_grad()
    def precompute(self, split_name: str, split: Split) -> torch.Tensor:
        """A frozen backbone's features of every example of a split, [N, F], in one pass."""
        acc = self.accelerator
        backbone = self.describer.backbone.to(acc.device).eval()
        out = torch.zeros(len(split), backbone.feature_dim)
        loader = acc.prepare(self.loader(range(len(split)), split, features=False))
        for indices, pixels in tqdm(loader, desc=f"{self.name}: {split_name} features",
                                    disable=not (self.progress and acc.is_main_process), leave=False):
            feats = backbone(pixels.to(acc.device), self.captions_of(split_name, indices)) if len(indices) \
                else torch.zeros(0, out.shape[1], device=acc.device)
            indices, feats = acc.gather_for_metrics((indices.to(acc.device), feats))
            out[indices.cpu()] = feats.float().cpu()
        return out

    def captions_of(self, split: str, indices: torch.Tensor) -> list[str] | None:
        return None if self.captions is None else [self.captions[split][i] for i in indices.tolist()]

    def forward(self, model, split: str, indices: torch.Tensor, pixels: torch.Tensor | None):
        if self.finetune:
            return model(pixels, self.captions_of(split, indices))
        return model(self.features[split][indices.cpu()].to(self.accelerator.device))

    def targets_of(self, split: str, indices: torch.Tensor) -> torch.Tensor:
        return self.targets[self.target_rows[split][indices.cpu()]].to(self.accelerator.device)

    @torch.no_grad()
    def validate(self, model) -> float:
        acc = self.accelerator
        model.eval()
        total, count = 0.0, 0
        if self.val_loader is None:
            self.val_loader = acc.prepare(self.loader(range(len(self.val_split)), self.val_split, not self.finetune))
        for indices, pixels in self.val_loader:
            embedding, _ = self.forward(model, "val", indices, pixels)
            cos = per_example_cosine(embedding.float(), self.targets_of("val", indices))
            cos = acc.gather_for_metrics(cos)
            total, count = total + cos.sum().item(), count + len(cos)
        model.train()
        if not self.finetune:
            self.describer.backbone.eval()
        return total / max(count, 1)

    def go(self, stop_after: int | None = None) -> bool:
        """Train along the plan (resuming from this run's checkpoint); True when the plan is done."""
        acc, opts, describer = self.accelerator, self.options, self.describer
        describer.train()
        if not self.finetune:
            describer.backbone.requires_grad_(False).eval()
            if "train" not in self.features:
                self.features = {"train": self.precompute("train", self.train_split),
                                 "val": self.precompute("val", self.val_split)}
        trained = describer if self.finetune else describer.heads
        params = [p for p in trained.parameters() if p.requires_grad]
        groups = [{"params": [p for p in describer.heads.parameters()], "initial_lr": opts.lr}]
        if self.finetune:
            groups.append({"params": [p for p in describer.backbone.parameters() if p.requires_grad],
                           "initial_lr": opts.backbone_lr or opts.lr})
        optimizer = torch.optim.AdamW(groups, lr=opts.lr, weight_decay=opts.weight_decay)
        model, optimizer = acc.prepare(trained, optimizer)
        loaders = [acc.prepare(self.loader(order, self.train_split, not self.finetune)) for order in self.plan]
        total = sum(len(loader) for loader in loaders)
        if self.checkpoint.is_file():
            self.load_checkpoint(optimizer)
        bar = tqdm(total=total, initial=self.step, desc=f"{self.name}", disable=not (self.progress and acc.is_main_process))
        done_before = 0
        started = time.perf_counter()
        for epoch, loader in enumerate(loaders):
            if self.step >= done_before + len(loader):
                done_before += len(loader)
                continue
            skip = self.step - done_before
            batches = acc.skip_first_batches(loader, skip) if skip else loader
            for indices, pixels in batches:
                if len(indices) == 0:  # every image of the batch failed to decode (counted by the reader)
                    self.step += 1
                    bar.update(1)
                    continue
                for group in optimizer.param_groups:
                    group["lr"] = cosine_lr(self.step, total, group["initial_lr"])
                embedding, logits = self.forward(model, "train", indices, pixels)
                target = self.targets_of("train", indices)
                loss, parts = joint_loss(embedding.float(), target, logits.float(),
                                         self.multi_hot("train", indices).to(acc.device), self.weights)
                acc.backward(loss)
                acc.clip_grad_norm_(params, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                cos = acc.gather(per_example_cosine(embedding.detach().float(), target))
                self.history[epoch, acc.gather(indices.to(acc.device)).cpu()] = cos.cpu()
                self.step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{parts['total']:.4f}", cos=f"{1 - parts['cosine']:.3f}")
                if self.step % 10 == 0 or self.step == total:
                    self.log.append({"step": self.step, "epoch": epoch, **parts,
                                     "lr": optimizer.param_groups[0]["lr"]})
                end_of_epoch = self.step == done_before + len(loader)
                if end_of_epoch:
                    self.log.append({"step": self.step, "epoch": epoch, "val_cosine": self.validate(model),
                                     "seconds": time.perf_counter() - started})
                if end_of_epoch or self.step % opts.save_every == 0 or self.step == stop_after:
                    self.save_checkpoint(optimizer)
                if stop_after is not None and self.step >= stop_after:
                    bar.close()
                    return False
            done_before += len(loader)
        bar.close()
        return True

    # ------------------------------------------------------------------ checkpoints (safetensors)

    def save_checkpoint(self, optimizer) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            save_checkpoint(self.checkpoint, {"model": self.describer}, optimizer, self.step, self.log,
                            extra={"history": self.history})
            write_log(self.work, self.log, self.name)
        acc.wait_for_everyone()

    def load_checkpoint(self, optimizer) -> None:
        self.step, self.log = load_checkpoint(self.checkpoint, {"model": self.describer}, optimizer)
        self.history = checkpoint_extra(self.checkpoint)["history"]


# --- the whole job ---------------------------------------------------------------------------------

def build_describer(options: TrainOptions, vocabulary: Vocabulary, bank: PromptBank) -> Describer:
    """A fresh describer (weights from the seed) for the options."""
    from .backbones import PRESETS, TransformersBackbone, UNetEncoder

    torch.manual_seed(options.seed)
    if options.backbone == "unet":
        from ..io.loading import BUILTIN, load_pipeline

        pipeline = load_pipeline(options.model, torch.device("cpu"), torch.float32)
        backbone = UNetEncoder.from_pipeline(pipeline, timestep=options.timestep, context=options.context,
                                             source=options.model or BUILTIN)
        if options.captioner is not None:
            backbone.spec_extra["captioner"] = options.captioner
    else:
        size = options.image_size
        if size is None and options.data == "shapes" and (options.backbone in PRESETS or
                                                          options.backbone.startswith("config:")):
            from ..shapes.world import CANVAS

            size = CANVAS
        backbone = TransformersBackbone.create(options.backbone, size)
    finetune = options.trains_backbone()
    hidden = options.hidden if options.hidden is not None else (None if finetune else 512)
    hidden = None if hidden == 0 else hidden
    return Describer.build(backbone, vocabulary, bank, config=options.heads, hidden=hidden, words=options.words)


def train(options: TrainOptions, out_dir: str | Path, *, stop_after: int | None = None,
          keep_checkpoint: bool = False, progress: bool = True) -> Path | None:
    """Train a describer into `out_dir` (resuming what is there). Returns the folder when finished,
    None when stopped early by `stop_after` (steps of the current run)."""
    from accelerate import Accelerator

    options.check()
    started = time.perf_counter()
    out = Path(out_dir)
    work = out / "training"
    if (out / "model.safetensors").is_file() and not any(work.glob("checkpoint-*.safetensors")):
        raise InputError(f"{out} already holds a trained describer; choose another --out (or delete it)")
    accelerator = Accelerator()
    saved = work / "options.json"
    if saved.is_file():
        if json.loads(saved.read_text()) != dataclasses.asdict(options):
            raise InputError(f"{out} holds a run with other options ({saved}); resume it with the same options "
                             "or choose another --out")
    elif accelerator.is_main_process:
        work.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(dataclasses.asdict(options), indent=1))
    accelerator.wait_for_everyone()

    train_split, val_split = splits(options)
    prompts = train_split.prompts
    with accelerator.main_process_first():
        unique, embeddings = prompt_targets(prompts + val_split.prompts, work / "targets.safetensors")
    row_of = {p: i for i, p in enumerate(unique)}
    target_rows = {"train": torch.tensor([row_of[p] for p in prompts]),
                   "val": torch.tensor([row_of[p] for p in val_split.prompts])}
    bank_prompts = list(dict.fromkeys(prompts))
    bank = PromptBank(bank_prompts, embeddings[[row_of[p] for p in bank_prompts]])
    vocabulary = Vocabulary.build(prompts, size=options.vocab_size)

    captions = None
    if options.context == "caption":
        with accelerator.main_process_first():
            captions = {"train": caption_split(train_split, options.captioner, work / "captions-train.json"),
                        "val": caption_split(val_split, options.captioner, work / "captions-val.json")}

    def run(name: str, plan: list[np.ndarray]) -> Run:
        describer = build_describer(options, vocabulary, bank)
        r = Run(name, options, describer, train_split, val_split, embeddings, target_rows, plan, work,
                accelerator, progress)
        r.captions = captions
        return r

    n = len(train_split)
    shuffled = [np.random.default_rng([options.seed, epoch]).permutation(n) for epoch in range(options.epochs)]
    summary: dict = {"options": dataclasses.asdict(options), "train_examples": n, "val_examples": len(val_split)}
    if options.curriculum:
        warm = run("warmup", [np.random.default_rng([options.seed, e]).permutation(n)
                              for e in range(options.warmup_epochs)])
        if not warm.go(stop_after):
            return None
        scores = difficulty_scores(torch.nan_to_num(warm.history, nan=-1.0))  # never seen (unreadable): hardest
        stages = curriculum_stages(scores, options.curriculum, shuffle_within=options.shuffle_within,
                                   seed=options.seed)
        plan = [stage for stage in stages for _ in range(options.epochs)]
        summary["curriculum"] = {"stages": [len(s) for s in stages], "warmup_epochs": options.warmup_epochs,
                                 "warmup_val_cosine": [e["val_cosine"] for e in warm.log if "val_cosine" in e]}
    else:
        plan = shuffled
    main = run("main", plan)
    if not main.go(stop_after):
        return None
    summary["val_cosine"] = [e["val_cosine"] for e in main.log if "val_cosine" in e]
    summary["steps"] = main.step
    summary["seconds"] = round(time.perf_counter() - started, 1)  # of this call (a resumed run: since resuming)
    if accelerator.is_main_process:
        main.describer.training_summary = summary
        main.describer.eval().save(out)
        write_log(work, main.log, "main")
        plot_curves(work)
        if not keep_checkpoint:  # what only a resumed run needs
            for path in [*work.glob("checkpoint-*.safetensors"), work / "targets.safetensors", work / "targets.json"]:
                path.unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    return out


def caption_split(split: Split, captioner_source: str, cache: Path, batch_size: int = 64) -> list[str]:
    """A caption of every example's image (the U-Net's text context), computed once and cached."""
    if cache.is_file():
        captions = json.loads(cache.read_text())
        if len(captions) == len(split):
            return captions
    from .caption import Captioner

    captioner = Captioner.load(captioner_source)
    captions: list[str] = []
    for start in tqdm(range(0, len(split), batch_size), desc="captions", leave=False):
        pairs = [split.dataset[i] for i in split.rows[start:start + batch_size]]
        images = [p[0] for p in pairs if p is not None]
        said = iter(captioner.caption(images)) if images else iter(())
        captions += [next(said) if p is not None else "" for p in pairs]
    with atomic_path(cache) as tmp:
        tmp.write_text(json.dumps(captions))
    return captions


def write_log(work: Path, log: list[dict], name: str) -> None:
    path = work / f"log-{name}.jsonl"
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(entry) + "\n" for entry in log))


def plot_curves(work: Path) -> Path:
    """training/curves.png: training loss per step and validation cosine per epoch, of every run."""
    plt = pyplot()

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for path in sorted(work.glob("log-*.jsonl")):
        name = path.stem.removeprefix("log-")
        entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        steps = [e for e in entries if "total" in e]
        vals = [e for e in entries if "val_cosine" in e]
        left.plot([e["step"] for e in steps], [e["total"] for e in steps], label=name)
        right.plot([e["step"] for e in vals], [e["val_cosine"] for e in vals], marker="o", label=name)
    left.set(xlabel="step", ylabel="training loss", yscale="log", title="joint loss")
    right.set(xlabel="step", ylabel="mean cosine", title="validation cosine (end of each epoch)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return save_figure(fig, work / "curves.png")
