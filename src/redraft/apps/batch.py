"""`redraft batch`: invert and edit every image of a manifest, with metrics; resumable, sharded over processes.

A manifest is JSONL or CSV (one item a line or row; see `FIELDS`) or PIE-Bench's mapping_file.json
(Ju et al. 2024). Each item gets a folder DIR/items/<id>/ with inversion.safetensors,
reconstruction.png, edit-<k>.png, grid.png and row.json, its row of the results table, written last.
An item whose row says "ok" and whose files all exist is done and skipped when the run is repeated;
a saved inversion of an interrupted item is reused. A failing item gets a row too (status "failed" and
the error) and the run goes on. Under `accelerate launch`, the processes split the items still to do
and the main process merges every row into DIR/results.jsonl and DIR/results.csv once all are done.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import shutil
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ..eval import metrics as M
from ..errors import InputError
from ..io.files import atomic_path, save_image, write_json

FORMAT = "redraft.batch/1"
# Manifest fields (JSONL keys or CSV columns). Only image and target(s) are required.
FIELDS = {
    "id": "the item's name (letters, digits, . _ -); default: its position, 00001, 00002, ...",
    "image": "image path, absolute or relative to the manifest's folder",
    "prompt": "source prompt; missing: the image is described first (Editor.describe)",
    "target": "one target prompt",
    "targets": "target prompts: a list, or in CSV one text with ' | ' between prompts",
    "kind": "replace, refine or reweight (default: chosen from the prompts)",
    "blend": "LocalBlend words: a list or a space-separated text",
    "blend_exclude": "words whose region LocalBlend keeps from the source (P2P's substruct_words)",
    "reweight": "word=factor: a dict, a list, or a space-separated text",
    "cross_steps": "cross_replace_steps (fraction)",
    "self_steps": "self_replace_steps (fraction)",
    "self_resolution": "inject self-attention in layers up to this side (default: P2P's, half the latent's)",
    "layout_guidance": "layout guidance step size, which keeps objects in place (default 0: off)",
    "feature_steps": "feature_replace_steps: the first steps in which the source's decoder features replace the "
                     "edits' (Plug-and-Play; default 0: off)",
    "renoise_step": "the fraction of the steps after which the edits take one step with fresh noise (default: never)",
    "renoise_strength": "the share of fresh noise in that step (default 1)",
    "method": "inversion method: ddim, null-text or negative-prompt",
    "steps": "sampling steps",
    "guidance": "guidance scale",
    "direct": "Direct Inversion (true/false)",
    "mask": "edit region (1 = edited) for background metrics: an image path, or PIE-Bench run-length pairs",
}
# (cross_replace_steps, self_replace_steps): the P2P paper's defaults, and PIE-Bench's run_editing_p2p.py
P2P_STEPS, PIE_BENCH_STEPS = (0.8, 0.4), (0.4, 0.6)
ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass
class Defaults:
    """Settings of the items that do not set their own (the command line's options)."""

    method: str = "negative-prompt"
    steps: int = 50
    guidance: float | None = None  # None: the model's (Editor.guidance_scale)
    direct: bool = False
    cross_steps: float | None = None  # None: 0.8, or PIE-Bench's 0.4
    self_steps: float | None = None  # None: 0.4, or PIE-Bench's 0.6


@dataclass
class Item:
    """One image to invert and edit. `error` is a problem found while reading it: the item fails with it."""

    id: str
    image: str
    prompt: str | None
    targets: list[str]
    controls: dict
    method: str
    steps: int
    guidance: float | None  # None: the model's
    direct: bool = False
    mask: str | list[int] | None = None  # a mask image path, or run-length pairs over the image's grid
    editing_type: str | None = None
    error: str | None = None

    def spec(self, model: str) -> str:
        """A hash of everything that decides this item's outputs."""
        text = json.dumps([model, asdict(self)], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------- manifests

def read_manifest(path: str | Path, defaults: Defaults = Defaults(), images: str | Path | None = None) -> list[Item]:
    """Items of a JSONL, CSV or PIE-Bench mapping_file.json manifest.

    Image paths are relative to the manifest's folder; PIE-Bench's to `images` (default: the
    annotation_images folder beside mapping_file.json). A problem with one item's values makes that
    item fail; a problem with the manifest itself (format, unknown field, duplicate id) is an InputError.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such manifest file; give a .jsonl, .csv or PIE-Bench mapping_file.json.")
    suffix = path.suffix.lower()
    if suffix == ".json":
        items = _pie_bench_items(path, defaults, Path(images) if images else path.parent / "annotation_images")
    elif suffix in (".jsonl", ".csv"):
        records = _jsonl_records(path) if suffix == ".jsonl" else _csv_records(path)
        items = []
        for n, (where, record) in enumerate(records, start=1):
            unknown = sorted(set(record) - set(FIELDS))
            if unknown:
                raise InputError(f"{path} {where}: unknown field(s) {unknown}; the fields are {', '.join(FIELDS)}.")
            items.append(_item(record, f"{n:05d}", path.parent, defaults, csv_text=suffix == ".csv"))
    else:
        raise InputError(f"{path}: a manifest is .jsonl, .csv, or PIE-Bench's mapping_file.json; got {path.suffix!r}.")
    if not items:
        raise InputError(f"{path} lists no items.")
    seen: set[str] = set()
    for item in items:
        if not ID.fullmatch(item.id):
            raise InputError(f"{path}: item id {item.id!r} cannot name a folder; use letters, digits, '.', '_' and '-'.")
        if item.id in seen:
            raise InputError(f"{path}: the id {item.id!r} is used twice; give every item its own id.")
        seen.add(item.id)
    return items


def _jsonl_records(path: Path):
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path} line {line_no} is not JSON ({e.msg}); write one JSON object per line.") from None
        if not isinstance(record, dict):
            raise InputError(f"{path} line {line_no}: each line must be a JSON object {{\"image\": ..., \"target\": ...}}.")
        yield f"line {line_no}", record


def _csv_records(path: Path):
    with open(path, newline="", encoding="utf-8") as f:
        for row_no, row in enumerate(csv.DictReader(f), start=2):
            if None in row:
                raise InputError(f"{path} row {row_no} has more cells than the header has columns.")
            yield f"row {row_no}", {k: v for k, v in row.items() if v not in ("", None)}


def _item(record: dict, default_id: str, root: Path, defaults: Defaults, csv_text: bool) -> Item:
    """An Item from one manifest record; a bad value becomes the item's error."""
    item = Item(id=str(record.get("id", default_id)), image=str(record.get("image", "")), prompt=None, targets=[],
                controls={}, method=defaults.method, steps=defaults.steps, guidance=defaults.guidance,
                direct=defaults.direct)
    try:
        if not item.image:
            raise InputError("no image: give the image's path in the 'image' field.")
        item.image = str(root / item.image)
        item.prompt = record.get("prompt")
        targets = record.get("targets", record.get("target"))
        if isinstance(targets, str):
            targets = [t.strip() for t in targets.split(" | ")] if csv_text or "targets" in record else [targets]
        if not targets or not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            raise InputError("no target prompt: give 'target' (text) or 'targets' (a list of texts).")
        item.targets = targets
        item.method = record.get("method", defaults.method)
        if item.method not in ("ddim", "null-text", "negative-prompt"):
            raise InputError(f"unknown method {item.method!r}; use ddim, null-text or negative-prompt.")
        item.steps = _number(record, "steps", defaults.steps, int)
        item.guidance = _number(record, "guidance", defaults.guidance, float)
        if item.guidance is not None and item.guidance < 0:
            raise InputError(f"guidance must be 0 or more; got {item.guidance}.")
        item.direct = _flag(record.get("direct", defaults.direct))
        item.controls = _controls(record, defaults, pie_bench=False)
        mask = record.get("mask")
        if isinstance(mask, str) and csv_text and mask.lstrip().startswith("["):
            mask = json.loads(mask)
        item.mask = str(root / mask) if isinstance(mask, str) else mask
    except (InputError, ValueError) as e:
        item.error = str(e)
    return item


def _number(record: dict, key: str, default, kind):
    value = record.get(key, default)
    if value is None:  # neither the record nor the defaults set it: the model's own (guidance)
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{key} must be a number; got {value!r}.") from None
    if kind is int:
        if not number.is_integer():
            raise InputError(f"{key} must be a whole number; got {value!r}.")
        return int(number)
    return number


def _flag(value) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("1", "true", "yes"):
        return True
    if str(value).lower() in ("0", "false", "no", ""):
        return False
    raise InputError(f"direct must be true or false; got {value!r}.")


def _controls(record: dict, defaults: Defaults, pie_bench: bool) -> dict:
    """Prompt-to-Prompt controls as the command line makes them (cli.controls_from)."""
    from .cli import controls_from

    blend, exclude = (record.get(key, []) for key in ("blend", "blend_exclude"))
    blend, exclude = (w.split() if isinstance(w, str) else list(w) for w in (blend, exclude))
    reweight = record.get("reweight", [])
    if isinstance(reweight, dict):
        reweight = [f"{w}={f}" for w, f in reweight.items()]
    elif isinstance(reweight, str):
        reweight = reweight.replace(",", " ").split()
    cross, self_ = PIE_BENCH_STEPS if pie_bench else P2P_STEPS
    cross = defaults.cross_steps if defaults.cross_steps is not None else cross
    self_ = defaults.self_steps if defaults.self_steps is not None else self_
    per_word = record.get("cross_steps")  # a dict gives per-word windows (see edit.Controls)
    cross = per_word if isinstance(per_word, dict) else _number(record, "cross_steps", cross, float)
    side = record.get("self_resolution")
    side = None if side in (None, "") else _number(record, "self_resolution", None, int)
    return controls_from(record.get("kind"), blend, reweight, cross, _number(record, "self_steps", self_, float),
                         side, _number(record, "layout_guidance", 0.0, float), blend_exclude=exclude,
                         feature_steps=_number(record, "feature_steps", 0.0, float),
                         renoise_step=_number(record, "renoise_step", None, float),
                         renoise_strength=_number(record, "renoise_strength", 1.0, float))


def _pie_bench_items(path: Path, defaults: Defaults, images: Path) -> list[Item]:
    """PIE-Bench's mapping_file.json: {id: {image_path, original_prompt, editing_prompt, mask, ...}}.

    The prompts lose their [brackets]; the edit uses PIE-Bench's Prompt-to-Prompt settings
    (run_editing_p2p.py): cross_replace_steps 0.4, self_replace_steps 0.6, and when blended_word
    ("source_word target_word") is given, LocalBlend on those two words and the target word re-weighted by 2.
    """
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not JSON ({e.msg}); give PIE-Bench's mapping_file.json.") from None
    if not isinstance(mapping, dict) or not all(isinstance(v, dict) and "image_path" in v for v in mapping.values()):
        raise InputError(f"{path} is not PIE-Bench's mapping_file.json ({{id: {{\"image_path\": ..., ...}}}}); "
                         "for your own items write a .jsonl or .csv manifest.")
    items = []
    for key, entry in mapping.items():
        item = Item(id=str(key), image=str(images / entry["image_path"]), prompt=None, targets=[], controls={},
                    method=defaults.method, steps=defaults.steps, guidance=defaults.guidance, direct=defaults.direct,
                    mask=entry.get("mask"), editing_type=str(entry.get("editing_type_id", "")) or None)
        try:
            for name in ("original_prompt", "editing_prompt"):
                if not isinstance(entry.get(name), str):
                    raise InputError(f"the entry has no {name}.")
            item.prompt = entry["original_prompt"].replace("[", "").replace("]", "")
            item.targets = [entry["editing_prompt"].replace("[", "").replace("]", "")]
            words = str(entry.get("blended_word") or "").split()
            record = {"blend": words[:2], "reweight": {words[1]: 2}} if len(words) >= 2 else {}
            item.controls = _controls(record, defaults, pie_bench=True)
        except (InputError, ValueError) as e:
            item.error = str(e)
        items.append(item)
    return items


# ---------------------------------------------------------------------------------------- one item

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
        from ..io.image import load_image

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


def describe(editor, image: Image.Image) -> str:
    """The source prompt of an item that has none: `editor.describe(image).prompt`."""
    if not hasattr(editor, "describe"):
        raise InputError("the item has no source prompt and this redraft cannot describe images yet "
                         "(Editor.describe is missing); give the item a 'prompt'.")
    return editor.describe(image).prompt


def _saved_inversion(path: Path, item: Item, editor):
    """The inversion an interrupted run saved for this item, if it matches the item's settings."""
    from ..io.inversion_file import Inversion

    if not path.is_file():
        return None
    try:
        inv = Inversion.load(path)
    except InputError:
        return None
    guidance = editor.guidance_scale if item.guidance is None else item.guidance
    same = (inv.method, inv.steps, inv.guidance_scale, inv.model_fingerprint) == \
        (item.method, item.steps, guidance, editor.fingerprint)
    return inv if same and (item.prompt is None or inv.prompt == item.prompt) else None


def process(editor, item: Item, folder: Path, scorers: Scorers) -> dict:
    """Invert and edit one item, write its files and return its row (failures included)."""
    from ..io.draw import grid
    from ..p2p.controls import Controls, plan
    from ..io.image import load_image
    from ..core.prompts import check_prompt

    started = time.perf_counter()
    row: dict = {"id": item.id, "status": "ok", "error": "", "image": item.image, "source_prompt": item.prompt,
                 "prompt_from": "manifest" if item.prompt is not None else "describe", "targets": item.targets,
                 "editing_type": item.editing_type, "method": item.method + (" + direct" if item.direct else ""),
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
        plan(tokenizer, [prompt, *item.targets], Controls(**item.controls), item.steps, (latent, latent))
        masks = edit_masks(item, original, editor.prepare(original).size)
        if inv is None:
            inv = editor.invert(original, prompt, method=item.method, steps=item.steps,
                                guidance_scale=item.guidance, progress=False)
            inv.save(inv_path)
        row.update(unet_forward=inv.cost.unet_forward, unet_backward=inv.cost.unet_backward,
                   inversion_seconds=inv.cost.seconds)
        images = editor.edit(inv, item.targets, direct=item.direct, progress=False, **item.controls)
        reconstruction, edits = images[0], images[1:]
        save_image(reconstruction, folder / "reconstruction.png")
        for k, im in enumerate(edits, start=1):
            save_image(im, folder / f"edit-{k}.png")
        row.update(item_metrics(editor, inv.image, reconstruction, edits, item.targets, masks, scorers))
        label = f"reconstruction ({row['method']}): {row['recon_psnr']:.1f} dB"
        save_image(grid([Image.fromarray(inv.image), reconstruction, *edits],
                        [f"input: {prompt}", label, *(f"edit: {t}" for t in item.targets)]), folder / "grid.png")
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


# ---------------------------------------------------------------------------------------- the run

@dataclass
class Report:
    """What one process of a run did; the main process also has the merged table."""

    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: int = 0
    rows: list[dict] | None = None  # the merged table (main process only)
    summary: dict | None = None


def is_done(folder: Path, spec: str) -> bool:
    row = _read_row(folder)
    return bool(row) and row.get("status") == "ok" and row.get("spec") == spec and \
        all((folder / f).is_file() for f in row.get("files", []))


def _read_row(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "row.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def run(items: list[Item], out_dir: str | Path, load_editor, *, model: str, device: str | None = None,
        weights: dict | None = None, force: bool = False, progress: bool = True) -> Report:
    """Process every item not done yet, sharded over the processes of `accelerate launch`, then merge.

    `load_editor(device)` gives the Editor (called only when this process has work); `model` names it
    in each item's settings hash; `weights` maps "clip" / "dino" / "lpips" to their weights.
    """
    from accelerate import PartialState
    from tqdm.auto import tqdm

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file; give a folder for the results (-o).")
    if out.is_dir() and any(out.iterdir()) and not (out / "batch.json").is_file():
        raise InputError(f"{out} holds other files and is not a redraft batch folder; choose a new or empty folder (-o).")
    cpu = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cpu")
    state = PartialState(cpu=cpu)
    specs = {item.id: item.spec(model) for item in items}
    stale = [item.id for item in items
             if (row := _read_row(out / "items" / item.id)) and row.get("status") == "ok" and row.get("spec") != specs[item.id]]
    if stale and not force:
        raise InputError(f"{len(stale)} item(s) in {out} were made with other settings or inputs ({', '.join(stale[:5])}"
                         f"{', ...' if len(stale) > 5 else ''}); write to another folder (-o) or pass --force to redo them.")
    todo = [item for item in items if not is_done(out / "items" / item.id, specs[item.id])]
    if state.is_main_process:
        _write_json(out / "batch.json", {"format": FORMAT, "model": model})
        for item_id in stale:  # --force: the outputs made with the old settings go (they are not done either way)
            shutil.rmtree(out / "items" / item_id)
    state.wait_for_everyone()  # every process has its "to do" list (the same one) before any work starts
    mine = todo[state.process_index::state.num_processes]
    report = Report(skipped=len(items) - len(todo))
    if mine:
        editor = load_editor(device or str(state.device))
        scorers = Scorers.load(**(weights or {}), device=editor.device)
        bar = tqdm(mine, desc=f"batch (process {state.process_index + 1}/{state.num_processes})",
                   disable=not progress, position=state.process_index)
        for item in bar:
            folder = out / "items" / item.id
            row = process(editor, item, folder, scorers)
            row.update(process=state.process_index, spec=specs[item.id])
            _write_json(folder / "row.json", row)
            (report.done if row["status"] == "ok" else report.failed).append(item.id)
    _write_json(out / "processes" / f"{state.process_index}.json",
                {"process": state.process_index, "processes": state.num_processes, "done": report.done,
                 "failed": report.failed})
    state.wait_for_everyone()
    if state.is_main_process:
        report.rows, report.summary = merge(items, out)
    return report


def merge(items: list[Item], out: Path) -> tuple[list[dict], dict]:
    """Gather every item's row (manifest order) into results.jsonl, results.csv and summary.json."""
    rows = []
    for item in items:
        row = _read_row(out / "items" / item.id) or {"id": item.id, "status": "not run", "error": ""}
        rows.append({k: v for k, v in row.items() if k not in ("spec", "files")})
    with atomic_path(out / "results.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(_plain(r)) + "\n" for r in rows))
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_path(out / "results.csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for r in rows:
                writer.writerow({k: _cell(v) for k, v in _plain(r).items()})
    summary = summarise(rows)
    _write_json(out / "summary.json", summary)
    return rows, summary


def summarise(rows: list[dict]) -> dict:
    """Counts, and the mean of every numeric column over the ok rows (finite values only, with their count);
    for PIE-Bench, also the means per editing type."""
    ok = [r for r in rows if r.get("status") == "ok"]
    means, counts = _means(ok)
    types = sorted({r["editing_type"] for r in ok if r.get("editing_type") is not None})
    return {"items": len(rows), "ok": len(ok), "failed": sum(r.get("status") == "failed" for r in rows),
            "means": means, "counts": counts,
            "by_editing_type": {t: _means([r for r in ok if r.get("editing_type") == t])[0] for t in types}}


def _means(rows: list[dict]) -> tuple[dict, dict]:
    means, counts = {}, {}
    skip = {"steps", "process", "unet_forward", "unet_backward"}
    for key in dict.fromkeys(k for r in rows for k in r):
        values = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)
                  and math.isfinite(r[key])]
        if values and key not in skip:
            means[key], counts[key] = float(np.mean(values)), len(values)
    return means, counts


def _plain(row: dict) -> dict:
    """JSON-safe values: non-finite floats as the strings "nan", "inf", "-inf"."""
    return {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def _cell(value) -> str:
    if value is None:
        return ""
    return " | ".join(value) if isinstance(value, list) else str(value)


def _write_json(path: Path, data) -> None:
    write_json(path, _plain(data) if isinstance(data, dict) else data)
