"""A describer run's logs: training/log-NAME.jsonl and the plot of every run's curves, training/curves.png."""

from __future__ import annotations

import json
from pathlib import Path

from ...io.files import atomic_path, pyplot, save_figure

def write_log(work: Path, log: list[dict], name: str) -> None:
    path = work / f"log-{name}.jsonl"
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(entry) + "\n" for entry in log))


def plot_curves(work: Path) -> Path:
    """training/curves.png: training loss per step and validation cosine per epoch, of every run."""
    plt = pyplot()

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for path in sorted(work.glob("log-*.jsonl")):
        name = path.stem.removeprefix("log-")
        entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        steps = [e for e in entries if "total" in e]
        vals = [e for e in entries if "val_cosine" in e]
        left.plot([e["step"] for e in steps], [e["total"] for e in steps], label=name)
        right.plot([e["step"] for e in vals], [e["val_cosine"] for e in vals], marker="o", label=name)
    left.set(xlabel="step", ylabel="training loss", yscale="log", title="joint loss")
    right.set(xlabel="step", ylabel="mean cosine", title="validation cosine (end of each epoch)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return save_figure(fig, work / "curves.png")
