"""A batch run: the items still to do, sharded over the processes of `accelerate launch`, then one
results table (results.jsonl, results.csv, summary.json)."""

from __future__ import annotations

import csv
import fcntl
import json
import math
import os
import shutil
import socket
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ...errors import InputError
from ...io.files import atomic_path, write_json
from .item import Scorers, process
from .manifest import Item

FORMAT = "redraft.batch/1"
LOCK = ".lock"  # in the results folder, while a run writes there


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


@contextmanager
def folder_lock(out: Path):
    """Held by a run's main process for the whole run: a second `redraft batch` into the same folder is
    refused at once, naming the run that holds it. An OS lock (flock), so a killed run leaves none."""
    out.mkdir(parents=True, exist_ok=True)
    f = open(out / LOCK, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise InputError(f"another redraft batch ({holder}) is writing to {out}; wait for it to end (then run "
                         "again to resume), or write to another folder (-o).") from None
    try:
        f.truncate(0)
        f.write(f"pid {os.getpid()} on {socket.gethostname()}")
        f.flush()
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def run(items: list[Item], out_dir: str | Path, load_editor, *, model: str, device: str | None = None,
        weights: dict | None = None, force: bool = False, progress: bool = True) -> Report:
    """Process every item not done yet, sharded over the processes of `accelerate launch`, then merge.

    `load_editor(device)` gives the Editor (called only when this process has work); `model` names it
    in each item's settings hash; `weights` maps "clip" / "dino" / "lpips" to their weights.
    """
    from accelerate import PartialState

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file; give a folder for the results (-o).")
    if out.is_dir() and any(p.name != LOCK for p in out.iterdir()) and not (out / "batch.json").is_file():
        raise InputError(f"{out} holds other files and is not a redraft batch folder; choose a new or empty folder (-o).")
    cpu = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cpu")
    state = PartialState(cpu=cpu)
    with folder_lock(out) if state.is_main_process else nullcontext():  # one run at a time per folder
        return _run(state, items, out, load_editor, model, device, weights, force, progress)


def _run(state, items, out: Path, load_editor, model, device, weights, force, progress) -> Report:
    from tqdm.auto import tqdm

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
    pairs = list(dict.fromkeys((r.get("method"), r.get("editor")) for r in ok))
    return {"items": len(rows), "ok": len(ok), "failed": sum(r.get("status") == "failed" for r in rows),
            "mask_given": sum(bool(r.get("mask_given")) for r in ok),  # edits confined to a given mask
            "means": means, "counts": counts,
            "by_editing_type": {t: _means([r for r in ok if r.get("editing_type") == t])[0] for t in types},
            "by_pair": {f"{m} x {e}": _means([r for r in ok if (r.get("method"), r.get("editor")) == (m, e)])[0]
                        for m, e in pairs}}  # inversion x editor (redraft batch --inversions --editors)


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
