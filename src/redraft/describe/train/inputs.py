"""A describer run's data: the training and validation splits, the prompts' target embeddings, the
captions of a caption context (each computed once and cached), and the rows a DataLoader reads."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ...errors import InputError
from ...io.files import atomic_path
from .. import data as readers
from .options import VAL_SEED_OFFSET, TrainOptions


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
    from ..embed import SentenceEmbedder

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
        from ..backbones import to_pixels

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


def caption_split(split: Split, captioner_source: str, cache: Path, batch_size: int = 64) -> list[str]:
    """A caption of every example's image (the U-Net's text context), computed once and cached."""
    if cache.is_file():
        captions = json.loads(cache.read_text())
        if len(captions) == len(split):
            return captions
    from ..caption import Captioner

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
