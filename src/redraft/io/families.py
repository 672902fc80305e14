"""Which diffusers pipeline class a model folder or hub id is: SD 1.x / 2.x or SDXL (from model_index.json)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError

SD, SDXL = "StableDiffusionPipeline", "StableDiffusionXLPipeline"
NATIVE = {"sd15": 512, "sd21-v": 768, "sdxl": 1024}  # the families' native image sizes (px)


def model_index(where: Path | str) -> dict:
    """The pipeline's model_index.json: read from the folder, or fetched from the hub (one small file)."""
    if isinstance(where, Path):
        path = where / "model_index.json"
    else:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(where, "model_index.json"))
    try:
        return json.loads(Path(path).read_text())
    except ValueError:
        raise InputError(f"{path} is not JSON; it should be the model_index.json that save_pretrained writes.") from None


def pipeline_class(where: Path | str):
    """(pipeline class, from_pretrained's extra keywords) for SD 1.x / 2.x or SDXL base layouts; any
    other layout (an SDXL refiner, with one text encoder; inpainting; another model) is refused."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    index = model_index(where)
    name = index.get("_class_name", SD)
    if name == SDXL or "text_encoder_2" in index and index.get("text_encoder") not in (None, [None, None]):
        return StableDiffusionXLPipeline, {}
    if name in (SD, "StableDiffusionImg2ImgPipeline") or ("text_encoder" in index and "unet" in index
                                                           and "text_encoder_2" not in index):
        return StableDiffusionPipeline, dict(safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    raise InputError(f"{where} is a {name} (a {', '.join(sorted(k for k in index if not k.startswith('_')))} "
                     f"pipeline); redraft runs Stable Diffusion 1.x / 2.x and SDXL base pipelines "
                     f"(StableDiffusionPipeline, StableDiffusionXLPipeline layouts).")
