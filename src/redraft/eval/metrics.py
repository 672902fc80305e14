"""Image-quality metrics (PSNR, MSE, SSIM), whole-image or over a mask, PIE-Bench's background metrics, and
the learned ones that need weights (LPIPS, CLIP score, DINO structure distance; see the end of the module).

Images are uint8 arrays [H, W, 3] (also [H, W] or [H, W, C]; PIL images and torch tensors in that
layout are accepted), two of the same size. A mask is a [H, W] array of bools or 0/1, True = a pixel
to count. A metric over a mask that selects no pixel is nan (PIE-Bench skips such images too).

Two ways of scoring the unedited background of an edit, given the edit mask (1 = edited region):

- `background`: the clean way, metrics computed over the pixels outside the edit mask only.
- `pie_bench_background`: PIE-Bench's way (Ju et al. 2024, "PnP Inversion", evaluation/evaluate.py
  and matrics_calculator.py): both images are multiplied by (1 - edit mask) and the metrics are
  computed over the whole image, the zeroed edit region included. Its MSE is the clean MSE times the
  background's share of the image, so its PSNR is higher by 10 log10(H W / background pixels); its
  SSIM counts the zeroed region as perfectly similar and the windows across the mask's edge as the
  masks' own structure.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import InputError

K1, K2, L = 0.01, 0.03, 255.0
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5


def _image(x, name: str) -> np.ndarray:
    if isinstance(x, Image.Image):
        x = np.asarray(x)
    elif isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    else:
        x = np.asarray(x)
    if x.dtype != np.uint8:
        raise InputError(f"{name} must be a uint8 image (values 0..255); got {x.dtype}. "
                         "Convert it first, e.g. with redraft.image.to_uint8 or np.asarray(pil_image).")
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim != 3 or x.shape[0] == 0 or x.shape[1] == 0:
        raise InputError(f"{name} must be an image array [H, W, 3] (or [H, W]); got shape {x.shape}.")
    return x


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = _image(a, "the first image"), _image(b, "the second image")
    if a.shape != b.shape:
        raise InputError(f"the two images differ in size: {a.shape} vs {b.shape} (H, W, C); "
                         "compare images of the same size (resize or crop one of them first).")
    return a, b


def _mask(mask, shape: tuple[int, ...]) -> np.ndarray | None:
    if mask is None:
        return None
    m = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask)
    if m.shape != tuple(shape[:2]):
        raise InputError(f"the mask must be [H, W] = {tuple(shape[:2])}, the images' size; got shape {m.shape}.")
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            raise InputError("the mask must hold bools or 0/1 (1 = pixel to count); "
                             "binarise it first, e.g. mask > 127 for a 0..255 mask image.")
        m = m.astype(bool)
    return m


def _squared_error(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None) -> float:
    """Mean squared difference on the [0, 255] scale, over all channels of the counted pixels."""
    d = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    if mask is not None:
        if not mask.any():
            return math.nan
        d = d[mask]
    return float(d.mean())


def mse(a, b, mask=None) -> float:
    """Mean squared error on the [0, 1] scale: mean over pixels and channels of ((a - b) / 255)^2.

    With `mask` ([H, W], True = count), the mean is over the masked pixels only.
    """
    a, b = _pair(a, b)
    return _squared_error(a, b, _mask(mask, a.shape)) / L**2


def psnr(a, b, mask=None) -> float:
    """Peak signal-to-noise ratio in dB, 10 log10(255^2 / MSE) with the MSE on [0, 255] (inf if identical).

    With `mask` ([H, W], True = count), the MSE is over the masked pixels only (the clean masked way).
    """
    a, b = _pair(a, b)
    e = _squared_error(a, b, _mask(mask, a.shape))
    if math.isnan(e):
        return math.nan
    return math.inf if e == 0 else 10 * math.log10(L**2 / e)


def _gaussian(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_window(height: int, width: int) -> int:
    """The side of the SSIM window for an image of this size: 11, or the image's smaller side if that is smaller (made odd)."""
    w = min(SSIM_WINDOW, height, width)
    return w if w % 2 else w - 1


def ssim_map(a, b) -> np.ndarray:
    """The SSIM map [H - w + 1, W - w + 1, C] of two images, per channel (w = `ssim_window(H, W)`).

    Wang, Bovik, Sheikh, Simoncelli 2004, "Image quality assessment: from error visibility to structural
    similarity", eq. 13 with the Gaussian-weighted local statistics of eqs. 14-16: an 11x11
    circular-symmetric Gaussian window (sigma 1.5, normalised to sum 1), K1 = 0.01, K2 = 0.03, L = 255, population (not sample)
    variances. The map covers the "valid" region only, the positions where the whole window lies in the
    image (no padding); this is what skimage's structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=255) and torchmetrics' StructuralSimilarityIndexMeasure average.
    An image smaller than 11 px on a side gets a window as large as its smaller side (made odd), sigma
    still 1.5.
    """
    a, b = _pair(a, b)
    h, w, c = a.shape
    n = ssim_window(h, w)
    g = _gaussian(n, SSIM_SIGMA)
    x = torch.from_numpy(np.array(a)).permute(2, 0, 1).to(torch.float64).unsqueeze(1)  # [C, 1, H, W]
    y = torch.from_numpy(np.array(b)).permute(2, 0, 1).to(torch.float64).unsqueeze(1)
    stack = torch.cat([x, y, x * x, y * y, x * y])  # [5C, 1, H, W]
    # the 2-D Gaussian is separable: filter the columns, then the rows ("valid", no padding)
    filtered = F.conv2d(F.conv2d(stack, g.view(1, 1, n, 1)), g.view(1, 1, 1, n))
    mu_x, mu_y, xx, yy, xy = filtered.split(c)
    var_x, var_y, cov = xx - mu_x * mu_x, yy - mu_y * mu_y, xy - mu_x * mu_y
    c1, c2 = (K1 * L) ** 2, (K2 * L) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
    return s[:, 0].permute(1, 2, 0).numpy()


def ssim(a, b, mask=None) -> float:
    """Mean SSIM (Wang et al. 2004; see `ssim_map`) of two images, in [-1, 1], 1 for identical images.

    Computed per channel on the RGB values (no conversion to luma) and averaged over channels and over
    the valid region of the map (an 11x11 window needs 5 px on each side, so the outer 5 px of the image
    are only seen by windows centred further in). With `mask` ([H, W], True = count), the map is averaged
    over the masked pixels of the valid region: the mask is cropped by the same 5 px (window // 2) on
    each side, so masked pixels within 5 px of the border do not count, and the windows of counted
    pixels still see the unmasked pixels around them.
    """
    a, b = _pair(a, b)
    m = _mask(mask, a.shape)
    s = ssim_map(a, b)
    if m is not None:
        p = ssim_window(*a.shape[:2]) // 2
        m = m[p : a.shape[0] - p, p : a.shape[1] - p]
        if not m.any():
            return math.nan
        s = s[m]
    return float(s.mean())


def pie_bench_masked(a, b, edit_mask) -> tuple[np.ndarray, np.ndarray]:
    """Both images multiplied by (1 - edit mask), as PIE-Bench does before its background metrics.

    Ju et al. 2024, "PnP Inversion" (PIE-Bench), evaluation/evaluate.py: `calculate_psnr(src, tgt,
    1 - mask, 1 - mask)` and the like, which multiply both images by the mask. The edited region
    (edit_mask True) becomes black in both; the result is uint8 like the inputs (exact: the mask is 0/1).
    """
    a, b = _pair(a, b)
    keep = ~_mask(edit_mask, a.shape)
    return a * keep[..., None], b * keep[..., None]


def pie_bench_background(a, b, edit_mask, lpips: "Lpips | None" = None) -> dict[str, float]:
    """PIE-Bench's background metrics: psnr, mse ([0, 1] scale) and ssim of `pie_bench_masked` images, over the whole image.

    With an `Lpips` scorer, also "lpips" of the masked images over the whole image, as PIE-Bench does.

    Ju et al. 2024 ("PnP Inversion", PIE-Bench) report these as "PSNR", "MSE" (x 10^4) and "SSIM" (x 10^2)
    of "background preservation". To reproduce their numbers, decode their masks with
    `decode_rle_mask(rle, border=True)` (their mask_decode also marks the image's 1-pixel frame as edited).
    The torchmetrics SSIM they use has the same definition and valid region as `ssim` here.
    """
    am, bm = pie_bench_masked(a, b, edit_mask)
    out = dict(psnr=psnr(am, bm), mse=mse(am, bm), ssim=ssim(am, bm))
    if lpips is not None:
        out["lpips"] = lpips(am, bm)
    return out


def background(a, b, edit_mask, lpips: "Lpips | None" = None) -> dict[str, float]:
    """The clean background metrics: psnr, mse ([0, 1] scale) and ssim over the pixels outside the edit mask only.

    Same definitions as `psnr`, `mse` and `ssim` with mask = ~edit_mask (for SSIM, windows centred on
    background pixels still see the edited pixels nearby). nan if everything is edited. With an `Lpips`
    scorer, also "lpips" with its maps averaged over the background (`Lpips.__call__` with a mask).
    """
    a, b = _pair(a, b)
    keep = ~_mask(edit_mask, a.shape)
    out = dict(psnr=psnr(a, b, keep), mse=mse(a, b, keep), ssim=ssim(a, b, keep))
    if lpips is not None:
        out["lpips"] = lpips(a, b, keep)
    return out


def decode_rle_mask(rle, size: tuple[int, int] = (512, 512), *, border: bool = False) -> np.ndarray:
    """A PIE-Bench edit mask [H, W] of bools (True = edit region) from its run-length encoding.

    PIE-Bench (Ju et al. 2024, mapping_file.json "mask"; decoded by mask_decode in their evaluate.py):
    pairs [start, length, start, length, ...] of runs of 1s over the row-major flattened H x W grid,
    starting at 0; runs past the end are cut at the end. `size` is (height, width). With `border`, the
    outermost rows and columns are also marked as edited, as their mask_decode does ("to avoid
    annotation errors in boundary"): use it to reproduce their background numbers.
    """
    h, w = size
    r = np.asarray(rle)
    if r.ndim != 1 or len(r) % 2 or (len(r) and (not np.issubdtype(r.dtype, np.integer) or r.min() < 0)):
        raise InputError("a run-length mask must be a flat list of non-negative integers "
                         "[start, length, start, length, ...]; got " + repr(rle)[:80])
    flat = np.zeros(h * w, dtype=bool)
    for start, length in r.reshape(-1, 2):
        flat[start : start + length] = True
    m = flat.reshape(h, w)
    if border:
        m[0, :] = m[-1, :] = m[:, 0] = m[:, -1] = True
    return m


# ---------------------------------------------------------------- learned metrics (optional weights)
#
# LPIPS, CLIP score and DINO structure distance need network weights that redraft does not ship. Each
# scorer loads them from a local folder (or file) or a hub id, safetensors only, and `optional_scorer`
# turns "no weights" into a reason to report ("unavailable: ...") instead of a crash.


def _weights_dir(source: str | Path, what: str) -> Path | str:
    """A local path as it is, or a hub id (owner/name) for transformers to fetch; else a clear error."""
    path = Path(str(source)).expanduser()
    if path.exists():
        return path
    text = str(source)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        return text
    raise InputError(f"{source}: no such file or folder, and not a hub id of the form owner/name; "
                     f"give the {what} weights (a local folder saved with save_pretrained, or a hub id).")


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
        from ..core.prompts import check_prompt

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
