"""One training run of a describer along a fixed plan of epochs: AdamW with cosine annealing on the joint
loss, validation at every epoch's end, resumable safetensors checkpoints."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ...core.schedules import warmup_cosine
from ...io.checkpoints import Checkpointer, checkpoint_extra, load_checkpoint, save_checkpoint
from ..loss import joint_loss, per_example_cosine
from ..model import Describer
from .logs import write_log
from .options import LOSS_WEIGHTS, TrainOptions
from .inputs import Split, _collate, _Rows

# --- one run ---------------------------------------------------------------------------------------

cosine_lr = warmup_cosine  # (step, total, base): cosine annealing from `base` to 0 over `total` steps, no warm-up


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
        cadence = Checkpointer(self.checkpoint, every=opts.save_every)
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
                    group["lr"] = warmup_cosine(self.step, total, group["initial_lr"])
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
                if cadence.due(self.step, force=end_of_epoch or self.step == stop_after):
                    self.save_checkpoint(optimizer)
                    cadence.saved()
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
