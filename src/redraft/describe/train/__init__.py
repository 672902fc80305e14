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

The package: `options` (`TrainOptions`), `inputs` (the splits, targets and captions), `run` (`Run`, one
run along a plan), `logs` (the logs and curves), `job` (`train`, the whole job); every name is
importable from here (`from redraft.describe.train import TrainOptions, train`).
"""

from __future__ import annotations

from .job import build_describer, train
from .logs import plot_curves, write_log
from .options import LOSS_WEIGHTS, VAL_SEED_OFFSET, TrainOptions
from .run import Run, cosine_lr
from .inputs import Split, caption_split, prompt_targets, splits

__all__ = ["LOSS_WEIGHTS", "VAL_SEED_OFFSET", "Run", "Split", "TrainOptions", "build_describer", "caption_split",
           "cosine_lr", "plot_curves", "prompt_targets", "splits", "train", "write_log"]
