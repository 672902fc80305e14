"""How well a describer predicts the prompts of shapes scenes: mean cosine of the predicted and true
embeddings, exact prompts, and the accuracy of each attribute of the retrieved text (`evaluate`, which
`bench.describe` and `bench.shapes` both report)."""

from __future__ import annotations

import numpy as np
import torch

from ..shapes import world

ATTRIBUTES = ("size", "color", "shape", "background")


@torch.no_grad()
def evaluate(describer, scenes: list[world.Scene], embedder=None, batch_size: int = 64) -> dict:
    """Mean cosine, exact-prompt rate and per-attribute accuracy of a describer on scenes."""
    from ..describe.embed import SentenceEmbedder

    embedder = embedder or SentenceEmbedder()
    truths = [s.prompt() for s in scenes]
    targets = embedder.encode(truths)
    descriptions = describer.describe([world.render(s) for s in scenes], k=1, batch_size=batch_size)
    predicted = torch.stack([d.embedding for d in descriptions])
    cosines = torch.nn.functional.cosine_similarity(predicted, targets, dim=-1)
    per: dict[str, list[bool]] = {a: [] for a in ATTRIBUTES}
    for d, scene in zip(descriptions, scenes):
        try:
            read = world.parse_prompt(d.prompt)
        except ValueError:
            read = {}
        for a in ATTRIBUTES:
            per[a].append(read.get(a) == getattr(scene, a))
    return {"mean_cosine": float(cosines.mean()), "min_cosine": float(cosines.min()),
            "exact_prompt": float(np.mean([d.prompt == t for d, t in zip(descriptions, truths)])),
            **{a: float(np.mean(v)) for a, v in per.items()}, "n": len(scenes)}
