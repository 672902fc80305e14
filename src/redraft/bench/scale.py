"""`redraft bench scale`: redraft at the sizes users run, on the full-size architecture of a model family
(SD 1.5, SD 2.1 768-v, SDXL base) built from its published configuration (`bench/configs/*.json`, the
components' config.json) with random weights: no download.

Per method (DDIM, negative-prompt (NPI), null-text (NTI: the paper's Algorithm 1, `null_init="null"`,
whose pass structure the README's tables measured), Direct Inversion, a P2P word swap), for one
image at the native size: seconds, UNet samples (one latent through the UNet each), the ratio to the
bare floor, and peak memory. The floor is the same UNet calls (same batch sizes) run bare (diffusers'
default SDPA processors, no control, no hooks: timed once per batch size after the methods), plus the
backward passes null-text takes, plus the method's own VAE encodes and decodes (timed inside the run,
shown apart: they are the same work with or without redraft). Peak memory is the process's peak RSS
during the method (Linux VmHWM, reset before each; CUDA: max allocated).

On a CPU every duration is the process's CPU time (`time.process_time`; run it with OMP_NUM_THREADS=1),
not wall time: on a machine shared with other jobs, wall time counts the waits for a core, which drift
between a method and its floor timed minutes apart (measured here: ratios of 0.81 and 0.93, floors
slower than the methods they bound). Wall seconds are kept in the JSON (`wall_seconds`). On CUDA: wall time.

The tokenizer is a word-level one made for the bench's prompts (`shapes.tokenizer.build_tokenizer`):
its ids are all below the text encoders' 49,408-token vocabulary, so the encoders are full size and
their cost the real one. With `free_text_encoders` the prompts are encoded once before the UNet is
built and the encoders are then freed (fp32 SDXL's 13.9 GB of weights would not fit otherwise); text
encoding is then not in the methods' seconds (it is one pass of 77 tokens per prompt).
"""

from __future__ import annotations

import gc
import json
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import InputError

FAMILIES = ("sd15", "sd21-v", "sdxl")
METHODS = ("ddim", "negative-prompt", "null-text", "direct", "p2p-swap")
SOURCE, TARGET = "a photo of a cat on a sofa", "a photo of a dog on a sofa"


def config(family: str) -> dict:
    if family not in FAMILIES:
        raise InputError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}.")
    return json.loads((resources.files("redraft") / "bench" / "configs" / f"{family}.json").read_text())


def build_editor(spec: dict, dtype: torch.dtype = torch.float32, device: str = "cpu",
                 free_text_encoders: bool = False, seed: int = 0, folder: Path | None = None):
    """An `Editor` on the architecture of `spec` with random weights (`folder`: where the tokenizer goes)."""
    import tempfile

    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from ..core import conditioning
    from ..core.prompts import encode_prompts
    from ..editor import Editor
    from ..shapes.tokenizer import build_tokenizer

    torch.manual_seed(seed)
    folder = Path(folder or tempfile.mkdtemp(prefix="redraft-scale-"))
    tokenizer = build_tokenizer(sorted(set((SOURCE + " " + TARGET).split())), folder / "tokenizer")
    xl = spec["pipeline"] == "StableDiffusionXLPipeline"
    encoders = []
    for i, te in enumerate(spec["text_encoders"]):
        cfg = CLIPTextConfig(**te, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
        encoders.append(((CLIPTextModelWithProjection if xl and i == 1 else CLIPTextModel)(cfg)).to(dtype).eval())
    cache = None
    if free_text_encoders:  # encode the bench's prompts now, then free the encoders before the UNet exists
        unet_cfg = spec["unet"]
        size = unet_cfg["sample_size"] * 2 ** (len(spec["vae"]["block_out_channels"]) - 1)
        prompts = [SOURCE, TARGET, ""]
        if xl:
            stub = _Texts(tokenizer, encoders)
            pooled = unet_cfg["projection_class_embeddings_input_dim"] - 6 * unet_cfg["addition_time_embed_dim"]
            layout = conditioning.XLLayout(77, unet_cfg["cross_attention_dim"], pooled)
            packed = conditioning.encode_xl(stub, layout, prompts, conditioning.time_ids((size, size), (size, size)))
        else:
            packed = encode_prompts(tokenizer, encoders[0], prompts)
        cache = dict(zip(prompts, packed))
        with torch.device("meta"):
            encoders = [type(e)(e.config) for e in encoders]
        gc.collect()
    unet = UNet2DConditionModel(**spec["unet"]).to(dtype).eval()
    vae = AutoencoderKL(**spec["vae"]).eval()  # fp32: force_upcast (as `io.loading`)
    scheduler = DDIMScheduler(**spec["scheduler"])
    parts = dict(vae=vae, unet=unet, scheduler=scheduler, tokenizer=tokenizer, text_encoder=encoders[0])
    if xl:
        pipe = StableDiffusionXLPipeline(**parts, text_encoder_2=encoders[1], tokenizer_2=tokenizer)
    else:
        pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    for m in (unet, vae, *encoders):
        m.requires_grad_(False)
        if cache is None or m in (unet, vae):
            m.to(device)
    editor = Editor(pipe, model_id=f"bench:{spec.get('family', 'random')}", guidance_scale=7.5)
    if cache is not None:
        editor.embed = lambda prompts, time_ids=None, like=None: torch.stack([cache[p] for p in prompts]).to(device)
    return editor


class _Texts:
    """What `conditioning.encode_xl` reads of a pipeline: both tokenizers and encoders, and its config."""

    def __init__(self, tokenizer, encoders):
        self.tokenizer = self.tokenizer_2 = tokenizer
        self.text_encoder, self.text_encoder_2 = encoders
        self.config = type("Config", (), {"force_zeros_for_empty_prompt": True})()


def weights_gb(editor) -> float:
    pipe = editor.pipeline
    parts = [pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)]
    return sum(p.numel() * p.element_size() for m in parts if m is not None for p in m.parameters()
               if not p.is_meta) / 1e9


def _reset_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux)
    except OSError:
        pass


def _peak_gb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 1e9
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1e6
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def run(family: str, *, steps: int = 2, inner_steps: int = 2, methods=METHODS, dtype=torch.float32,
        device: str = "cpu", free_text_encoders: bool | None = None, progress: bool = True,
        spec: dict | None = None) -> dict:
    """The scale bench on `family` (or on `spec`, a config dict of the same form): one row per method."""
    spec = dict(spec or config(family), family=family)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise InputError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}.")
    free = (spec["pipeline"] == "StableDiffusionXLPipeline") if free_text_encoders is None else free_text_encoders
    started = time.perf_counter()
    editor = build_editor(spec, dtype, device, free_text_encoders=free)
    build_seconds = time.perf_counter() - started
    now = clock(editor.device)
    size = editor.resolution
    y, x = np.mgrid[0:size, 0:size]
    pixels = np.stack([x * 255 // size, y * 255 // size, np.full_like(x, 90)], -1).astype(np.uint8)
    pixels[size // 4:size // 2, size // 3:2 * size // 3] = (230, 40, 40)
    image = Image.fromarray(pixels)
    calls: list[int] = []
    hook = editor.pipeline.unet.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    vae = {"seconds": 0.0}
    encode, decode = editor.encode, editor.decode

    def timed(fn):
        def wrapper(*a, **k):
            t = now()
            out = fn(*a, **k)
            vae["seconds"] += now() - t
            return out
        return wrapper

    editor.encode, editor.decode = timed(encode), timed(decode)
    rows = []
    for method in methods:
        calls.clear()
        vae["seconds"] = 0.0
        gc.collect()
        _reset_peak(editor.device)
        t, wall = now(), time.perf_counter()
        inv_method = {"direct": "ddim", "p2p-swap": "negative-prompt"}.get(method, method)
        paper = {"null_init": "null"} if method == "null-text" else {}
        inv = editor.invert(image, SOURCE, method=inv_method, steps=steps, inner_steps=inner_steps, progress=progress,
                            **paper)
        if method in ("direct", "p2p-swap"):
            out = editor.edit(inv, TARGET, direct=method == "direct", progress=progress)
            backward = 0
        else:
            editor.reconstruct(inv, progress=progress)
            backward = inv.cost.unet_backward
        seconds, wall = now() - t, time.perf_counter() - wall
        rows.append(dict(method=method, seconds=seconds, wall_seconds=wall, unet_samples=sum(calls), unet_backward=backward,
                         calls=list(calls), vae_seconds=vae["seconds"], peak_gb=_peak_gb(editor.device)))
        del inv
        if method in ("direct", "p2p-swap"):
            del out
    hook.remove()
    floors = bare_unet(editor, sorted({b for r in rows for b in r["calls"]}),
                       backward=any(r["unet_backward"] for r in rows), now=now)
    for r in rows:
        unet_floor = sum(floors[b] for b in r.pop("calls")) + r["unet_backward"] * floors.get("backward", 0.0)
        r["unet_floor_seconds"] = unet_floor
        r["floor_seconds"] = unet_floor + r["vae_seconds"]
        r["ratio_to_floor"] = r["seconds"] / r["floor_seconds"]
        r["peak_over_weights_gb"] = r["peak_gb"] - weights_gb(editor)
    return dict(family=family, size=size, steps=steps, inner_steps=inner_steps, dtype=str(dtype).removeprefix("torch."),
                device=str(editor.device), clock="process CPU" if now is time.process_time else "wall", weights_gb=weights_gb(editor), text_encoders_freed=free,
                build_seconds=build_seconds, total_seconds=time.perf_counter() - started,
                bare_unet_seconds={str(k): v for k, v in floors.items()}, rows=rows)


def clock(device: torch.device):
    """The bench's clock: the process's CPU time on a CPU (immune to other jobs' load), wall time on CUDA."""
    return time.perf_counter if device.type == "cuda" else time.process_time


def bare_unet(editor, batches: list[int], backward: bool = False, now=time.perf_counter) -> dict:
    """Seconds of one bare UNet call (default processors, no hooks) per batch size; "backward": the extra
    seconds of back-propagating one sample to its text embedding (null-text's update)."""
    unet, device = editor.pipeline.unet, editor.device
    dtype = unet.dtype
    f = editor.pipeline.vae_scale_factor
    shape = (unet.config.in_channels, editor.resolution // f, editor.resolution // f)
    context = editor.embed([SOURCE])
    out = {}

    def call(b, grad=False):
        z = torch.randn(b, *shape, device=device, dtype=dtype)
        c = context.expand(b, -1, -1).clone().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            return editor.unet.__class__(unet)(z, 500, c), c

    for b in batches:
        t = now()
        with torch.no_grad():
            call(b)
        _sync(device)
        out[b] = now() - t
    if backward:
        t = now()
        y, c = call(1, grad=True)
        torch.autograd.grad(y.pow(2).mean(), c)
        _sync(device)
        out["backward"] = max(now() - t - out.get(1, 0.0), 0.0)
    return out


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


HEADER = "| method | seconds | UNet samples | bare UNet s | VAE s | ratio to floor | peak GB | peak - weights GB |"


def table(result: dict) -> str:
    lines = [f"{result['family']} at {result['size']} px, {result['steps']} steps, {result['dtype']} on "
             f"{result['device']}, {result.get('clock', 'wall')} seconds (weights {result['weights_gb']:.1f} GB"
             + (", text encoders freed after encoding" if result["text_encoders_freed"] else "") + ")",
             HEADER, "| --- " * 8 + "|"]
    for r in result["rows"]:
        samples = f"{r['unet_samples']}" + (f" (+{r['unet_backward']} backward)" if r["unet_backward"] else "")
        lines.append(f"| {r['method']} | {r['seconds']:.1f} | {samples} | {r['unet_floor_seconds']:.1f} | "
                     f"{r['vae_seconds']:.1f} | {r['ratio_to_floor']:.2f} | {r['peak_gb']:.1f} | "
                     f"{r['peak_over_weights_gb']:.1f} |")
    return "\n".join(lines)


def save(result: dict, out_dir: Path) -> Path:
    from ..io.files import write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"scale-{result['family']}.json"
    write_json(path, result)
    return path
