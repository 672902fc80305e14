"""Image backbones for prompt prediction (Reverse Stable Diffusion, Croitoru et al. 2024, section
"backbones"): an image -> a feature vector [B, F] that the joint heads read.

- `TransformersBackbone`, black-box: any transformers image model (ViT, Swin, ConvNeXt, ResNet, the
  vision tower of CLIP or SigLIP, ...), pretrained (a hub id or a folder) or built from a config and
  trained from scratch (`PRESETS` are small ones for the shapes world).
- `UNetEncoder`, white-box: the diffusion model's own U-Net encoder (conv_in, time embedding, input
  and middle blocks) run on VAE latents at a low timestep with a text context (the empty prompt, or
  a caption); each level's output is average-pooled and the levels are concatenated.

Both read pixels in [0, 1], [B, 3, S, S] at their `image_size` (`to_pixels` makes them, in torch),
and normalise them their own way. `spec()` is what `config.json` records to rebuild the backbone;
`save_files(folder)` writes the configs it needs (weights go in the describer's one safetensors file).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..errors import InputError

# Small from-scratch backbones (transformers configs), sized for 64 x 64 shapes scenes on a CPU.
PRESETS: dict[str, dict] = {
    "resnet-tiny": {"model_type": "resnet", "embedding_size": 16, "hidden_sizes": [16, 32, 64, 96],
                    "depths": [1, 1, 1, 1], "layer_type": "basic"},
    "vit-tiny": {"model_type": "vit", "patch_size": 8, "hidden_size": 96, "num_hidden_layers": 4,
                 "num_attention_heads": 4, "intermediate_size": 192},
}
# Models whose checkpoints hold a text tower too: only the vision tower is built and loaded.
VISION_TOWERS = {"clip": "CLIPVisionModel", "siglip": "SiglipVisionModel"}


def to_pixels(images: list[Image.Image], size: int) -> torch.Tensor:
    """RGB images -> [B, 3, size, size] floats in [0, 1]: centre crop to a square, then an
    antialiased bicubic resize (torch only; the processors' resize-then-crop, on a square crop)."""
    out = []
    for image in images:
        x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
        h, w = x.shape[1:]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        x = x[:, top:top + side, left:left + side].float().div(255)
        if side != size:
            x = F.interpolate(x[None], size=(size, size), mode="bicubic", antialias=True, align_corners=False)[0]
        out.append(x.clamp(0, 1))
    return torch.stack(out)


# --- black box: transformers image models ---------------------------------------------------------

class TransformersBackbone(nn.Module):
    """A transformers image model; features = its pooled output (`pooler_output`, flattened), or the
    mean of its last hidden state over tokens / positions when it has no pooler."""

    def __init__(self, model: nn.Module, spec: dict, feature_dim: int | None = None):
        super().__init__()
        self.model = model
        self.spec_ = dict(spec)
        self.image_size = int(spec["image_size"])
        self.register_buffer("mean", torch.tensor(spec["image_mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec["image_std"]).view(1, 3, 1, 1), persistent=False)
        self.feature_dim = feature_dim if feature_dim is not None else self._probe_dim()

    def forward(self, pixels: torch.Tensor, captions: list[str] | None = None) -> torch.Tensor:
        out = self.model(pixel_values=(pixels - self.mean) / self.std)
        pooled = getattr(out, "pooler_output", None)
        if pooled is not None:
            return pooled.flatten(1)
        hidden = out.last_hidden_state
        return hidden.mean(dim=(2, 3)) if hidden.ndim == 4 else hidden.mean(dim=1)

    @torch.no_grad()
    def _probe_dim(self) -> int:
        was_training = self.training
        self.eval()
        dim = self(torch.zeros(1, 3, self.image_size, self.image_size)).shape[1]
        self.train(was_training)
        return int(dim)

    def spec(self) -> dict:
        return {**self.spec_, "feature_dim": self.feature_dim}

    def save_files(self, folder: Path) -> None:
        self.model.config.save_pretrained(folder / "backbone")

    @classmethod
    def create(cls, source: str, image_size: int | None = None) -> TransformersBackbone:
        """A preset name (`PRESETS`, from scratch), "config:PATH" (a transformers config.json, from
        scratch), or a pretrained model: a folder or hub id with safetensors weights."""
        import transformers

        if source in PRESETS or source.startswith("config:"):
            if source in PRESETS:
                settings = dict(PRESETS[source])
                config = transformers.AutoConfig.for_model(settings.pop("model_type"), **settings)
            else:
                path = Path(source.removeprefix("config:"))
                if not path.is_file():
                    raise InputError(f"{path}: no such config file; give config:PATH/TO/config.json")
                config = transformers.AutoConfig.from_pretrained(path)
            tower = VISION_TOWERS.get(config.model_type)
            if tower is not None:
                config = config.vision_config
            size = image_size or getattr(config, "image_size", None) or 224
            if hasattr(config, "image_size"):
                config.image_size = size  # position embeddings for this size
            torch_model = getattr(transformers, tower)(config) if tower else transformers.AutoModel.from_config(config)
            spec = {"kind": "transformers", "source": source, "vision_class": tower, "image_size": size,
                    "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
            return cls(torch_model, spec)
        return cls._pretrained(source, image_size)

    @classmethod
    def _pretrained(cls, source: str, image_size: int | None) -> TransformersBackbone:
        import transformers

        try:
            config = transformers.AutoConfig.from_pretrained(source)
        except (OSError, ValueError) as e:
            raise InputError(f"{source} is not a preset ({', '.join(PRESETS)}), config:PATH, or a transformers "
                             f"model folder or hub id: {e}") from None
        tower = VISION_TOWERS.get(config.model_type)
        model_class = getattr(transformers, tower) if tower else transformers.AutoModel
        try:
            torch_model = model_class.from_pretrained(source, use_safetensors=True)
        except OSError as e:
            raise InputError(f"could not load {source} with safetensors weights ({e}); redraft never unpickles "
                             ".bin files: convert them to safetensors first") from None
        mean, std, processor_size = _processor_settings(source)
        native = getattr(torch_model.config, "image_size", None)
        if image_size is not None and native is not None and image_size != native:
            raise InputError(f"{source} reads {native} x {native} images (its position embeddings); "
                             "leave the image size at its default")
        size = image_size or native or processor_size or 224
        spec = {"kind": "transformers", "source": source, "vision_class": tower, "image_size": int(size),
                "image_mean": mean, "image_std": std}
        return cls(torch_model, spec)

    @classmethod
    def rebuild(cls, folder: Path, spec: dict) -> TransformersBackbone:
        """The architecture saved by `save_files`, with uninitialised (meta) weights to be loaded."""
        import transformers
        from accelerate import init_empty_weights

        config_folder = folder / "backbone"
        if not (config_folder / "config.json").is_file():
            raise InputError(f"{folder} lacks backbone/config.json: the describer folder is incomplete; "
                             "save it again with Describer.save or retrain it")
        config = transformers.AutoConfig.from_pretrained(config_folder)
        with init_empty_weights():
            if spec.get("vision_class"):
                torch_model = getattr(transformers, spec["vision_class"])(config)
            else:
                torch_model = transformers.AutoModel.from_config(config)
        return cls(torch_model, spec, feature_dim=spec["feature_dim"])


def _processor_settings(source: str) -> tuple[list[float], list[float], int | None]:
    """(mean, std, size) from the model's image processor config, or the 0.5 / 0.5 defaults."""
    from transformers.utils import cached_file

    try:
        path = cached_file(source, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
    except OSError:
        path = None
    settings = json.loads(Path(path).read_text()) if path else {}
    size = settings.get("crop_size") or settings.get("size")
    if isinstance(size, dict):
        size = size.get("height") or size.get("shortest_edge")
    mean = settings.get("image_mean", [0.5] * 3)
    std = settings.get("image_std", [0.5] * 3)
    return [float(m) for m in mean], [float(s) for s in std], size


# --- white box: the diffusion model's U-Net encoder -----------------------------------------------

class UNetEncoder(nn.Module):
    """The U-Net's encoder half as a feature extractor (the paper's white-box backbone).

    image in [0, 1] -> VAE posterior mean x scaling factor = z_0 -> z_t = sqrt(alpha_bar_t) z_0 (the
    mean of q(z_t | z_0): no noise is added, so features are deterministic) -> conv_in -> each input
    block (ResNets, cross-attention to the context, downsampling) -> the middle block. Every
    block's output is average-pooled over space; the concatenation is the feature vector.

    The module names match `UNet2DConditionModel`'s (conv_in, time_proj, time_embedding,
    down_blocks, mid_block), so a fine-tuned encoder can be put back into the diffusion model.
    """

    def __init__(self, unet, vae, *, timestep: int, alpha_bar: float, context: torch.Tensor | None,
                 text_encoder=None, tokenizer=None, spec_extra: dict | None = None):
        super().__init__()
        config = unet.config
        if config.class_embed_type is not None or config.addition_embed_type is not None:
            raise InputError("this U-Net has class or added embeddings (e.g. SDXL's); the U-Net backbone "
                             "supports SD 1.x / 2.x U-Nets only")
        self.conv_in, self.time_proj, self.time_embedding = unet.conv_in, unet.time_proj, unet.time_embedding
        self.down_blocks, self.mid_block = unet.down_blocks, unet.mid_block
        self.vae_encoder = vae.encoder
        self.quant_conv = vae.quant_conv if vae.quant_conv is not None else nn.Identity()
        self.latent_channels = vae.config.latent_channels
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(vae.config.shift_factor or 0.0)
        self.timestep, self.alpha_bar = int(timestep), float(alpha_bar)
        self.unet_config, self.vae_config = dict(config), dict(vae.config)
        self.image_size = int(config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1))
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        if (context is None) == (text_encoder is None):
            raise InputError("the U-Net backbone needs either a fixed context (the empty prompt's embedding) "
                             "or a text encoder to encode captions, not both")
        if context is not None:
            self.register_buffer("context", context.detach().float().clone())
        else:
            self.context = None
        self.spec_extra = dict(spec_extra or {})
        levels = list(config.block_out_channels) + [config.block_out_channels[-1]]
        self.feature_dim = int(sum(levels))

    @property
    def context_kind(self) -> str:
        return "empty" if self.context is not None else "caption"

    def latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """z_0: the VAE posterior mean, scaled as in diffusion training."""
        moments = self.quant_conv(self.vae_encoder(pixels * 2 - 1))
        mean = moments[:, :self.latent_channels]
        return (mean - self.shift_factor) * self.scaling_factor

    def contexts(self, batch: int, captions: list[str] | None) -> torch.Tensor:
        if self.context is not None:
            return self.context.expand(batch, -1, -1)
        if captions is None or len(captions) != batch:
            raise InputError("this describer's U-Net reads a caption per image: pass captions=[...] "
                             "(one per image), e.g. from a captioner")
        from ..core.prompts import encode_prompts

        return encode_prompts(self.tokenizer, self.text_encoder, list(captions)).to(self.conv_in.weight.device)

    def forward(self, pixels: torch.Tensor, captions: list[str] | None = None) -> torch.Tensor:
        context = self.contexts(len(pixels), captions)
        z = self.latents(pixels) * self.alpha_bar ** 0.5
        t = torch.full((len(z),), self.timestep, device=z.device, dtype=torch.long)
        emb = self.time_embedding(self.time_proj(t).to(z.dtype))
        h = self.conv_in(z)
        pooled = []
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, _ = block(hidden_states=h, temb=emb, encoder_hidden_states=context)
            else:
                h, _ = block(hidden_states=h, temb=emb)
            pooled.append(h.mean(dim=(2, 3)))
        h = self.mid_block(h, emb, encoder_hidden_states=context)
        pooled.append(h.mean(dim=(2, 3)))
        return torch.cat(pooled, dim=1)

    def spec(self) -> dict:
        spec = {"kind": "unet", "timestep": self.timestep, "alpha_bar": self.alpha_bar,
                "context": self.context_kind, "image_size": self.image_size, "feature_dim": self.feature_dim,
                **self.spec_extra}
        if self.context is not None:
            spec["context_shape"] = list(self.context.shape)
        return spec

    def save_files(self, folder: Path) -> None:
        (folder / "unet").mkdir(parents=True, exist_ok=True)
        (folder / "vae").mkdir(parents=True, exist_ok=True)
        (folder / "unet" / "config.json").write_text(json.dumps(self.unet_config, indent=1, default=list))
        (folder / "vae" / "config.json").write_text(json.dumps(self.vae_config, indent=1, default=list))
        if self.text_encoder is not None:
            self.text_encoder.config.save_pretrained(folder / "text_encoder")
            self.tokenizer.save_pretrained(folder / "tokenizer")

    @classmethod
    def from_pipeline(cls, pipeline, *, timestep: int = 50, context: str = "empty",
                      source: str | None = None) -> UNetEncoder:
        """The encoder of a loaded StableDiffusionPipeline, copied (training it leaves the pipeline as it is).

        context "empty": the empty prompt's embedding, computed once and kept as a buffer;
        "caption": the pipeline's text encoder and tokenizer encode a caption per image.
        """
        import copy

        from ..core.prompts import encode_prompts

        n_train = pipeline.scheduler.config.num_train_timesteps
        if not isinstance(timestep, int) or not 0 <= timestep < n_train:
            raise InputError(f"timestep must be a whole number from 0 to {n_train - 1}, not {timestep!r}")
        if context not in ("empty", "caption"):
            raise InputError(f"context must be 'empty' or 'caption', not {context!r}")
        alpha_bar = float(pipeline.scheduler.alphas_cumprod[timestep])
        unet, vae = pipeline.unet, pipeline.vae
        parts = nn.Module()
        for name in ("conv_in", "time_proj", "time_embedding", "down_blocks", "mid_block"):
            setattr(parts, name, getattr(unet, name))
        parts = copy.deepcopy(parts).float().requires_grad_(True)
        parts.config = unet.config
        vae_parts = nn.Module()
        vae_parts.encoder, vae_parts.quant_conv = vae.encoder, getattr(vae, "quant_conv", None)
        vae_parts = copy.deepcopy(vae_parts).float()
        vae_parts.config = vae.config
        if context == "empty":
            empty = encode_prompts(pipeline.tokenizer, pipeline.text_encoder, [""]).cpu()
            return cls(parts, vae_parts, timestep=timestep, alpha_bar=alpha_bar, context=empty,
                       spec_extra={"source": source})
        text_encoder = copy.deepcopy(pipeline.text_encoder).float().cpu().requires_grad_(False)
        return cls(parts, vae_parts, timestep=timestep, alpha_bar=alpha_bar, context=None,
                   text_encoder=text_encoder, tokenizer=pipeline.tokenizer, spec_extra={"source": source})

    @classmethod
    def rebuild(cls, folder: Path, spec: dict) -> UNetEncoder:
        """The architecture saved by `save_files`, with uninitialised (meta) weights to be loaded."""
        from accelerate import init_empty_weights
        from diffusers import AutoencoderKL, UNet2DConditionModel

        for sub in ("unet", "vae"):
            if not (folder / sub / "config.json").is_file():
                raise InputError(f"{folder} lacks {sub}/config.json: the describer folder is incomplete; "
                                 "save it again with Describer.save or retrain it")
        unet_config = json.loads((folder / "unet" / "config.json").read_text())
        vae_config = json.loads((folder / "vae" / "config.json").read_text())
        with init_empty_weights():
            unet = UNet2DConditionModel.from_config(unet_config)
            vae = AutoencoderKL.from_config(vae_config)
            context = torch.empty(spec["context_shape"]) if spec["context"] == "empty" else None
        text_encoder = tokenizer = None
        if spec["context"] == "caption":
            import transformers

            config = transformers.AutoConfig.from_pretrained(folder / "text_encoder")
            with init_empty_weights():
                text_encoder = getattr(transformers, config.architectures[0])(config)
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder / "tokenizer")
        extra = {k: v for k, v in spec.items() if k not in ("kind", "timestep", "alpha_bar", "context",
                                                             "image_size", "feature_dim", "context_shape")}
        return cls(unet, vae, timestep=spec["timestep"], alpha_bar=spec["alpha_bar"], context=context,
                   text_encoder=text_encoder, tokenizer=tokenizer, spec_extra=extra)
