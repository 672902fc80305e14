"""`redraft bench`: the inversion, editing and describe benchmarks on one model, as one table.

Each row is one task done one way, with its quality figure, seconds per item, UNet passes per item
and the ratio of its wall time to the UNet floor (that many bare UNet passes, timed in the same run).
The figures come from the three benchmarks (`bench/inversion.py`, `bench/shapes.py`,
`bench/describe.py`); this module only runs them small and lines them up.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..io.files import pyplot, save_figure, write_json
from . import inversion, shapes


@dataclass
class Row:
    task: str  # "inversion", "editing", "generation", "describe"
    method: str
    quality: str  # what `value` is
    value: float
    seconds: float  # per item
    unet_passes: float  # per item: UNet rows evaluated forward (a backward pass is counted once more)
    ratio_to_floor: float  # seconds / the same passes timed bare; nan when no UNet runs


def run(editor, n_inversion: int = 2, n_generation: int = 64, n_edit: int = 4,
        methods: tuple[str, ...] = ("null-text", "negative-prompt"), n_describe: int = 64) -> dict:
    inv = inversion.run(editor, inversion.shapes_cases(n_inversion), list(methods), [50], progress=False)
    forward, both = inv["unet_forward_seconds"], inv["unet_forward_backward_seconds"]
    rows = [Row("inversion", r["method"], "PSNR dB (VAE ceiling %.2f)" % r["vae_psnr"], r["psnr"], r["seconds"],
                r["unet_forward"] + r["unet_backward"], r["ratio_to_floor"]) for r in inv["rows"]]

    editor.unet.reset()
    started = time.perf_counter()
    gen = shapes.generation(editor, n_generation)
    seconds = (time.perf_counter() - started) / n_generation
    passes = editor.unet.forward / n_generation
    rows.append(Row("generation", f"50 steps, guidance {editor.guidance_scale:g}", "share all attributes right",
                    gen["all"], seconds, passes, seconds / (passes * forward)))

    for method in methods:
        editor.unet.reset()
        started = time.perf_counter()
        result = shapes.inversion_and_editing(editor, n_edit, [method])[method]
        seconds = (time.perf_counter() - started) / n_edit
        fwd, bwd = editor.unet.forward / n_edit, editor.unet.backward / n_edit  # per scene: inversions + edits
        floor = (fwd - bwd) * forward + bwd * both
        swaps = [result[k] for k in ("color", "shape", "size", "background") if k in result]
        rows.append(Row("editing", method, "share of word swaps right (per scene: all edit kinds)",
                        float(np.mean(swaps)), seconds, fwd + bwd, seconds / floor))

    describe = describe_row(editor, n_describe)
    if describe is not None:
        rows.append(describe)
    return {"model": editor.model_id, "device": str(editor.device), "unet_forward_seconds": forward,
            "rows": [asdict(r) for r in rows], "details": {"inversion": inv, "generation": gen}}


def describe_row(editor, n: int) -> Row | None:
    """The model's own describer on held-out shapes scenes (None if the model has none)."""
    from ..errors import InputError
    from . import describe

    try:
        describer = editor.describer
    except InputError:
        return None
    scenes = describe.test_scenes(n)
    started = time.perf_counter()
    result = describe.evaluate(describer, scenes)
    seconds = (time.perf_counter() - started) / n
    return Row("describe", "shipped describer", "exact prompt (mean cosine %.3f)" % result["mean_cosine"],
               result["exact_prompt"], seconds, 0.0, float("nan"))


def table(result: dict) -> str:
    lines = [f"{'task':<11} {'method':<24} {'value':>7} {'s/item':>8} {'passes':>7} {'x floor':>7}  quality"]
    for r in result["rows"]:
        lines.append(f"{r['task']:<11} {r['method']:<24} {r['value']:>7.3f} {r['seconds']:>8.2f} "
                     f"{r['unet_passes']:>7.0f} {r['ratio_to_floor']:>7.2f}  {r['quality']}")
    return "\n".join(lines)


def save(result: dict, out_dir: Path) -> tuple[Path, Path]:
    plt = pyplot()

    json_path = write_json(out_dir / "summary.json", result)
    rows = result["rows"]
    labels = [f"{r['task']}: {r['method']}" for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 0.5 * len(rows) + 1.5), sharey=True)
    left.barh(labels, [r["seconds"] for r in rows], color="tab:blue")
    left.set(xscale="log", xlabel="seconds per item", title=f"{result['model']} on {result['device']}")
    left.invert_yaxis()
    right.barh(labels, [r["ratio_to_floor"] if np.isfinite(r["ratio_to_floor"]) else 0 for r in rows],
               color="tab:orange")
    right.axvline(1.0, color="gray", ls="--")
    right.set(xlabel="wall time / UNet floor")
    for y, r in enumerate(rows):
        right.annotate(f"{r['value']:.3f}", (0, y), xytext=(3, 0), textcoords="offset points", va="center",
                       fontsize=8)
    fig.tight_layout()
    png_path = save_figure(fig, out_dir / "summary.png")
    return json_path, png_path
