"""The shipped built-in model: plain diffusers loads it, it has SD 1.x's layout, and it draws what it is told."""

from __future__ import annotations

import json

import numpy as np
import pytest

import redraft
from redraft.loading import builtin_path
from redraft.shapes import world


def test_layout_and_size():
    path = builtin_path()
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert part in index and (path / part).is_dir()
    weights = list(path.rglob("*.safetensors"))
    assert len(weights) == 3 and not list(path.rglob("*.bin"))
    assert sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) < 20 * 2**20


def test_plain_diffusers_loads_it():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(builtin_path(), safety_checker=None, requires_safety_checker=False)
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == world.CANVAS


@pytest.fixture(scope="module")
def builtin():
    return redraft.load(device="cpu")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_generates_what_the_prompt_says(builtin, seed):
    scene = world.scenes(100 + seed, 1, split="test")[0]
    image = builtin.generate(scene.prompt(), seed=seed, steps=50, progress=False)[0]
    agree = world.agrees(world.read(np.asarray(image)), scene.prompt())
    assert all(agree.values()), (scene.prompt(), agree)
