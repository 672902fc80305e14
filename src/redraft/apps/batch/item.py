"""One batch item: invert, edit, score and write its folder (DIR/items/<id>/)."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ...errors import InputError
from ...eval import metrics as M
from ...io.files import atomic_path, save_image
from ...p2p.controls import Controls
from .manifest import Item


@dataclass
class Scorers:
    """The learned metrics of a run: each a scorer from redraft.metrics, or the reason it is unavailable."""

    clip: object = "unavailable: no clip weights given"
    dino: object = "unavailable: no dino weights given"
    lpips: object = "unavailable: no lpips weights given"

    @classmethod
    def load(cls, clip=None, dino=None, lpips=None, device="cpu") -> "Scorers":
        return cls(*(M.optional_scorer(kind, source, device)
                     for kind, source in (("clip", clip), ("dino", dino), ("lpips", lpips))))


def _learned(scorer, *args, **kwargs):
    """A learned metric's value, or why there is none ("unavailable: ...")."""
    if isinstance(scorer, str):
        return scorer
    try:
        return scorer(*args, **kwargs)
    except InputError as e:
        return f"unavailable: {e}"


def edit_masks(item: Item, original: Image.Image, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """The item's edit mask (True = edited) at the model-sized image's geometry: (clean, PIE-Bench's).

    PIE-Bench's own masks are run-length pairs over the image's row-major grid (512 x 512); their
    evaluation also marks the image's 1-pixel frame as edited (see metrics.decode_rle_mask). The masks
    are cropped and resized (nearest) as the image was.
    """
    if item.mask is None:
        return None
    w, h = original.size
    if isinstance(item.mask, str):
        from ...io.image import load_image

        clean = np.asarray(load_image(item.mask).convert("L")) > 127
        framed = clean
    else:
        clean = M.decode_rle_mask(item.mask, (h, w))
        framed = M.decode_rle_mask(item.mask, (h, w), border=True)
    if clean.shape != (h, w):
        raise InputError(f"the mask is {clean.shape[1]}x{clean.shape[0]} but the image is {w}x{h}; give a mask of the image's size.")

    def fit(m: np.ndarray) -> np.ndarray:
        im = ImageOps.fit(Image.fromarray(m.astype(np.uint8) * 255), size, Image.Resampling.NEAREST)
        return np.asarray(im) > 127

    return fit(clean), fit(framed)


def _region_mask(editor, item: Item, original: Image.Image, masks) -> np.ndarray | None:
    """The mask the item's edit is confined to, at the model-sized image's geometry: its `edit_mask`
    (cropped as the image is), else its annotated mask with `use_mask` (--use-pie-masks), else None."""
    from ...io.mask import crop_like, load_mask

    size = editor.prepare(original).size
    if item.edit_mask is not None:
        return load_mask(crop_like(item.edit_mask, original.size, editor.resolution,
                                   multiple=editor.pipeline.vae_scale_factor), size)
    if item.use_mask:
        if masks is None:
            raise InputError("--use-pie-masks takes the item's mask as the edit's, but this item has no 'mask'.")
        return load_mask(masks[0], size)
    return None


def describe(editor, image: Image.Image) -> str:
    """The source prompt of an item that has none: `editor.describe(image).prompt`."""
    return editor.describe(image).prompt


def _saved_inversion(path: Path, item: Item, editor):
    """The inversion an interrupted run saved for this item, if it matches the item's settings."""
    from ...io.inversion_file import Inversion

    if not path.is_file():
        return None
    try:
        inv = Inversion.load(path)
    except InputError:
        return None
    guidance = editor.guidance_scale if item.guidance is None else item.guidance
    same = (inv.method, inv.steps, inv.guidance_scale, inv.model_fingerprint) == \
        (item.method, item.steps, guidance, editor.fingerprint)
    same = same and all(inv.options.get(k) == v for k, v in item.settings.items())
    return inv if same and (item.prompt is None or inv.prompt == item.prompt) else None


def process(editor, item: Item, folder: Path, scorers: Scorers) -> dict:
    """Invert and edit one item, write its files and return its row (failures included)."""
    from ...core.prompts import check_prompt
    from ...io.draw import grid
    from ...io.image import load_image
    from ...p2p.plan import plan

    started = time.perf_counter()
    row: dict = {"id": item.id, "status": "ok", "error": "", "image": item.image, "source_prompt": item.prompt,
                 "prompt_from": "manifest" if item.prompt is not None else "describe", "targets": item.targets,
                 "editing_type": item.editing_type, "method": item.method + (" + direct" if item.direct else ""),
                 "editor": item.controls.get("editing", "p2p"),
                 "steps": item.steps, "seconds": None, "process": None}
    files = ["inversion.safetensors", "reconstruction.png",
             *(f"edit-{k}.png" for k in range(1, len(item.targets) + 1)), "grid.png"]
    try:
        if item.error:
            raise InputError(item.error)
        original = load_image(item.image)
        inv_path = folder / "inversion.safetensors"
        inv = _saved_inversion(inv_path, item, editor)
        prompt = inv.prompt if inv is not None else item.prompt if item.prompt is not None else describe(editor, original)
        row["source_prompt"] = prompt
        tokenizer = editor.pipeline.tokenizer
        check_prompt(tokenizer, prompt, what="source prompt", allow_empty=False)
        for t in item.targets:
            check_prompt(tokenizer, t, what="target prompt", allow_empty=False)
        latent = editor.resolution // editor.pipeline.vae_scale_factor
        controls = Controls.from_json(item.controls)
        plan(tokenizer, [prompt, *item.targets], controls, item.steps, (latent, latent))  # bad words: before any work
        masks = edit_masks(item, original, editor.prepare(original).size)
        region = _region_mask(editor, item, original, masks)  # checked before any work
        row["mask_given"] = region is not None
        if inv is None:
            inv = editor.invert(original, prompt, method=item.method, steps=item.steps,
                                guidance_scale=item.guidance, progress=False, settings=item.settings or None)
            inv.save(inv_path)
        row.update(unet_forward=inv.cost.unet_forward, unet_backward=inv.cost.unet_backward,
                   inversion_seconds=inv.cost.seconds)
        chosen = dict(controls=controls) if item.whole else {n: getattr(controls, n) for n in item.controls}
        result = editor.edit(inv, item.targets, direct=item.direct, progress=False, mask=region, **chosen)
        row["method"] = item.method + (" + direct" if result.direct else "")
        reconstruction, edits = result[0], result[1:]
        meta = result.metadata(method=row["method"], steps=item.steps, model=editor.model_id)
        row.update(controls=result.controls_of(1).to_json(), controls_set=item.controls, edit_unet_forward=result.unet_forward, edit_seconds=round(result.seconds, 3))
        save_image(reconstruction, folder / "reconstruction.png")
        for k, im in enumerate(edits, start=1):
            save_image(im, folder / f"edit-{k}.png", metadata=meta)
        row.update(item_metrics(editor, inv.image, reconstruction, edits, item.targets, masks, scorers))
        label = f"reconstruction ({row['method']}): {row['recon_psnr']:.1f} dB"
        save_image(grid([Image.fromarray(inv.image), reconstruction, *edits],
                        [f"input: {prompt}", label, *(f"edit: {t}" for t in item.targets)]), folder / "grid.png",
                   metadata=meta)
    except Exception as e:  # one item's failure is recorded in its row; the run goes on
        row.update(status="failed", error=str(e) if isinstance(e, InputError) else f"{type(e).__name__}: {e}")
        if not isinstance(e, InputError):
            with atomic_path(folder / "error.txt") as tmp:
                tmp.write_text(traceback.format_exc())
    row["seconds"] = round(time.perf_counter() - started, 3)
    row["files"] = files
    return row


def item_metrics(editor, source: np.ndarray, reconstruction: Image.Image, edits, targets, masks, scorers: Scorers) -> dict:
    """Reconstruction PSNR/SSIM beside the VAE's ceiling; per edit k ("edit<k>_"): CLIP score of its
    target, DINO structure distance to the input (clean and PIE-Bench's pixel scale) and, with a mask,
    the CLIP score of the edited region and the background metrics both ways (PIE-Bench's, "_pie", and
    the clean masked one)."""
    recon = np.asarray(reconstruction)
    ceiling = np.asarray(editor.decode(editor.encode([Image.fromarray(source)]))[0])
    out = {"recon_psnr": M.psnr(source, recon), "recon_ssim": M.ssim(source, recon),
           "vae_psnr": M.psnr(source, ceiling), "vae_ssim": M.ssim(source, ceiling),
           "recon_lpips": _learned(scorers.lpips, source, recon)}
    for k, (edit, target) in enumerate(zip(edits, targets), start=1):
        e, p = np.asarray(edit), f"edit{k}_"
        out[p + "clip"] = _learned(scorers.clip, e, target)
        out[p + "structure"] = _learned(scorers.dino, source, e)
        out[p + "structure_pie"] = _learned(scorers.dino, source, e, pie_bench=True)
        if masks is None:
            continue
        clean, framed = masks
        out[p + "clip_edited"] = _learned(scorers.clip, e, target, framed)
        for name, value in M.pie_bench_background(source, e, framed).items():
            out[f"{p}bg_{name}_pie"] = value
        out[f"{p}bg_lpips_pie"] = _learned(scorers.lpips, *M.pie_bench_masked(source, e, framed))
        for name, value in M.background(source, e, clean).items():
            out[f"{p}bg_{name}"] = value
        out[f"{p}bg_lpips"] = _learned(scorers.lpips, source, e, ~clean)
    return out
