"""Loading a Stable Diffusion pipeline (local folder, hub id, or the built-in shapes model), safetensors only."""

from __future__ import annotations

import hashlib
import json
import os
from importlib import resources
from pathlib import Path

import torch

from ..errors import InputError

BUILTIN = "builtin:shapes"
DEFAULT_GUIDANCE = 7.5  # SD 1.x / 2.x's classifier-free guidance scale (and P2P's, null-text's)
SETTINGS = "redraft.json"  # optional, in a model folder: {"guidance_scale": ...}, the model's own default


def builtin_path() -> Path:
    """The built-in shapes model, shipped as package data."""
    return Path(str(resources.files("redraft") / "assets" / "shapes-model"))


def recommended_guidance(model: str | Path | None) -> float:
    """The guidance scale a model is used at unless told otherwise: `guidance_scale` of the folder's
    redraft.json (the built-in shapes model's was chosen on validation prompts: docs/shapes-model.md),
    else SD's 7.5."""
    path = Path(str(builtin_path() if model is None else model)) / SETTINGS
    if not path.is_file():
        return DEFAULT_GUIDANCE
    try:
        value = json.loads(path.read_text()).get("guidance_scale", DEFAULT_GUIDANCE)
    except (ValueError, AttributeError):
        raise InputError(f"{path} is not a JSON object such as {{\"guidance_scale\": 7.5}}; fix or delete it.") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise InputError(f"{path}: guidance_scale must be a number of 0 or more; got {value!r}.")
    return float(value)


def compatible_fingerprints(model: str | Path | None) -> tuple[str, ...]:
    """Fingerprints of earlier versions of a model whose inversions stay valid for it: the
    "compatible_fingerprints" of its folder's redraft.json. The built-in model lists the version before its
    decoder was tuned alone (the encoder, the UNet and the text encoder are byte for byte the same, so the
    latents, trajectories and embeddings of an inversion mean the same; only the pixels drawn from them change)."""
    path = Path(str(builtin_path() if model is None else model)) / SETTINGS
    if not path.is_file():
        return ()
    try:
        value = json.loads(path.read_text()).get("compatible_fingerprints", [])
    except (ValueError, AttributeError):
        raise InputError(f"{path} is not a JSON object; fix or delete it.") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f"{path}: compatible_fingerprints must be a list of strings; got {value!r}.")
    return tuple(value)


def editing_recipe(model: str | Path | None):
    """How a model edits when no control is passed (`p2p.recipe.Recipe`): the "editing" entry of the
    folder's redraft.json (the built-in shapes model ships one), else Prompt-to-Prompt's defaults."""
    from ..p2p.recipe import REFERENCE, Recipe

    path = Path(str(builtin_path() if model is None else model)) / SETTINGS
    if not path.is_file():
        return REFERENCE
    try:
        data = json.loads(path.read_text())
    except ValueError:
        raise InputError(f"{path} is not JSON; fix or delete it.") from None
    return Recipe.from_json(data["editing"], f"{path}'s \"editing\"") if "editing" in data else REFERENCE


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def folder_or_hub_id(source: str | Path, missing: str = "folder", hint: str = "") -> Path | str:
    """Where weights load from: an existing local file or folder (as a Path, `~` expanded), or else a hub
    id of the form owner/name (as the str, for the hub to fetch: one slash, not starting with ".", "/"
    or "~"). Anything else is an InputError: "<source>: no such <missing>, and not a hub id ...<hint>"."""
    path = Path(str(source)).expanduser()
    if path.exists():
        return path
    text = str(source)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        return text
    raise InputError(f"{source}: no such {missing}, and not a hub id of the form owner/name{hint}")


def check_folder(path: Path) -> None:
    """A diffusers pipeline folder: model_index.json, and safetensors weights for every model in it."""
    if not (path / "model_index.json").is_file():
        raise InputError(
            f"{path} is not a diffusers pipeline folder (no model_index.json). Give a folder saved by "
            f"`pipeline.save_pretrained(...)`, a hub id such as runwayml/stable-diffusion-v1-5, or convert "
            f"a single-file checkpoint with diffusers' `StableDiffusionPipeline.from_single_file(...)`.")
    for sub in ("unet", "vae", "text_encoder", "text_encoder_2"):
        folder = path / sub
        if folder.is_dir() and not any(folder.glob("*.safetensors")):
            found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
            raise InputError(
                f"{folder} has no .safetensors weights (found: {found}). redraft never unpickles weight "
                f"files (.bin, .ckpt, .pt can run code when loaded): convert them to safetensors first.")


def _hub_errors() -> tuple[type[BaseException], ...]:
    """What from_pretrained raises for a hub id it cannot fetch (hub errors, HTTP errors, no network)."""
    from huggingface_hub.errors import EntryNotFoundError

    errors: tuple[type[BaseException], ...] = (OSError, EntryNotFoundError)
    try:
        import httpx

        errors += (httpx.HTTPError,)
    except ImportError:
        pass
    return errors


def _unreachable(hub_id: str, error: BaseException) -> str:
    """The message for a hub id that could not be fetched: what it is not, and the three ways out."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    why = "HF_HUB_OFFLINE is set and it is not in the local hub cache" if offline else \
        f"it could not be fetched from the hub ({type(error).__name__}: {str(error).splitlines()[0][:200]})"
    return (f"{hub_id} is neither a local folder nor reachable on the hub: {why}. Give the path of a local "
            f"diffusers pipeline folder, or allow network access to the hub, or fill the hub cache once "
            f"(with network) and then set HF_HUB_OFFLINE=1.")


def load_pipeline(model: str | Path | None, device: torch.device, dtype: torch.dtype, offload: str | None = None):
    """A StableDiffusionPipeline (or StableDiffusionXLPipeline, recognised from its model_index.json:
    `io.families`) with DDIM configured from the model's own schedule and prediction type.

    The VAE stays in fp32 unless its config sets `force_upcast` false (fp16 SD and SDXL VAEs overflow;
    diffusers upcasts them the same way); the UNet and text encoders use `dtype`.
    No model weight needs a gradient: they are all frozen. `offload`: `io.offload.MODES` (the weights
    stay in CPU memory and go to `device` when they are used).
    """
    from .offload import check_mode, enable_offload

    check_mode(offload)
    from diffusers import DDIMScheduler

    from .families import pipeline_class

    hub_errors = _hub_errors()
    source = builtin_path() if model is None else model
    if Path(str(source)).suffix in (".ckpt", ".safetensors", ".bin", ".pt") and Path(str(source)).is_file():
        raise InputError(
            f"{source} is a single-file checkpoint; redraft loads diffusers pipeline folders. Convert it once with "
            f"StableDiffusionPipeline.from_single_file(...).save_pretrained(folder).")
    where = folder_or_hub_id(source, hint=".")
    if isinstance(where, Path):
        check_folder(where)
    try:
        cls, extra = pipeline_class(where)
        pipe = cls.from_pretrained(str(where), dtype=dtype, use_safetensors=True, **extra)
    except hub_errors as e:
        if isinstance(where, Path):
            raise InputError(f"could not load {source}: {e}") from None
        raise InputError(_unreachable(where, e)) from None
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    if pipe.vae.dtype != torch.float32 and getattr(pipe.vae.config, "force_upcast", True):
        pipe.vae.to(torch.float32)
    for m in (pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        if m is None:
            continue
        m.requires_grad_(False)
        m.eval()
    if offload is None:
        pipe.to(device)
    else:
        enable_offload(pipe, offload, device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def fingerprint(pipe) -> str:
    """A short hash identifying a model: its component configs and a few weight statistics.

    Stable across dtypes (statistics are rounded), different for another checkpoint of the same architecture.
    """
    h = hashlib.sha256()
    second = getattr(pipe, "text_encoder_2", None)  # SDXL's: part of the model, absent from SD's hash
    for name in ("unet", "vae", "text_encoder", "scheduler") + (("text_encoder_2",) if second is not None else ()):
        config = getattr(pipe, name).config
        config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        keep = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type")
        config = {k: v for k, v in config.items() if not k.startswith("_") and k not in ("torch_dtype", "dtype")
                  and (name != "scheduler" or k in keep)}
        h.update(json.dumps(config, sort_keys=True, default=str).encode())
    from .offload import stored_weight

    probes = [pipe.unet.conv_in, pipe.unet.conv_out, pipe.vae.decoder.conv_out, pipe.text_encoder.get_input_embeddings()]
    if second is not None:
        probes.append(second.get_input_embeddings())
    for module in probes:
        w = stored_weight(module)  # sequential offload: the CPU copy its hook holds
        if w.is_meta:  # a component not loaded (`bench.scale` frees the text encoders after encoding)
            continue
        w = w.detach().double()
        h.update(f"{w.sum().item():.3e} {w.abs().sum().item():.3e}".encode())
    return h.hexdigest()[:16]
