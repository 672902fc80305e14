"""`Inversion`: everything a later reconstruction or edit needs, saved as one safetensors file."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import InputError
from .files import atomic_path

from ..inversions import METHODS
FORMAT = "redraft.inversion/1"


@dataclass
class Cost:
    """What an inversion cost: wall time and UNet passes (one latent through the UNet each)."""

    seconds: float = 0.0
    unet_forward: int = 0
    unet_backward: int = 0


@dataclass
class Inversion:
    """The diffusion trajectory that regenerates one image.

    `pivots` [N + 1, C, H, W] is the DDIM-inversion trajectory in sampling order (pivots[0] = x_T,
    pivots[N] = the image's latent); `null_embeddings` [N or 1, L, D] is what each step uses as its
    unconditional embedding: the optimised ones (null-text), the source prompt's (negative-prompt), or
    the empty prompt's (ddim). `prompt_embedding` [L, D] is the source prompt's.
    """

    method: str
    prompt: str
    steps: int
    guidance_scale: float
    pivots: torch.Tensor
    null_embeddings: torch.Tensor
    prompt_embedding: torch.Tensor
    image: np.ndarray  # the model-sized input, uint8 [H, W, 3]
    model_id: str
    model_fingerprint: str
    options: dict = field(default_factory=dict)
    cost: Cost = field(default_factory=Cost)

    @property
    def x_T(self) -> torch.Tensor:  # noqa: N802 (the paper's name)
        return self.pivots[0]

    def null_embedding(self, i: int) -> torch.Tensor:
        """The unconditional embedding of step i."""
        return self.null_embeddings[i if len(self.null_embeddings) > 1 else 0]

    def save(self, path: str | Path) -> Path:
        """Tensors in safetensors, the rest as JSON in its header; written atomically."""
        path = Path(path)
        meta = {k: getattr(self, k) for k in ("method", "prompt", "steps", "guidance_scale", "model_id",
                                              "model_fingerprint", "options")}
        meta["cost"] = asdict(self.cost)
        tensors = {
            "pivots": self.pivots.float().clone(memory_format=torch.contiguous_format),
            "null_embeddings": self.null_embeddings.float().clone(memory_format=torch.contiguous_format),
            "prompt_embedding": self.prompt_embedding.float().clone(memory_format=torch.contiguous_format),
            "image": torch.from_numpy(np.array(self.image, dtype=np.uint8)),
        }
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": FORMAT, "inversion": json.dumps(meta)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Inversion":
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such file; give the file written by `redraft invert`.")
        try:
            with safe_open(str(path), "pt") as f:
                header = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises several types for a file that is not its format
            raise InputError(f"{path} is not a saved inversion (not a safetensors file: {e}).") from None
        if header.get("format") != FORMAT:
            raise InputError(f"{path} is a safetensors file but not a redraft inversion (format {header.get('format')!r}).")
        meta = json.loads(header["inversion"])
        meta["cost"] = Cost(**meta["cost"])
        return cls(**meta, pivots=tensors["pivots"], null_embeddings=tensors["null_embeddings"],
                   prompt_embedding=tensors["prompt_embedding"], image=tensors["image"].numpy())

    def check_compatible(self, model_fingerprint: str, model_id: str, steps: int | None = None) -> None:
        """Refuse to apply this inversion to another model or another number of steps."""
        if model_fingerprint != self.model_fingerprint:
            raise InputError(
                f"this inversion was made with model {self.model_id!r}, not the loaded {model_id!r}: "
                f"its latents and embeddings mean nothing to another model. Load {self.model_id!r} "
                f"(redraft --model ...) or invert the image again with this model.")
        if steps is not None and steps != self.steps:
            raise InputError(
                f"this inversion has {self.steps} steps; it cannot be replayed with {steps}. "
                f"Leave steps unset, or invert again with steps={steps}.")
