"""What the stages train on: rendered scenes, the counterfactual pairs, and the prompts with their token ids."""

from __future__ import annotations

import random

import numpy as np
import torch

from .. import world
from .recipe import Recipe


def render_batch(scenes: list) -> torch.Tensor:
    """Scenes -> images in [-1, 1], shape (n, 3, 64, 64)."""
    arr = np.stack([np.asarray(world.render(s), dtype=np.uint8) for s in scenes])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1


def training_scenes(r: Recipe) -> list:
    return world.scenes(r.seed, r.scenes, split="train")


def counterfactual_scenes(r: Recipe) -> list[tuple[str, world.Scene]]:
    """For each training scene, (kind, scene with that one attribute swapped), drawn with a fixed seed.

    The position is kept (clamped into range when the size grows, as `world.random_edit` does), and
    the swapped scene is itself a training scene: held-out scenes stay unseen in either role."""
    rng = random.Random(f"counterfactual-{r.seed}")
    pairs = []
    for scene in training_scenes(r):
        while True:
            kind = rng.choice(world.SWAPS)
            target = world.random_edit(scene, kind, rng).target
            if target.split == "train":
                break
        pairs.append((kind, target))
    return pairs


class PromptIds:
    """Token ids of prompts, cached: the shapes grammar has a few hundred distinct prompts."""

    def __init__(self, tokenizer):
        self.tokenizer, self.cache = tokenizer, {}

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        for p in prompts:
            if p not in self.cache:
                self.cache[p] = self.tokenizer(p, padding="max_length", max_length=self.tokenizer.model_max_length,
                                               return_tensors="pt").input_ids[0]
        return torch.stack([self.cache[p] for p in prompts])


def sample_prompt(scene, rng: random.Random, r: Recipe, names: str | None = None) -> str:
    """A training prompt of `scene` (empty in a share `p_empty`), or, when `names` is an attribute, one
    that is never empty and always names that attribute (the prompt of a counterfactual pair)."""
    if names is None and rng.random() < r.p_empty:
        return ""
    p_size = 1.0 if names == "size" else r.p_size
    p_background = 1.0 if names == "background" else r.p_background
    return world.random_prompt(scene, rng, p_size=p_size, p_background=p_background)
