"""The options of a describer training run (`TrainOptions`, saved as training/options.json) and their checks."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import InputError

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
        from ..backbones import PRESETS

        from_scratch = self.backbone in PRESETS or self.backbone.startswith("config:")
        if from_scratch and self.finetune is False:
            raise InputError(f"{self.backbone} is built from scratch: it cannot be frozen")
        return True if from_scratch else bool(self.finetune)
