"""`Inversion`: everything a later reconstruction or edit needs, saved as one safetensors file."""

from __future__ import annotations

import hashlib
import json
import struct
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..checks import finite, whole
from ..errors import InputError
from ..inversions import METHODS
from .files import atomic_path

FORMAT = "redraft.inversion/1"
TENSORS = ("pivots", "null_embeddings", "prompt_embedding", "image")  # also the checksum's order
# Optional tensors of some methods (files without them, from before, still load): edit-friendly DDPM's
# per-step noise maps z_t [N, C, H, W]; EDICT's second sequence y [N + 1, C, H, W] (float64).
EXTRAS = ("noise_maps", "pivots_y")
NEEDS = {"edit-friendly": ("noise_maps",), "edict": ("pivots_y",)}
FIELDS = ("method", "prompt", "steps", "guidance_scale", "model_id", "model_fingerprint", "options", "cost")
FAMILIES = {"sd": "Stable Diffusion 1.x / 2.x", "sdxl": "SDXL"}  # `model_family`; files without one are "sd"


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
    unconditional embedding: the optimised ones (null-text), the source prompt's (negative-prompt,
    proxnpi, spdinv), or the empty prompt's (ddim, edit-friendly, edict). `prompt_embedding` [L, D] is
    the source prompt's. `extras` holds the tensors of EXTRAS a method needs (`inversions.methods`):
    for edit-friendly the pivots are its independently noised x_t (corrected) and `noise_maps` its z_t;
    for EDICT the pivots are its x sequence and `pivots_y` its y sequence, both float64.
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
    extras: dict = field(default_factory=dict)  # name in EXTRAS -> tensor
    model_family: str = "sd"  # `core.conditioning.family`: "sd" (1.x / 2.x) or "sdxl"

    @property
    def x_T(self) -> torch.Tensor:  # noqa: N802 (the paper's name)
        return self.pivots[0]

    def per_step_nulls(self) -> torch.Tensor:
        """[N, L, D]: the unconditional embedding of every step."""
        return self.null_embeddings.expand(self.steps, -1, -1)  # [1, L, D] or already [N, L, D]

    def null_embedding(self, i: int) -> torch.Tensor:
        """The unconditional embedding of step i."""
        return self.null_embeddings[i if len(self.null_embeddings) > 1 else 0]

    def save(self, path: str | Path, replace: bool = True) -> Path:
        """Tensors in safetensors, the rest as JSON in its header with the tensors' checksum; written
        atomically (`replace`: as in `atomic_path`)."""
        path = Path(path)
        meta = {k: getattr(self, k) for k in FIELDS if k != "cost"}
        meta["cost"] = asdict(self.cost)
        meta["model_family"] = self.model_family
        tensors = {
            "pivots": _stored(self.pivots),
            "null_embeddings": self.null_embeddings.float().clone(memory_format=torch.contiguous_format),
            "prompt_embedding": self.prompt_embedding.float().clone(memory_format=torch.contiguous_format),
            "image": torch.from_numpy(np.array(self.image, dtype=np.uint8)),
            **{k: _stored(v) for k, v in self.extras.items()},
        }
        header = {"format": FORMAT, "inversion": json.dumps(meta), "sha256": checksum(tensors)}
        with atomic_path(path, replace) as tmp:
            save_file(tensors, str(tmp), metadata=header)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Inversion":
        """The inversion saved at `path`, checked: its fields, its tensors' shapes, its checksum."""
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
        meta = _metadata(path, header)
        _check_tensors(path, tensors, meta["steps"], meta["method"])
        _check_checksum(path, header.get("sha256"), tensors)
        return cls(**meta, pivots=tensors["pivots"], null_embeddings=tensors["null_embeddings"],
                   prompt_embedding=tensors["prompt_embedding"], image=tensors["image"].numpy(),
                   extras={k: tensors[k] for k in EXTRAS if k in tensors})

    def check_compatible(self, model_fingerprint: str | Sequence[str], model_id: str, steps: int | None = None, *,
                         family: str | None = None) -> None:
        """Refuse to apply this inversion to another model family, another model or another number of steps.
        `model_fingerprint`: the loaded model's, or a sequence of those it accepts (`Editor.fingerprints`)."""
        accepted = (model_fingerprint,) if isinstance(model_fingerprint, str) else tuple(model_fingerprint)
        if family is not None and family != self.model_family:
            raise InputError(
                f"this inversion was made with the {FAMILIES[self.model_family]} model ({self.model_id!r}), but the "
                f"loaded {model_id!r} is {FAMILIES.get(family, family)}: the two families' latents and text "
                f"embeddings do not fit each other. Load {self.model_id!r} (redraft --model ...) or invert the "
                f"image again with this model.")
        if self.model_fingerprint not in accepted:
            raise InputError(
                f"this inversion was made with model {self.model_id!r}, not the loaded {model_id!r}: "
                f"its latents and embeddings mean nothing to another model. Load {self.model_id!r} "
                f"(redraft --model ...) or invert the image again with this model.")
        if steps is not None and steps != self.steps:
            raise InputError(
                f"this inversion has {self.steps} steps; it cannot be replayed with {steps}. "
                f"Leave steps unset, or invert again with steps={steps}.")


def _stored(t: torch.Tensor) -> torch.Tensor:
    """A tensor as saved: float64 kept (EDICT's sequences), any other float as float32, contiguous."""
    return (t if t.dtype == torch.float64 else t.float()).clone(memory_format=torch.contiguous_format)


def checksum(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of the saved tensors, in the order of TENSORS then the others by name (so a file with
    no extra tensor has the checksum it had before EXTRAS): each one's name, dtype, shape and bytes."""
    h = hashlib.sha256()
    for name in (*TENSORS, *sorted(set(tensors) - set(TENSORS))):
        t = tensors[name].contiguous()
        h.update(f"{name} {t.dtype} {list(t.shape)}\n".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def is_inversion_file(path: str | Path) -> bool:
    """Whether `path` is a saved inversion, from its content (any suffix): the format tag in the
    safetensors header (8 bytes of header length, then JSON), read without loading any tensor."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100_000_000:  # safetensors' own header limit
                return False
            header = json.loads(f.read(n))
        return header.get("__metadata__", {}).get("format") == FORMAT
    except (OSError, struct.error, ValueError, AttributeError):
        return False


def _metadata(path: Path, header: dict) -> dict:
    """The inversion's fields from the file's header, checked to be all there and of the right kinds."""
    forged = f"{path} is not an inversion that `redraft invert` wrote"
    if "inversion" not in header:
        raise InputError(f"{forged}: its header has no inversion metadata ({', '.join(FIELDS)}). "
                         f"Invert the image again.")
    try:
        meta = json.loads(header["inversion"])
    except ValueError:
        raise InputError(f"{forged}: its metadata is not JSON. Invert the image again.") from None
    if not isinstance(meta, dict):
        raise InputError(f"{forged}: its metadata is not a JSON object. Invert the image again.")
    missing = [k for k in FIELDS if k not in meta]
    if missing:
        raise InputError(f"{forged}: its metadata has no {', '.join(missing)}. Invert the image again.")
    family = meta.get("model_family", "sd")
    if family not in FAMILIES:
        raise InputError(f"{forged}: its model_family is {family!r}, not one of {', '.join(FAMILIES)}.")
    meta = {k: meta[k] for k in FIELDS}  # fields a later version adds are left out
    meta["model_family"] = family
    if meta["method"] not in METHODS:
        raise InputError(f"{forged}: its method is {meta['method']!r}, not one of {', '.join(METHODS)}.")
    for name in ("prompt", "model_id", "model_fingerprint"):
        if not isinstance(meta[name], str):
            raise InputError(f"{forged}: its {name} is {meta[name]!r}, not text. Invert the image again.")
    meta["steps"] = whole(f"{path}: steps", meta["steps"], fix="invert the image again")
    meta["guidance_scale"] = finite(f"{path}: guidance_scale", meta["guidance_scale"], minimum=0,
                                    fix="invert the image again")
    if not isinstance(meta["options"], dict):
        raise InputError(f"{forged}: its options are {meta['options']!r}, not a JSON object. Invert the image again.")
    try:
        meta["cost"] = Cost(**meta["cost"])
    except TypeError:
        raise InputError(f"{forged}: its cost is {meta['cost']!r}, not {asdict(Cost())}. Invert the image again.") from None
    return meta


def _check_tensors(path: Path, tensors: dict[str, torch.Tensor], steps: int, method: str = "") -> None:
    """Refuse tensors that are missing, or whose shapes do not fit `steps` and one another."""
    missing = [k for k in TENSORS if k not in tensors]
    if missing:
        raise InputError(f"{path} is not an inversion that `redraft invert` wrote: it has no "
                         f"{', '.join(missing)} tensor. Invert the image again.")
    needed = [k for k in NEEDS.get(method, ()) if k not in tensors]
    if needed:
        raise InputError(f"{path}: a {method} inversion needs its {', '.join(needed)} tensor, which the file "
                         f"lacks; it was changed or damaged. Invert the image again.")
    pivots, nulls, prompt, image = (tensors[k] for k in TENSORS)
    length, width = prompt.shape if prompt.ndim == 2 else (None, None)
    expected = {
        "pivots": (pivots.ndim == 4 and len(pivots) == steps + 1, f"[{steps + 1}, C, H, W]"),
        "prompt_embedding": (prompt.ndim == 2, "[L, D]"),
        "null_embeddings": (nulls.ndim == 3 and len(nulls) in (steps, 1) and tuple(nulls.shape[1:]) == (length, width),
                            f"[{steps} or 1, {length}, {width}] (as its prompt_embedding [L, D])"),
        "image": (image.ndim == 3 and image.shape[-1] == 3 and image.dtype == torch.uint8, "uint8 [H, W, 3]"),
    }
    hw = tuple(pivots.shape[1:])
    for name, length in (("noise_maps", steps), ("pivots_y", steps + 1)):
        if name in tensors:
            t = tensors[name]
            expected[name] = (t.ndim == 4 and len(t) == length and tuple(t.shape[1:]) == hw,
                              f"[{length}, {', '.join(map(str, hw))}] (as its pivots)")
    for name, (ok, shape) in expected.items():
        if not ok:
            raise InputError(f"{path}: its {name} is {str(tensors[name].dtype).removeprefix('torch.')} "
                             f"{list(tensors[name].shape)}, but an inversion of {steps} steps has {shape}; "
                             f"the file was changed or damaged. Invert the image again.")


def _check_checksum(path: Path, saved: str | None, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse tensors changed since they were saved; files from before checksums load with a warning."""
    if saved is None:
        warnings.warn(f"{path} has no checksum (saved by an older redraft), so changes to its tensors "
                      f"cannot be detected; save it again to add one.", stacklevel=3)
    elif saved != checksum(tensors):
        raise InputError(f"{path}: its tensors were changed since it was saved (their checksum does not "
                         f"match). Invert the image again, or restore the file from where it came from.")
