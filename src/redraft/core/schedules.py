"""The learning-rate schedule every trainer here uses: a linear warm-up, then a cosine decay to 0.

This is nanoGPT's `get_lr` without its floor (min_lr = 0), and with no warm-up it is cosine annealing
(Loshchilov & Hutter 2017, SGDR, one cycle). Warm restarts are cycles of it, one after another.
"""

from __future__ import annotations

import math


def warmup_cosine(step: int, total: int, peak: float, warmup: int = 0) -> float:
    """The learning rate at `step` (0-based) of a `total`-step run that peaks at `peak`.

    peak x min(1, (step + 1) / warmup) x (1 + cos(pi x step / total)) / 2: the first `warmup` steps
    ramp up linearly (step 0 already takes peak / warmup), and the cosine runs over the whole run, the
    warm-up included, reaching 0 at `total`. Steps past `total` stay at 0; `warmup` 0 or 1 is none.
    """
    warm = min(1.0, (step + 1) / max(1, warmup))
    return peak * warm * 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))
