"""`redraft batch`: invert and edit every image of a manifest, with metrics; resumable, sharded over processes.

A manifest is JSONL or CSV (one item a line or row; see `FIELDS`) or PIE-Bench's mapping_file.json
(Ju et al. 2024). Each item gets a folder DIR/items/<id>/ with inversion.safetensors,
reconstruction.png, edit-<k>.png, grid.png and row.json, its row of the results table, written last.
An item whose row says "ok" and whose files all exist is done and skipped when the run is repeated;
a saved inversion of an interrupted item is reused. A failing item gets a row too (status "failed" and
the error) and the run goes on. Under `accelerate launch`, the processes split the items still to do
and the main process merges every row into DIR/results.jsonl and DIR/results.csv once all are done.
"""

from .item import Scorers, edit_masks, item_metrics, process
from .manifest import CONTROL_COLUMNS, FIELDS, PIE_BENCH_CONTROLS, Defaults, Item, cross, read_manifest
from .run import FORMAT, Report, is_done, merge, run, summarise

__all__ = ["FIELDS", "CONTROL_COLUMNS", "PIE_BENCH_CONTROLS", "FORMAT", "Defaults", "Item", "cross", "read_manifest",
           "Scorers", "process", "edit_masks", "item_metrics", "Report", "is_done", "run", "merge", "summarise"]
