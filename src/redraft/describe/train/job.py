"""The whole describer job: the data, the targets, the vocabulary and prompt bank, the warm-up run and
curriculum when asked, the main run, and the finished describer's folder."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from ...errors import InputError
from ..curriculum import curriculum_stages, difficulty_scores
from ..model import Describer
from ..retrieval import PromptBank
from ..vocabulary import Vocabulary
from .logs import plot_curves, write_log
from .options import TrainOptions
from .run import Run
from .inputs import caption_split, prompt_targets, splits

# --- the whole job ---------------------------------------------------------------------------------

def build_describer(options: TrainOptions, vocabulary: Vocabulary, bank: PromptBank) -> Describer:
    """A fresh describer (weights from the seed) for the options."""
    from ..backbones import PRESETS, TransformersBackbone, UNetEncoder

    torch.manual_seed(options.seed)
    if options.backbone == "unet":
        from ...io.loading import BUILTIN, load_pipeline

        pipeline = load_pipeline(options.model, torch.device("cpu"), torch.float32)
        backbone = UNetEncoder.from_pipeline(pipeline, timestep=options.timestep, context=options.context,
                                             source=options.model or BUILTIN)
        if options.captioner is not None:
            backbone.spec_extra["captioner"] = options.captioner
    else:
        size = options.image_size
        if size is None and options.data == "shapes" and (options.backbone in PRESETS or
                                                          options.backbone.startswith("config:")):
            from ...shapes.world import CANVAS

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
