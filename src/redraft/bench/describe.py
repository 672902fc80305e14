"""`redraft bench describe`: prompt prediction on held-out shapes scenes (split "test", a seed no
training uses), the paper's ablation in small (Reverse Stable Diffusion, Croitoru et al. 2024, tables
on the joint task, the head configurations and curriculum learning).

Rows, each a describer trained briefly on shapes (split "train") with the same backbone and budget:

- regression only: the embedding alone (no BCE term, retrieval by cosine only);
- + vocabulary classification: the joint task, head configurations 1, 2 and 3, retrieval re-ranked
  by the predicted words;
- + curriculum: configuration 3 trained easy to hard after a warm-up run (order kept, as decided; and,
  on request, "curriculum-shuffled": shuffled inside each block);
- a frozen U-Net encoder of the built-in model (the white-box backbone) with MLP heads.

Measures: mean cosine between predicted and true all-MiniLM-L6-v2 embeddings (the paper's metric);
exact prompt (the retrieved text equals the scene's full prompt); per-attribute accuracy of the
retrieved text (size, color, shape, background, read with `redraft.shapes.world.parse_prompt`).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from ..io.files import write_json
from ..shapes import world
from .describer_scores import ATTRIBUTES, evaluate

TEST_SEED = 77  # held-out scenes: split "test"; training uses seed 0 ("train") and 10000 ("test", validation)


def test_scenes(n: int, seed: int = TEST_SEED) -> list[world.Scene]:
    return world.scenes(seed, n, split="test")


ROWS = ("shipped", "regression", "heads1", "heads2", "heads3", "curriculum", "unet-frozen", "curriculum-shuffled")
DEFAULT_ROWS = ROWS[:-1]  # the whole default bench: about 15 minutes of 2 CPU cores
LABELS = {"shipped": "shipped (or --describer) describer", "regression": "regression only (no BCE, no re-rank)",
          "heads1": "+ words, heads config 1", "heads2": "+ words, heads config 2",
          "heads3": "+ words, heads config 3", "curriculum": "+ words, config 3, + curriculum (2 stages)",
          "unet-frozen": "frozen U-Net encoder, MLP, config 1",
          "curriculum-shuffled": "+ curriculum, shuffled within blocks"}


def row_options(row: str, train_size: int, epochs: int):
    """The training options of an ablation row: resnet-tiny from scratch (but "unet-frozen": the
    built-in model's U-Net encoder, frozen, with 512-unit heads), the same seed, data and steps."""
    from ..describe.train import TrainOptions

    base = TrainOptions(data="shapes", backbone="resnet-tiny", train_size=train_size, epochs=epochs, lr=3e-3,
                        val_size=128, save_every=10_000)
    if row == "regression":
        return dataclasses.replace(base, words=False)
    if row in ("heads1", "heads2", "heads3"):
        return dataclasses.replace(base, heads=int(row[-1]))
    if row == "curriculum":  # stages 1/2, all (the reference's schedule for S = 2): 1.5 epochs a pass, so
        # epochs / 1.5 passes give the final model the other rows' steps; the warm-up epoch comes on top
        return dataclasses.replace(base, curriculum=2, warmup_epochs=1, epochs=max(1, round(epochs / 1.5)))
    if row == "curriculum-shuffled":  # easy-to-hard blocks kept, each block shuffled inside
        return dataclasses.replace(row_options("curriculum", train_size, epochs), shuffle_within=True)
    if row == "unet-frozen":
        return dataclasses.replace(base, backbone="unet", heads=1, lr=1e-3)
    raise ValueError(row)


def run(describer: str | Path | None, n: int, *, train_size: int = 10000, epochs: int = 3,
        rows: list[str] | None = None, work: Path = Path("out/bench/describe-runs")) -> dict:
    """Every row on the same n held-out scenes. Trained rows are kept in `work` (a folder per row and
    size) and reused when complete (delete it to retrain)."""
    from ..describe.embed import SentenceEmbedder
    from ..describe.model import Describer
    from ..describe.train import train
    from ..errors import InputError
    from ..io.loading import builtin_path

    rows = list(rows or DEFAULT_ROWS)
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise InputError(f"unknown bench rows {unknown}; choose from {list(ROWS)}")
    scenes = test_scenes(n)
    embedder = SentenceEmbedder()
    out: dict = {"test_seed": TEST_SEED, "n": n, "train_size": train_size, "epochs": epochs, "rows": {}}
    for row in rows:
        started = time.perf_counter()
        if row == "shipped":
            folder = Path(describer) if describer else builtin_path() / "describer"
            if not folder.is_dir():
                continue
            trained = Describer.load(folder)
            seconds = None
        else:
            folder = work / f"{row}-{train_size}x{epochs}"
            if not (folder / "model.safetensors").is_file():
                train(row_options(row, train_size, epochs), folder, progress=True)
            trained = Describer.load(folder)
            seconds = trained.training_summary.get("seconds")
            seconds = round(time.perf_counter() - started, 1) if seconds is None else seconds
        result = evaluate(trained, scenes, embedder)
        result["steps"] = trained.training_summary.get("steps")
        result["train_seconds"] = seconds
        result["folder"] = str(folder)
        out["rows"][row] = result
    return out


def table(result: dict) -> str:
    head = f"{'row':<44} {'cosine':>7} {'exact':>7} " + " ".join(f"{a:>10}" for a in ATTRIBUTES) + f" {'steps':>6}"
    lines = [f"{result['n']} held-out shapes scenes (split test, seed {result['test_seed']})", head]
    for row, r in result["rows"].items():
        lines.append(f"{LABELS[row]:<44} {r['mean_cosine']:>7.4f} {r['exact_prompt']:>7.1%} "
                     + " ".join(f"{r[a]:>10.1%}" for a in ATTRIBUTES) + f" {r['steps'] or '':>6}")
    return "\n".join(lines)


def save(result: dict, out_dir: Path, name: str = "describe.json") -> Path:
    return write_json(out_dir / name, result)


def discovery(editor, describer_folder: str | Path, n: int = 128, steps: int = 50, from_step: int = 1) -> dict:
    """The paper's discovery in the shapes world: generation accuracy (every named attribute read back
    right, `redraft.bench.shapes.generation`: held-out prompts of all grammar forms, the same noise)
    with the model's own U-Net, then with the describer's fine-tuned encoder from step `from_step` on."""
    from ..describe.discovery import tuned_encoder
    from ..describe.model import Describer
    from . import shapes

    describer = Describer.load(describer_folder)
    before = shapes.generation(editor, n, steps=steps)
    with tuned_encoder(editor, describer, from_step=from_step):
        after = shapes.generation(editor, n, steps=steps)
    return {"describer": str(describer_folder), "n": n, "steps": steps, "from_step": from_step,
            "original": before, "tuned_encoder": after}


def discovery_table(result: dict) -> str:
    keys = [k for k in result["original"]]
    lines = [f"generation of {result['n']} held-out prompts, {result['steps']} steps "
             f"(share with every named attribute right, and per attribute)",
             f"{'U-Net encoder':<28} " + " ".join(f"{k:>10}" for k in keys)]
    for name in ("original", "tuned_encoder"):
        label = "original" if name == "original" else f"fine-tuned, from step {result['from_step']}"
        lines.append(f"{label:<28} " + " ".join(f"{result[name][k]:>10.1%}" for k in keys))
    return "\n".join(lines)
