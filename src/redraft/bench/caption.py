"""Benchmark: vanilla against enhanced BLIP captioners on held-out shapes scenes (Reverse Stable
Diffusion, Croitoru et al. 2024: its comparison of a vanilla fine-tuned BLIP with one trained with
the vocabulary classification and the curriculum), with a small BLIP trained from scratch.

Every variant trains with the same seed, data, budget (steps x batch) and initial weights. The
curriculum's warm-up history is the vanilla run's own (a vanilla run is the paper's "first run"),
so the enhanced variant costs a vanilla run more in all. Scores on scenes of the "test" split drawn
with a seed no training uses: exact prompt match, mean cosine between the MiniLM embeddings of
caption and prompt (the paper's metric), and per-attribute accuracy (the caption parsed with the
shapes grammar; a caption outside the grammar counts as wrong on every attribute).

`noise` (off by default) replaces that share of the training prompts with the prompt of another
random scene, as a stand-in for DiffusionDB's poorly matching prompts, which the curriculum is
meant to put last.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..describe.caption import VARIANTS, CachedEmbedder, Captioner, CaptionRecipe, caption_cosines, train_captioner
from ..describe.data import ShapesDataset
from ..errors import InputError
from ..io.files import atomic_path, save_image
from ..shapes import world

TEST_SEED = 20_261  # held-out scenes: split "test" and a seed no training run uses
ATTRIBUTES = world.ATTRIBUTES
METRICS = ("exact", "cosine", *ATTRIBUTES)


def training_data(seed: int, n: int, noise: float = 0.0) -> ShapesDataset:
    """n training scenes of the seed; a share `noise` of them get another random scene's prompt."""
    if not 0.0 <= noise < 1.0:
        raise InputError(f"noise must be a share in [0, 1), not {noise}")
    data = ShapesDataset(seed, n, "train")
    rng = random.Random(f"noise-{seed}")
    prompts = [prompt for _, prompt in data.rows]
    for i in rng.sample(range(n), round(noise * n)):
        data.rows[i] = (data.rows[i][0], prompts[rng.randrange(n)])
    return data


def evaluate(captioner: Captioner, scenes: list[world.Scene], embed: CachedEmbedder) -> dict:
    """Exact match, mean caption-prompt cosine, per-attribute accuracy, share outside the grammar."""
    images, prompts = [world.render(s) for s in scenes], [s.prompt() for s in scenes]
    cosines, captions = caption_cosines(captioner, images, prompts, embed)
    right = {a: 0 for a in ATTRIBUTES}
    unparsed = 0
    for caption, scene in zip(captions, scenes):
        try:
            parsed = world.parse_prompt(caption)
        except ValueError:
            unparsed += 1
            continue
        for a in ATTRIBUTES:
            right[a] += parsed[a] == getattr(scene, a)
    n = len(scenes)
    return {"exact": float(np.mean([c == p for c, p in zip(captions, prompts)])), "cosine": cosines.mean().item(),
            **{a: right[a] / n for a in ATTRIBUTES}, "unparsed": unparsed / n, "captions": captions}


def run(out_dir: Path, seeds: list[int], variants: list[str], n_train: int = 2000, n_test: int = 300,
        noise: float = 0.0, recipe: CaptionRecipe | None = None, embedder=None, progress: bool = True) -> dict:
    """Train every variant for every seed under `out_dir/caption/` (finished runs are reused, so an
    interrupted bench resumes) and score them on the same held-out scenes."""
    from ..describe.embed import SentenceEmbedder

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise InputError(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    recipe = recipe or CaptionRecipe()
    setup = {"n_train": n_train, "n_test": n_test, "noise": noise, "test_seed": TEST_SEED,
             "recipe": {k: v for k, v in asdict(recipe).items() if k not in ("variant", "seed")}}
    work = Path(out_dir) / "caption"
    _check_setup(work, setup)
    embed = CachedEmbedder(embedder or SentenceEmbedder())
    test = world.scenes(TEST_SEED, n_test, "test")
    runs: dict[str, dict[int, dict]] = {v: {} for v in variants}
    for seed in seeds:
        data = training_data(seed, n_train, noise)
        folder = work / f"seed{seed}"
        order = ["vanilla", *[v for v in variants if v != "vanilla"]]  # the others' warm-up is the vanilla run
        for variant in order:
            r = CaptionRecipe(**{**asdict(recipe), "variant": variant, "seed": seed})
            result = train_captioner(folder / variant, data, r, embedder=embed.embedder,
                                     warmup=folder / "vanilla" if variant != "vanilla" else None,
                                     progress=progress)
            if variant in variants:
                scores = evaluate(Captioner.load(result.folder), test, embed)
                runs[variant][seed] = {**scores, "train_seconds": result.seconds, "train_cpu_seconds": result.cpu_seconds}
    summary = {v: {m: _mean_std([runs[v][s][m] for s in seeds]) for m in (*METRICS, "unparsed", "train_seconds", "train_cpu_seconds")}
               for v in variants}
    return {"setup": {**setup, "seeds": seeds, "variants": variants}, "summary": summary,
            "runs": {v: {str(s): r for s, r in per.items()} for v, per in runs.items()}}


def _check_setup(work: Path, setup: dict) -> None:
    """Finished runs are reused only by a bench with the same settings."""
    path = work / "setup.json"
    if path.is_file():
        if json.loads(path.read_text()) != json.loads(json.dumps(setup)):
            raise InputError(f"{work} holds runs made with other settings ({path}); use another --out or delete it")
        return
    work.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(setup, indent=1) + "\n")


def _mean_std(values: list[float]) -> list[float]:
    return [float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0]


def table(result: dict) -> str:
    """One row per variant: mean (± std over seeds) of every metric."""
    seeds = result["setup"]["seeds"]
    lines = [f"held-out shapes scenes: {result['setup']['n_test']}, seeds {seeds}, "
             f"train pairs {result['setup']['n_train']} (label noise {result['setup']['noise']:.0%})",
             f"{'variant':<11}" + "".join(f"{m:>15}" for m in METRICS) + f"{'train CPU s':>13}"]
    for variant, s in result["summary"].items():
        cells = []
        for m in METRICS:
            mean, std = s[m]
            value = f"{mean:.3f}" if m == "cosine" else f"{mean:.1%}"
            spread = (f"±{std:.3f}" if m == "cosine" else f"±{std:.1%}") if len(seeds) > 1 else ""
            cells.append(f"{value + spread:>15}")
        lines.append(f"{variant:<11}" + "".join(cells) + f"{s['train_cpu_seconds'][0]:>13.0f}")
    if any(VARIANTS[v][1] for v in result["summary"]):
        lines.append("(variants with the curriculum also need the vanilla run: its scores are their warm-up)")
    return "\n".join(lines)


def save(result: dict, out_dir: Path, n_pictures: int = 8) -> tuple[Path, Path]:
    """caption.json (everything, captions included) and caption.png (test scenes with each variant's
    caption, first seed)."""
    from ..io.draw import grid

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "caption.json"
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n")
    scenes = world.scenes(TEST_SEED, min(n_pictures, result["setup"]["n_test"]), "test")
    seed = str(result["setup"]["seeds"][0])
    captions = [" / ".join([f"truth: {s.prompt()}"] + [f"{v}: {per[seed]['captions'][i]}"
                                                      for v, per in result["runs"].items()])
                for i, s in enumerate(scenes)]
    png_path = save_image(grid([world.render(s) for s in scenes], captions, cell=192, columns=4),
                          out_dir / "caption.png")
    return json_path, png_path
