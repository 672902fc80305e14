"""Batch manifests: JSONL or CSV (one item a line or row; see `FIELDS`) or PIE-Bench's mapping_file.json
(Ju et al. 2024), read into `Item`s. The edit controls' columns are the `Controls` schema's."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ...checks import finite, whole
from ...errors import InputError
from ...inversions import METHODS
from ...p2p.controls import EDITORS, Controls

# Manifest fields (JSONL keys or CSV columns). Only image and target(s) are required.
FIELDS = {
    "id": "the item's name (letters, digits, . _ -); default: its position, 00001, 00002, ...",
    "image": "image path, absolute or relative to the manifest's folder",
    "prompt": "source prompt; missing: the image is described first (Editor.describe)",
    "target": "one target prompt",
    "targets": "target prompts: a list, or in CSV one text with ' | ' between prompts",
    "method": "inversion method: " + ", ".join(METHODS),
    "steps": "sampling steps",
    "guidance": "guidance scale",
    "direct": "Direct Inversion (true/false)",
    "mask": "edit region (1 = edited) for background metrics: an image path, or PIE-Bench run-length pairs; "
            "with --use-pie-masks also the region the edit may change",
    "edit_mask": "the region the edit may change (white) and what stays (black): an image path (Editor.edit(mask=))",
    "controls": "edit controls: a JSON object, or the path of a .json saved by redraft (Controls.save); "
                "the control columns below override it",
} | {spec.column: spec.help for _, spec, _ in Controls.fields()}
CONTROL_COLUMNS = {spec.column for _, spec, _ in Controls.fields()}
# PIE-Bench's run_editing_p2p.py: cross_replace_steps 0.4, self_replace_steps 0.6 (the paper's are Controls())
PIE_BENCH_CONTROLS = dict(cross_replace_steps=0.4, self_replace_steps=0.6)
ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass
class Defaults:
    """Settings of the items that do not set their own (the command line's options). `controls`: the
    controls given for the whole run (field: JSON value), over the model's editing recipe (`p2p.recipe`;
    PIE-Bench's protocol for its manifests); with `whole`, a whole set (a --controls file, or the paper's)
    that replaces the recipe."""

    method: str = "negative-prompt"
    steps: int = 50
    guidance: float | None = None  # None: the model's (Editor.guidance_scale)
    direct: bool | None = None  # None: the model's recipe's
    controls: dict = field(default_factory=dict)
    whole: bool = False
    use_pie_masks: bool = False  # the items' annotated `mask` also confines their edit (`Item.use_mask`)
    settings: dict = field(default_factory=dict)  # {inversion method: its settings} (inversions.methods.settings)


@dataclass
class Item:
    """One image to invert and edit. `error` is a problem found while reading it: the item fails with it."""

    id: str
    image: str
    prompt: str | None
    targets: list[str]
    controls: dict  # the controls set (field: JSON value), over the model's recipe unless `whole`
    method: str
    steps: int
    guidance: float | None  # None: the model's
    direct: bool | None = None  # None: the model's recipe's
    whole: bool = False  # `controls` is a whole set (PIE-Bench's protocol, a saved file) in place of the recipe
    mask: str | list[int] | None = None  # a mask image path, or run-length pairs over the image's grid
    editing_type: str | None = None
    edit_mask: str | None = None  # an image path: the region the edit may change (Editor.edit(mask=))
    use_mask: bool = False  # `mask` (the annotation) confines the edit too, where there is no edit_mask
    error: str | None = None
    settings: dict = field(default_factory=dict)  # the inversion method's settings (empty: its defaults)

    def spec(self, model: str) -> str:
        """A hash of everything that decides this item's outputs (no settings: as before they existed)."""
        fields = asdict(self)
        if not fields["settings"]:
            del fields["settings"]
        text = json.dumps([model, fields], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


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


def cross(items: list[Item], inversions: list[str], editors: list[str], defaults: Defaults = Defaults()) -> list[Item]:
    """One item per (item, inversion, editor), named '<id>--<inversion>--<editor>': the method x editor
    matrix of issue 33 over a manifest. "direct" is Direct Inversion over DDIM; each pair's settings are
    `defaults.settings` of its method."""
    known = [*METHODS, "direct"]
    for what, names, allowed in (("inversion", inversions, known), ("editor", editors, list(EDITORS))):
        unknown = [x for x in names if x not in allowed]
        if unknown or not names:
            raise InputError(f"unknown {what}(s) {', '.join(unknown) or '(none given)'}; the {what}s are: "
                             f"{', '.join(allowed)}.")
    out = []
    for item in items:
        for inversion in inversions:
            method = "ddim" if inversion == "direct" else inversion
            for editing in editors:
                out.append(replace(item, id=f"{item.id}--{inversion}--{editing}", method=method,
                                   direct=inversion == "direct", controls={**item.controls, "editing": editing},
                                   settings=dict(defaults.settings.get(method, {}))))
    return out


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
                direct=defaults.direct, use_mask=defaults.use_pie_masks,
                settings=dict(defaults.settings.get(defaults.method, {})))
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
        if item.method not in METHODS:
            raise InputError(f"unknown method {item.method!r}; use {', '.join(METHODS)}.")
        item.settings = dict(defaults.settings.get(item.method, {}))
        item.steps = _number(record, "steps", defaults.steps, int)
        item.guidance = _number(record, "guidance", defaults.guidance, float)
        direct = record.get("direct", defaults.direct)
        item.direct = None if direct is None else _flag(direct)
        item.controls, item.whole = _controls(record, root, defaults, pie_bench=False)
        mask = record.get("mask")
        if isinstance(mask, str) and csv_text and mask.lstrip().startswith("["):
            mask = json.loads(mask)
        item.mask = str(root / mask) if isinstance(mask, str) else mask
        if record.get("edit_mask") is not None:
            item.edit_mask = str(root / str(record["edit_mask"]))
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
        return whole(key, number, 1)
    return finite(key, number, 0)


def _flag(value) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("1", "true", "yes"):
        return True
    if str(value).lower() in ("0", "false", "no", ""):
        return False
    raise InputError(f"direct must be true or false; got {value!r}.")


def _controls(record: dict, root: Path, defaults: Defaults, pie_bench: bool) -> tuple[dict, bool]:
    """(the item's controls as JSON, whether they are a whole set in place of the model's recipe), from
    layers: PIE-Bench's protocol for its manifests (whole) < the run's options < the record's "controls"
    (a saved file: whole; a JSON object: its fields) < the record's control columns. An item of a plain
    manifest that sets nothing edits with the model's recipe, as `Editor.edit` with no controls does."""
    whole = pie_bench or defaults.whole
    fields = {**(Controls.make(**PIE_BENCH_CONTROLS).to_json() if pie_bench else {}), **defaults.controls}
    given = record.get("controls")
    if isinstance(given, str) and not given.lstrip().startswith("{"):
        fields, whole = Controls.load(root / given, Controls.from_json(fields)).to_json(), True
    elif given is not None:
        data = json.loads(given) if isinstance(given, str) else given
        Controls.from_json(data)  # checked: unknown names and bad values are the item's error
        fields = {**fields, **data}
    columns = Controls.given_strings({k: v for k, v in record.items() if k in CONTROL_COLUMNS})
    merged = Controls.make(Controls.from_json(fields), **columns).to_json()  # checked as one set
    return {n: merged[n] for n in merged if n in fields or n in columns}, whole


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
                    mask=entry.get("mask"), editing_type=str(entry.get("editing_type_id", "")) or None,
                    use_mask=defaults.use_pie_masks)
        try:
            for name in ("original_prompt", "editing_prompt"):
                if not isinstance(entry.get(name), str):
                    raise InputError(f"the entry has no {name}.")
            item.prompt = entry["original_prompt"].replace("[", "").replace("]", "")
            item.targets = [entry["editing_prompt"].replace("[", "").replace("]", "")]
            words = str(entry.get("blended_word") or "").split()
            record = {"blend": words[:2], "reweight": {words[1]: 2}} if len(words) >= 2 else {}
            item.controls, item.whole = _controls(record, path.parent, defaults, pie_bench=True)
        except (InputError, ValueError) as e:
            item.error = str(e)
        items.append(item)
    return items
