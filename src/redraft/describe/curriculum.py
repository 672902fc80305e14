"""Curriculum learning (Reverse Stable Diffusion, Croitoru et al. 2024, method: "curriculum learning").

DiffusionDB prompts are noisy labels: many images match their prompt poorly. The paper trains in
stages from easy (well-aligned) pairs to hard ones:

1. A first, warm-up run records for every training pair its cosine similarity between predicted
   and true embedding after each epoch: `history` [E, N].
2. `difficulty_scores`: a per-pair score, the average over epochs weighted towards the later ones.
   Higher = easier (the model learned the pair well, so its label is probably good).
3. `curriculum_stages`: pairs sorted easy to hard; stage 1 trains on the easiest share, each later
   stage adds the next block of harder pairs, and the last stage uses all pairs.

Differences from the reference code, on purpose:
- Its warm-up weights are [0.1, 0.1, 0.2, 0.2, 0.4] for its 5 epochs; here they are 1, 2, ..., E
  normalised (the same idea for any E).
- Stages take the easiest 1/S, 1/(S-1), ..., 1/1 of the data, as in the reference (the default
  schedule, "reciprocal"). `schedule="linear"` gives k/S for stage k instead: equal blocks.
- It shuffles after sorting (its loader's shuffle, and a random train/validation split of the
  sorted table), so within a stage the easy-to-hard order is lost. Here the order within a stage is
  kept; `shuffle_within=True` shuffles only inside each newly added block, so every easy pair
  still comes before every harder block.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError

SCHEDULES = ("linear", "reciprocal")


def difficulty_scores(history) -> np.ndarray:
    """Per-example scores [N] from per-epoch similarities [E, N] (rows: epochs, oldest first).

    The score is the mean over epochs with weights 1, 2, ..., E divided by their sum, so the last
    epoch counts most. Higher score = easier pair. Accepts a numpy array, a torch tensor or lists.
    """
    history = np.asarray(history.detach().cpu() if hasattr(history, "detach") else history, dtype=np.float64)
    if history.ndim == 1:
        raise InputError("history must be [epochs, examples]; for one epoch pass history[None]")
    if history.ndim != 2 or history.shape[0] == 0 or history.shape[1] == 0:
        raise InputError(f"history must be a non-empty [epochs, examples] array, not shape {history.shape}")
    if not np.isfinite(history).all():
        raise InputError("history has NaN or infinite similarities: record finite cosine values for every pair")
    weights = np.arange(1, history.shape[0] + 1, dtype=np.float64)
    return (weights / weights.sum()) @ history


def stage_sizes(n: int, stages: int, schedule: str = "reciprocal") -> list[int]:
    """How many of the n easiest examples each stage uses.

    "reciprocal" (the reference, the default): ceil(n / (S - k + 1)) for k = 1..S, i.e. the easiest
    1/S, 1/(S-1), ..., all. "linear": ceil(k * n / S).
    The last stage is always n. With more stages than examples, some consecutive sizes repeat.
    """
    if not isinstance(stages, int) or stages < 1:
        raise InputError(f"stages must be a positive integer, not {stages!r}")
    if schedule not in SCHEDULES:
        raise InputError(f"unknown schedule {schedule!r}; use one of {list(SCHEDULES)}")
    if schedule == "linear":
        return [-(-k * n // stages) for k in range(1, stages + 1)]  # integer ceil, no float rounding
    return [-(-n // (stages - k + 1)) for k in range(1, stages + 1)]


def curriculum_stages(scores, stages: int, *, shuffle_within: bool = False, seed: int = 0,
                      schedule: str = "reciprocal") -> list[np.ndarray]:
    """Example indices for each stage, easiest first: a list of `stages` integer arrays.

    Examples are sorted by score, highest (easiest) first; equal scores keep index order. Stage k
    is the first `stage_sizes(...)[k - 1]` of that order, so each stage contains the previous one
    and the last contains every example. The arrays are in training order: easy to hard, not
    shuffled. With `shuffle_within=True` each block a stage adds (the indices new in that stage)
    is shuffled with `seed`, the same way in every later stage; blocks stay in easy-to-hard order.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or scores.size == 0:
        raise InputError(f"scores must be a non-empty 1-d array (one per example), not shape {scores.shape}")
    if np.isnan(scores).any():
        raise InputError("scores contain NaN: compute them with difficulty_scores on finite similarities")
    order = np.argsort(-scores, kind="stable")
    sizes = stage_sizes(len(order), stages, schedule)
    if shuffle_within:
        rng = np.random.default_rng(seed)
        start = 0
        for end in sizes:
            rng.shuffle(order[start:end])  # in place, on a view: only this block moves
            start = end
    return [order[:end].copy() for end in sizes]
