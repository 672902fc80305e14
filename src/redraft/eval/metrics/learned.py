"""The learned metrics, which need weights redraft does not ship: CLIP score, DINO structure distance,
LPIPS, and `optional_scorer`, which reports missing weights instead of failing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...errors import InputError
from ...io.loading import folder_or_hub_id
from .pixels import _image, _mask, _pair

# LPIPS, CLIP score and DINO structure distance need network weights that redraft does not ship. Each
# scorer loads them from a local folder (or file) or a hub id, safetensors only, and `optional_scorer`
# turns "no weights" into a reason to report ("unavailable: ...") instead of a crash.


def _weights_dir(source: str | Path, what: str) -> Path | str:
    """A local path, or a hub id (owner/name) for transformers to fetch (`folder_or_hub_id`); else a clear error."""
    return folder_or_hub_id(source, missing="file or folder", hint=f"; give the {what} weights (a local folder "
                            "saved with save_pretrained, or a hub id).")


def _pooled(out) -> torch.Tensor:
    """get_image_features / get_text_features: a tensor (transformers 4) or an output with pooler_output (5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _rgb(a: np.ndarray) -> Image.Image:
    return Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).convert("RGB")


class ClipScore:
    """CLIP score of an image and a text: 100 * max(cos(E_image, E_text), 0).

    Hessel et al. 2021 ("CLIPScore") with w = 100 and no rescaling, as torchmetrics' CLIPScore computes it and
    PIE-Bench reports it ("CLIP similarity", ViT-L/14: openai/clip-vit-large-patch14). With `mask`
    ([H, W], True = keep), the image is multiplied by the mask first: PIE-Bench's "edited" CLIP score
    of the edit region.
    """

    def __init__(self, model, processor):
        self.model, self.processor = model.eval(), processor

    @classmethod
    def load(cls, source: str | Path, device: str | torch.device = "cpu") -> "ClipScore":
        """A transformers CLIPModel and its processor from a folder or hub id (safetensors weights only)."""
        from transformers import AutoProcessor, CLIPModel

        where = str(_weights_dir(source, "CLIP"))
        model = CLIPModel.from_pretrained(where, use_safetensors=True).to(device)
        return cls(model, AutoProcessor.from_pretrained(where))

    @torch.no_grad()
    def __call__(self, image, text: str, mask=None) -> float:
        from ...core.prompts import check_prompt

        a = _image(image, "the image")
        if mask is not None:
            a = a * _mask(mask, a.shape)[..., None]
        check_prompt(self.processor.tokenizer, text, what="text to score")
        inputs = self.processor(text=[text], images=[_rgb(a)], return_tensors="pt", padding=True)
        device = self.model.device
        e_image = _pooled(self.model.get_image_features(pixel_values=inputs["pixel_values"].to(device)))
        e_text = _pooled(self.model.get_text_features(input_ids=inputs["input_ids"].to(device),
                                                      attention_mask=inputs["attention_mask"].to(device)))
        return 100 * max(F.cosine_similarity(e_image, e_text).item(), 0.0)

    @torch.no_grad()
    def image_similarity(self, a, b) -> float:
        """100 * cos(E_image(a), E_image(b)): how alike two images look to CLIP (100 for the same image)."""
        inputs = self.processor(images=[_rgb(_image(a, "the first image")), _rgb(_image(b, "the second image"))],
                                return_tensors="pt")
        e = _pooled(self.model.get_image_features(pixel_values=inputs["pixel_values"].to(self.model.device)))
        return 100 * F.cosine_similarity(e[:1], e[1:]).item()


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class StructureDistance:
    """DINO structure distance: the mean squared difference of two images' self-similarity of ViT keys.

    Tumanyan, Bar-Tal, Bagon, Dekel 2022 ("Splicing ViT Features for Semantic Appearance Transfer",
    Sec. 3, the structure loss): S(x)_ij = cos(k_i(x), k_j(x)) over all tokens (the CLS token
    included) of the keys of the deepest layer (all heads concatenated), and the distance is
    mean_ij (S(a)_ij - S(b)_ij)^2. PIE-Bench (DINO ViT-B/8, facebook/dino-vitb8) resizes the images'
    shorter side to 224 px (the longer to at most 480) and normalises with ImageNet's mean and std;
    its table shows the distance x 10^3. Works with transformers ViTModel and Dinov2Model.
    """

    def __init__(self, model, size: int = 224, max_size: int = 480, layer: int = -1):
        self.model, self.size, self.max_size = model.eval(), size, max_size
        keys = [m for name, m in model.named_modules() if name.split(".")[-1] in ("k_proj", "key")]
        if not keys:
            raise InputError(f"{type(model).__name__} has no attention key projections (k_proj / key); "
                             "give a ViT (e.g. facebook/dino-vitb8) or DINOv2 model.")
        self.key_layer = keys[layer]

    @classmethod
    def load(cls, source: str | Path, device: str | torch.device = "cpu", **options) -> "StructureDistance":
        """A ViT or DINOv2 model (transformers AutoModel) from a folder or hub id, safetensors only."""
        from transformers import AutoModel

        model = AutoModel.from_pretrained(str(_weights_dir(source, "DINO")), use_safetensors=True)
        return cls(model.to(device), **options)

    def pixels(self, image, pie_bench: bool = False) -> torch.Tensor:
        """[1, 3, h, w]: resized (shorter side `size`, bilinear, antialiased) and ImageNet-normalised.

        `pie_bench=True` feeds the 0..255 values to the normalisation as PIE-Bench's evaluation does
        (its calculate_structure_distance never divides by 255); the default scales to [0, 1] first.
        """
        a = _image(image, "the image")
        x = torch.from_numpy(np.array(_rgb(a), dtype=np.float32)).permute(2, 0, 1)[None]
        x = x if pie_bench else x / 255
        h, w = x.shape[-2:]
        scale = min(self.size / min(h, w), self.max_size / max(h, w))
        x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bilinear", antialias=True,
                          align_corners=False)
        mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return ((x - mean) / std).to(self.model.device)

    @torch.no_grad()
    def self_similarity(self, image, pie_bench: bool = False) -> torch.Tensor:
        """[T, T]: cosine similarity of every pair of key tokens of the chosen layer."""
        import inspect

        stored = []
        handle = self.key_layer.register_forward_hook(lambda module, inp, out: stored.append(out))
        kwargs = {"interpolate_pos_encoding": True} \
            if "interpolate_pos_encoding" in inspect.signature(self.model.forward).parameters else {}
        try:
            self.model(pixel_values=self.pixels(image, pie_bench), **kwargs)
        finally:
            handle.remove()
        k = F.normalize(stored[0][0].float(), dim=-1, eps=1e-8)  # [T, D]
        return k @ k.T

    def __call__(self, a, b, pie_bench: bool = False) -> float:
        sa, sb = self.self_similarity(a, pie_bench), self.self_similarity(b, pie_bench)
        if sa.shape != sb.shape:
            raise InputError(f"the two images give {sa.shape[0]} and {sb.shape[0]} tokens: compare images of the same size.")
        return float(F.mse_loss(sa, sb))


# LPIPS v0.1: each backbone (torchvision's layout of AlexNet / SqueezeNet 1.1 "features") with the
# indices after which its feature maps are read, and their channels.
LPIPS_NETS = {"alex": ((2, 5, 8, 10, 12), (64, 192, 384, 256, 256)),
              "squeeze": ((2, 5, 8, 10, 11, 12, 13), (64, 128, 256, 384, 384, 512, 512))}
LPIPS_SHIFT, LPIPS_SCALE = (-0.030, -0.088, -0.188), (0.458, 0.448, 0.450)


class _Fire(torch.nn.Module):
    """SqueezeNet's fire module (Iandola et al. 2016): a 1x1 squeeze, then 1x1 and 3x3 expands side by side."""

    def __init__(self, c_in: int, squeeze: int, expand: int):
        super().__init__()
        self.squeeze = torch.nn.Conv2d(c_in, squeeze, 1)
        self.expand1x1 = torch.nn.Conv2d(squeeze, expand, 1)
        self.expand3x3 = torch.nn.Conv2d(squeeze, expand, 3, padding=1)

    def forward(self, x):
        x = F.relu(self.squeeze(x))
        return torch.cat([F.relu(self.expand1x1(x)), F.relu(self.expand3x3(x))], 1)


def _lpips_backbone(net: str) -> torch.nn.Sequential:
    nn = torch.nn
    if net == "alex":
        return nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(),
            nn.MaxPool2d(3, 2), nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(), nn.Conv2d(384, 256, 3, padding=1),
            nn.ReLU(), nn.Conv2d(256, 256, 3, padding=1), nn.ReLU())
    pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, 2), nn.ReLU(), pool(), _Fire(64, 16, 64), _Fire(128, 16, 64), pool(),
        _Fire(128, 32, 128), _Fire(256, 32, 128), pool(), _Fire(256, 48, 192), _Fire(384, 48, 192),
        _Fire(384, 64, 256), _Fire(512, 64, 256))


class _Lin(torch.nn.Module):
    """LPIPS' per-channel weights of one layer: a 1x1 convolution to one channel, no bias."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = torch.nn.Sequential(torch.nn.Dropout(), torch.nn.Conv2d(channels, 1, 1, bias=False))


class Lpips(torch.nn.Module):
    """LPIPS v0.1 (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
    Metric", eq. 1): d(x, y) = sum_l mean_hw || w_l * (f_l(x) - f_l(y)) ||^2 with f_l the channel-unit-
    normalised features of layer l; images scaled to [-1, 1] and shifted/scaled by LPIPS' constants.

    Weights: one safetensors file whose keys are torchvision's backbone `features.*` (AlexNet, or
    SqueezeNet 1.1 as PIE-Bench uses) and LPIPS' `lin{l}.model.1.weight`; the backbone is found from the
    keys. Redraft never unpickles the original .pth files: convert them once to safetensors.
    With `mask`, each layer's distance map is averaged with the mask's share of each of its cells as
    weights (the clean masked way; the whole mask gives the plain LPIPS).
    """

    def __init__(self, net: str = "alex"):
        super().__init__()
        if net not in LPIPS_NETS:
            raise InputError(f"unknown LPIPS backbone {net!r}; choose one of {', '.join(LPIPS_NETS)}.")
        self.net = net
        self.features = _lpips_backbone(net)
        self.taps, channels = LPIPS_NETS[net]
        for k, c in enumerate(channels):
            self.add_module(f"lin{k}", _Lin(c))
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.eval()

    @classmethod
    def load(cls, source: str | Path, device: str | torch.device = "cpu") -> "Lpips":
        """From a .safetensors file, a folder holding one, or a hub id (its one .safetensors file)."""
        from safetensors.torch import load_file

        path = _weights_dir(source, "LPIPS")
        if isinstance(path, str):  # a hub id
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(path, allow_patterns=["*.safetensors"]))
        if path.is_dir():
            files = sorted(path.glob("*.safetensors"))
            if len(files) != 1:
                raise InputError(f"{path} holds {len(files)} .safetensors files; LPIPS needs exactly one "
                                 "(backbone features.* and lin*.model.1.weight), or give the file itself.")
            path = files[0]
        if path.suffix != ".safetensors":
            raise InputError(f"{path}: LPIPS weights load from .safetensors only (never from pickled .pth files); "
                             "convert them once to safetensors.")
        tensors = load_file(str(path))
        net = "squeeze" if "features.12.expand3x3.weight" in tensors else "alex"
        model = cls(net)
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        if missing or unexpected:
            raise InputError(f"{path} is not an LPIPS ({net}) weight file: missing {missing[:4]}, "
                             f"unexpected {unexpected[:4]}.")
        return model.to(device)

    def distance_maps(self, a, b) -> list[torch.Tensor]:
        """Per layer, the [h_l, w_l] map of || w_l * (f_l(a) - f_l(b)) ||^2."""
        a, b = _pair(a, b)
        if min(a.shape[:2]) < 32:
            raise InputError(f"LPIPS needs images of at least 32 px a side; got {a.shape[1]}x{a.shape[0]}.")
        x = torch.from_numpy(np.stack([np.array(_rgb(a)), np.array(_rgb(b))])).permute(0, 3, 1, 2).float()
        x = ((x / 127.5 - 1).to(self.shift.device) - self.shift) / self.scale
        maps, start = [], 0
        with torch.no_grad():
            for k, end in enumerate(self.taps):
                x = self.features[start:end](x)
                start = end
                f = x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                maps.append(getattr(self, f"lin{k}").model((f[:1] - f[1:]) ** 2)[0, 0])
        return maps

    def __call__(self, a, b, mask=None) -> float:
        maps = self.distance_maps(a, b)
        if mask is None:
            return float(sum(m.mean() for m in maps))
        m = torch.from_numpy(_mask(mask, _image(a, "the first image").shape).astype(np.float32))[None, None]
        total = 0.0
        for d in maps:
            w = F.adaptive_avg_pool2d(m, d.shape)[0, 0].to(d.device)
            if float(w.sum()) == 0:
                return math.nan
            total += float((w * d).sum() / w.sum())
        return total


SCORERS = {"clip": ClipScore, "dino": StructureDistance, "lpips": Lpips}


def optional_scorer(kind: str, source: str | Path | None, device: str | torch.device = "cpu"):
    """The scorer of `kind` ("clip", "dino", "lpips") loaded from `source`, or, when that is not possible,
    a string "unavailable: <why>" to report in results instead of a number."""
    if kind not in SCORERS:
        raise InputError(f"unknown learned metric {kind!r}; choose one of {', '.join(SCORERS)}.")
    if not source:
        return f"unavailable: no {kind} weights given"
    try:
        return SCORERS[kind].load(source, device)
    except Exception as e:  # any failure to load optional weights is reported, not raised
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"unavailable: {kind} weights {source}: {first}"
