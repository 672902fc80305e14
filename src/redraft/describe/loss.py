"""The joint training loss (Reverse Stable Diffusion, Croitoru et al. 2024, method: "joint prompt
regression and multi-label vocabulary classification").

    total = w_cos * mean(1 - cos(pred, target))        cosine embedding loss
          + w_bce * BCE-with-logits(logits, multi_hot)  the vocabulary words, w_bce = 0.1
          + w_hub * Huber(pred, target), delta = 1      elementwise, averaged

This is the reference code's `BCECossLoss(w=0.1)`: torch's CosineEmbeddingLoss with target +1 is
1 - cos, and BCEWithLogitsLoss and HuberLoss average over all elements by default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InputError


def per_example_cosine(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each predicted embedding with its target: [B, D], [B, D] -> [B].

    This is the paper's metric (its mean over a set) and what the curriculum records per example.
    """
    _same_shape(pred, target, "pred", "target")
    return F.cosine_similarity(pred, target, dim=-1)


def joint_loss(pred: torch.Tensor, target: torch.Tensor, logits: torch.Tensor, multi_hot: torch.Tensor,
               weights: tuple[float, float, float] = (1.0, 0.1, 1.0)) -> tuple[torch.Tensor, dict[str, float]]:
    """(total loss, parts) for predicted embeddings [B, D], targets [B, D], logits [B, V], multi-hot [B, V].

    `weights` are (cosine, bce, huber). `parts` holds the unweighted terms and the total as plain
    floats, for logging: {"cosine": ..., "bce": ..., "huber": ..., "total": ...}.
    """
    _same_shape(logits, multi_hot, "logits", "multi_hot")
    if len(weights) != 3:
        raise InputError(f"weights must be (cosine, bce, huber), not {weights!r}")
    cosine = (1.0 - per_example_cosine(pred, target)).mean()
    bce = F.binary_cross_entropy_with_logits(logits, multi_hot.to(logits.dtype))
    huber = F.huber_loss(pred, target, delta=1.0)
    w_cos, w_bce, w_hub = weights
    total = w_cos * cosine + w_bce * bce + w_hub * huber
    parts = {"cosine": cosine.item(), "bce": bce.item(), "huber": huber.item(), "total": total.item()}
    return total, parts


def _same_shape(a: torch.Tensor, b: torch.Tensor, a_name: str, b_name: str) -> None:
    if a.ndim != 2 or a.shape != b.shape:
        raise InputError(f"{a_name} and {b_name} must both be [B, D] of the same shape, "
                         f"not {list(a.shape)} and {list(b.shape)}")
