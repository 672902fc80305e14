"""Joint prompt-regression and vocabulary-classification heads (Reverse Stable Diffusion, Croitoru
et al. 2024, method: "joint prompt regression and multi-label vocabulary classification").

A backbone turns an image into features [B, F]. Two heads read them: regression predicts the
prompt's 384-d sentence embedding (L2-normalised), classification predicts which vocabulary words
the prompt contains (logits, one per word). The paper compares three ways to connect them:

1. side by side: both heads read the features;
2. the classification logits are appended to the features before the regression head;
3. the classification head reads the predicted embedding (the reference code's default).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

CONFIGS = (1, 2, 3)


def head(in_dim: int, out_dim: int, hidden: int | None = None) -> nn.Module:
    """A linear layer, or with `hidden` set, Linear -> GELU -> Linear through `hidden` units."""
    if hidden is None:
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))


class JointHeads(nn.Module):
    """The regression and classification heads in one of the paper's three configurations.

    `forward(features [B, F]) -> (embedding [B, embed_dim], logits [B, vocab_size])`; the embedding
    has unit L2 norm, the logits are raw (apply a sigmoid for word probabilities).

    - config 1: `regression` reads F features, `classification` reads F features.
    - config 2: `classification` reads F features; `regression` reads F + vocab_size values (the
      features with the logits appended; gradients flow through the logits too).
    - config 3: `regression` reads F features; `classification` reads the *normalised* embedding
      (embed_dim values). The reference code feeds it the embedding before normalisation; reading
      the normalised one keeps the classifier's input on the unit sphere the embedding lives on.
    """

    def __init__(self, feature_dim: int, embed_dim: int = 384, *, vocab_size: int,
                 hidden: int | None = None, config: int = 3):
        super().__init__()
        if config not in CONFIGS:
            raise InputError(f"config must be 1, 2 or 3 (the paper's head configurations), not {config!r}")
        for name, value in (("feature_dim", feature_dim), ("embed_dim", embed_dim), ("vocab_size", vocab_size)):
            if not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a positive integer, not {value!r}")
        if hidden is not None and (not isinstance(hidden, int) or hidden < 1):
            raise InputError(f"hidden must be None (linear heads) or a positive integer, not {hidden!r}")
        self.config = config
        self.feature_dim = feature_dim
        if config == 1:
            self.regression = head(feature_dim, embed_dim, hidden)
            self.classification = head(feature_dim, vocab_size, hidden)
        elif config == 2:
            self.classification = head(feature_dim, vocab_size, hidden)
            self.regression = head(feature_dim + vocab_size, embed_dim, hidden)
        else:
            self.regression = head(feature_dim, embed_dim, hidden)
            self.classification = head(embed_dim, vocab_size, hidden)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise InputError(f"features must have shape [B, {self.feature_dim}], not {list(features.shape)}: "
                             "flatten or pool the backbone output first")
        if self.config == 1:
            embedding = F.normalize(self.regression(features), dim=-1)
            logits = self.classification(features)
        elif self.config == 2:
            logits = self.classification(features)
            embedding = F.normalize(self.regression(torch.cat([features, logits], dim=-1)), dim=-1)
        else:
            embedding = F.normalize(self.regression(features), dim=-1)
            logits = self.classification(embedding)
        return embedding, logits
