"""`redraft bench inversion`: reconstruction quality against cost, for each inversion method.

For every method and step count: PSNR and SSIM of the reconstruction against the (model-sized)
input, beside the VAE ceiling (encode then decode); seconds and UNet passes per image (inversion plus
reconstruction); the ratio of wall time to the UNet floor (that many bare UNet passes, timed in the
same run); and peak memory. Writes the table as JSON and a chart of PSNR against seconds.
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..io.files import pyplot, save_figure, write_json
from ..eval.metrics import psnr, ssim

# (label, invert() keyword arguments)
METHODS: dict[str, dict] = {
    "ddim (guidance 1)": dict(method="ddim", guidance_scale=1.0),
    "ddim": dict(method="ddim"),
    "null-text": dict(method="null-text"),
    "null-text (paper)": dict(method="null-text", null_init="null"),
    "null-text (source init)": dict(method="null-text", null_init="source"),
    "null-text (global)": dict(method="null-text", global_null=True),
    "negative-prompt": dict(method="negative-prompt"),
    "edit-friendly": dict(method="edit-friendly"),
    "edict": dict(method="edict"),
    "proxnpi": dict(method="proxnpi"),
    "spdinv": dict(method="spdinv"),
}


@dataclass
class Row:
    method: str
    steps: int
    psnr: float
    ssim: float
    vae_psnr: float
    vae_ssim: float
    seconds: float
    unet_forward: float
    unet_backward: float
    floor_seconds: float
    ratio_to_floor: float
    peak_memory_mb: float


def shapes_cases(n: int, seed: int = 2) -> list[tuple[np.ndarray, str]]:
    """Held-out shapes scenes (never seen in training) with their full prompts."""
    from ..shapes import world

    return [(np.asarray(world.render(s)), s.prompt()) for s in world.scenes(seed, n, split="test")]


def unet_floor(editor, repeats: int = 10) -> tuple[float, float]:
    """Seconds of one bare UNet forward pass, and of one forward + backward, for one latent."""
    unet = editor.pipeline.unet
    size = editor.resolution // editor.pipeline.vae_scale_factor
    z = torch.randn(1, unet.config.in_channels, size, size, device=editor.device, dtype=unet.dtype)
    ctx = editor.embed([""]).to(unet.dtype)
    t = editor.schedule(50).timesteps[25]

    def timed(fn) -> float:
        for _ in range(3):  # warm-up
            fn()
        sync(editor.device)
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync(editor.device)
        return (time.perf_counter() - start) / repeats

    with torch.no_grad():
        forward = timed(lambda: unet(z, t, encoder_hidden_states=ctx))
    c = ctx.clone().float().requires_grad_(True)
    both = timed(lambda: torch.autograd.grad(unet(z, t, encoder_hidden_states=c.to(unet.dtype)).sample.sum(), c))
    return forward, both


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


def run(editor, cases: list[tuple[np.ndarray, str]], methods: list[str], step_counts: list[int],
        progress: bool = True, settings: dict[str, dict] | None = None) -> dict:
    """`settings`: {inversion method: its settings} (`inversions.methods.settings`) for the labels of
    that method; the others keep their defaults."""
    settings = settings or {}
    forward, both = unet_floor(editor)  # measured again at the end: the floor is their mean
    images = [editor.prepare(im) for im, _ in cases]
    prompts = [p for _, p in cases]
    vae = editor.decode(editor.encode(images))
    vae_psnr = float(np.mean([psnr(a, b) for a, b in zip(images, vae)]))
    vae_ssim = float(np.mean([ssim(a, b) for a, b in zip(images, vae)]))
    rows = []
    for steps in step_counts:
        for label in methods:
            if editor.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            q_psnr, q_ssim, seconds, fwd, bwd = [], [], 0.0, 0, 0
            for image, prompt in zip(images, prompts):  # one image at a time: per-image cost
                started = time.perf_counter()
                kwargs = METHODS[label]
                if kwargs["method"] in settings:
                    kwargs = {**kwargs, "settings": settings[kwargs["method"]]}
                inv = editor.invert(image, prompt, steps=steps, progress=False, **kwargs)
                editor.unet.reset()
                out = editor.reconstruct(inv, progress=False)
                sync(editor.device)
                seconds += time.perf_counter() - started
                fwd += inv.cost.unet_forward + editor.unet.forward
                bwd += inv.cost.unet_backward
                q_psnr.append(psnr(image, out))
                q_ssim.append(ssim(image, out))
            n = len(images)
            rows.append(Row(label, steps, float(np.mean(q_psnr)), float(np.mean(q_ssim)), vae_psnr, vae_ssim,
                            seconds / n, fwd / n, bwd / n, 0.0, 0.0, peak_memory_mb(editor.device)))
    forward_end, both_end = unet_floor(editor)
    forward, both = (forward + forward_end) / 2, (both + both_end) / 2
    for r in rows:
        r.floor_seconds = (r.unet_forward - r.unet_backward) * forward + r.unet_backward * both
        r.ratio_to_floor = r.seconds / r.floor_seconds
        if progress:
            print(format_row(r), flush=True)
    return {"model": editor.model_id, "device": str(editor.device), "images": len(images), "settings": settings,
            "unet_forward_seconds": forward, "unet_forward_backward_seconds": both,
            "rows": [asdict(r) for r in rows]}


HEADER = (f"{'method':<24} {'steps':>5} {'PSNR':>6} {'SSIM':>6} {'VAE PSNR':>8} {'seconds':>8} "
          f"{'fwd':>6} {'bwd':>6} {'x floor':>7} {'peak MB':>8}")


def format_row(r: Row) -> str:
    return (f"{r.method:<24} {r.steps:>5} {r.psnr:>6.2f} {r.ssim:>6.3f} {r.vae_psnr:>8.2f} {r.seconds:>8.2f} "
            f"{r.unet_forward:>6.0f} {r.unet_backward:>6.0f} {r.ratio_to_floor:>7.2f} {r.peak_memory_mb:>8.0f}")


def table(result: dict) -> str:
    return "\n".join([HEADER] + [format_row(Row(**r)) for r in result["rows"]])


def save(result: dict, out_dir: Path) -> tuple[Path, Path]:
    plt = pyplot()

    json_path = write_json(out_dir / "inversion.json", result)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label in dict.fromkeys(r["method"] for r in result["rows"]):
        pts = sorted((r["seconds"], r["psnr"], r["steps"]) for r in result["rows"] if r["method"] == label)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
        for s, q, n in pts:
            ax.annotate(str(n), (s, q), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ceiling = result["rows"][0]["vae_psnr"]
    ax.axhline(ceiling, color="gray", ls="--", label=f"VAE ceiling {ceiling:.1f} dB")
    ax.set(xscale="log", xlabel="seconds per image (inversion + reconstruction)", ylabel="PSNR (dB)",
           title=f"Reconstruction quality at a time budget ({result['model']}, {result['device']}); labels: steps")
    ax.legend(fontsize=8)
    fig.tight_layout()
    png_path = save_figure(fig, out_dir / "inversion.png")
    return json_path, png_path


def cases_from_file(path: Path) -> list[tuple[np.ndarray, str]]:
    """A JSONL file of {"image": path, "prompt": text} rows (paths relative to the file)."""
    from ..io.image import load_image

    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(np.asarray(load_image(path.parent / r["image"])), r["prompt"]) for r in rows]



