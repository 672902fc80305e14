"""A model's editing recipe (`p2p.recipe`) reaches every front-end: a batch item, the web page and a masked
edit that set nothing get the recipe's controls for the kind of edit (its `mask_stop` too); what they set
overrides it field by field, and a whole set (`--controls paper`) replaces it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import redraft
from redraft.apps.cli import main
from redraft.errors import InputError
from redraft.p2p.recipe import Recipe

SOURCE = "a photo of a cat"
SWAP = "a photo of a dog"          # a word swap: the recipe's "replace" settings
INSERTION = "a photo of a big cat"  # an inserted word: its "refine" settings
RECIPE = {"controls": {"cross_replace_steps": 0.3, "self_replace_steps": 0.2, "mask_stop": 0.5},
          "by_kind": {"refine": {"cross_replace_steps": 0.6, "mask_stop": 0.0}}, "chosen": "a test recipe"}


@pytest.fixture(scope="module")
def recipe_folder(tiny_folder, tmp_path_factory):
    """The tiny SD pipeline with an editing recipe in its redraft.json, as the built-in model ships one."""
    folder = tmp_path_factory.mktemp("recipe") / "model"
    shutil.copytree(tiny_folder, folder)
    (folder / "redraft.json").write_text(json.dumps({"editing": RECIPE}))
    return folder


@pytest.fixture(scope="module")
def recipe_editor(recipe_folder):
    return redraft.load(str(recipe_folder), device="cpu")


@pytest.fixture(scope="module")
def inversion(recipe_editor, image):
    return recipe_editor.invert(image, SOURCE, method="ddim", steps=4, progress=False)


@pytest.fixture(scope="module")
def image():
    y, x = np.mgrid[0:16, 0:16]
    a = np.stack([x * 15, y * 15, np.full_like(x, 90)], -1).astype(np.uint8)
    a[4:10, 5:11] = (230, 40, 40)
    return Image.fromarray(a)


def box() -> np.ndarray:
    m = np.zeros((16, 16), bool)
    m[2:12, 3:13] = True
    return m


def test_a_batch_item_that_sets_nothing_edits_with_the_recipe(recipe_folder, image, tmp_path):
    image.save(tmp_path / "in.png")
    items = [{"id": "plain", "image": "in.png", "prompt": SOURCE, "targets": [SWAP], "steps": 3},
             {"id": "set", "image": "in.png", "prompt": SOURCE, "targets": [SWAP], "steps": 3, "cross_steps": 0.7}]
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))

    def rows(*options):
        out = tmp_path / f"out{len(options)}"
        r = CliRunner().invoke(main, ["--model", str(recipe_folder), "--device", "cpu", "batch",
                                      str(tmp_path / "items.jsonl"), "-o", str(out), *options])
        assert r.exit_code == 0, r.output
        return {row["id"]: row for row in map(json.loads, (out / "results.jsonl").read_text().splitlines())}

    recipe = rows()
    assert recipe["plain"]["controls"]["cross_replace_steps"] == 0.3  # the recipe's, not the paper's 0.8
    assert recipe["plain"]["controls"]["self_replace_steps"] == 0.2
    assert recipe["set"]["controls"]["cross_replace_steps"] == 0.7   # the item's column over the recipe
    assert recipe["set"]["controls"]["self_replace_steps"] == 0.2    # the rest still the recipe's
    paper = rows("--controls", "paper")
    assert paper["plain"]["controls"]["cross_replace_steps"] == 0.8 and paper["plain"]["controls"]["self_replace_steps"] == 0.4
    assert paper["set"]["controls"]["cross_replace_steps"] == 0.7


def test_the_web_page_starts_at_the_recipe_and_keeps_its_choice_by_kind(recipe_editor, image, tmp_path):
    from redraft.apps.web import App, box_value, build
    from redraft.p2p.controls import Controls

    page = build(recipe_editor)
    _, boxes = page.redraft_inputs
    start = {name: box.value for name, box in boxes.items()}
    shown = Controls.from_strings({n: box_value(n, v) for n, v in start.items()})
    assert (shown.cross_replace_steps, shown.self_replace_steps) == (0.3, 0.2)  # the recipe's, not the paper's
    image.save(tmp_path / "in.png")
    app = App(recipe_editor)
    unchanged = {n: box_value(n, v) for n, v in start.items()}
    *_, status = app.edit({}, str(tmp_path / "in.png"), SOURCE, "ddim", 3, f"{SWAP}\n{INSERTION}", controls=unchanged)
    # the insertion gets the recipe's refine value though the page's input started at the swap's
    assert "edit 1: cross_replace_steps 0.3" in status and "edit 2: cross_replace_steps 0.6" in status
    *_, status = app.edit({}, str(tmp_path / "in.png"), SOURCE, "ddim", 3, f"{SWAP}\n{INSERTION}",
                          controls=unchanged | {"cross_replace_steps": "0.9"})
    assert "edit 1: cross_replace_steps 0.9" in status and "edit 2: cross_replace_steps 0.9" in status


def test_a_masked_edit_blends_for_the_recipes_share_of_the_steps(recipe_editor, inversion):
    both = recipe_editor.edit(inversion, [SWAP, INSERTION], mask=box(), keep_outside="latents", progress=False)
    assert [both.part_of(k)[0].region.mask_stop for k in (1, 2)] == [0.5, 0.0]
    given = recipe_editor.edit(inversion, INSERTION, mask=box(), keep_outside="latents", mask_stop=1.0, progress=False)
    assert given.region.mask_stop == 1.0
    # the effect: with the recipe's 0 for an insertion the blend never runs (the same latents as no mask)
    free = recipe_editor.edit(inversion, INSERTION, progress=False)
    assert torch_equal(both.part_of(2)[0].latents[-1], free.latents[-1])
    assert not torch_equal(given.latents[-1], free.latents[-1])


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_a_recipe_with_a_bad_mask_stop_names_it():
    with pytest.raises(InputError, match="mask_stop"):
        Recipe(controls={"mask_stop": 1.5})
    with pytest.raises(InputError, match="direct"):
        Recipe(by_kind={"refine": {"direct": "yes"}})


def test_the_kind_probe_records_attention_maps_only_for_re_weightings(recipe_editor):
    """`per_edit` asks its probe for attention maps only when an edit is a re-weighting (the only kind that
    reads them); swaps and insertions are read from the predictions alone, so their probe records no map."""
    import torch

    from redraft.p2p.kinds import Probe
    from redraft.p2p.recipe import per_edit

    recipe = Recipe(by_kind={"global": {"cross_replace_steps": 0.9}})  # a key that needs the extent
    asked = []

    def fake_probe(maps):
        asked.append(maps)
        return Probe(torch.rand(3, 4, 4, 8) if maps else None, torch.rand(3, 4, 4, 4))

    tok = recipe_editor.pipeline.tokenizer
    per_edit(recipe, tok, [SOURCE, SWAP, INSERTION], None, {}, {}, fake_probe)
    per_edit(recipe, tok, [SOURCE, SOURCE], None, {"reweight": {"cat": 2.0}}, {}, fake_probe)
    assert asked == [False, True]
