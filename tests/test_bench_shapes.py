"""`redraft bench shapes`: which words a locally blended edit uses, and that every edit kind is measured."""

from __future__ import annotations

import random

import pytest

import redraft
from redraft.bench.shapes import blend_words, inversion_and_editing
from redraft.shapes import world


def test_blend_words_mark_the_part_that_changes():
    scene = world.Scene(shape="circle", color="red", size="small", background="white", cx=30, cy=30)
    rng = random.Random(0)
    edits = {kind: world.random_edit(scene, kind, rng) for kind in world.EDIT_KINDS}
    # background edits change the background and keep the object (its noun's region is excluded)
    assert blend_words(edits["background"]) == blend_words(edits["add-background"]) == ((), ("circle",))
    assert blend_words(edits["color"]) == blend_words(edits["size"]) == blend_words(edits["reweight"]) == (("circle",), ())
    assert blend_words(edits["shape"]) == (("circle", edits["shape"].target.shape), ())


def test_blended_editing_measures_every_kind():
    editor = redraft.load(device="cpu")
    result = inversion_and_editing(editor, 1, ["direct"], steps=10, blend=True)["direct"]
    assert set(world.EDIT_KINDS) <= set(result)
    assert all(0.0 <= result[kind] <= 1.0 for kind in world.EDIT_KINDS)
    # Direct Inversion keeps the source branch on its pivot: the VAE's ceiling (35.7 dB), where the
    # 10-step DDIM reconstruction off the pivot gets about 25 dB
    assert result["psnr"] > 30
    for kind in world.EDIT_KINDS:
        assert result[kind] <= result[f"{kind} attributes"] and result[f"{kind} shift"] >= 0


def test_outcome_tells_a_moved_edit_from_a_misdrawn_one():
    from redraft.bench.shapes import kept, outcome

    truth = world.Scene(shape="square", color="blue", size="large", background="black", cx=30, cy=30)
    def check(scene, same, shift, ok):
        image = world.render(scene)
        assert outcome(image, truth)[0] == same and outcome(image, truth)[1] == pytest.approx(shift, abs=1e-6)
        assert kept(image, truth) == ok

    check(truth, True, 0, True)
    check(truth.replace(cx=36), True, 6, False)
    check(truth.replace(color="red", cy=32), False, 2, False)


def test_table_without_edits_says_so():
    from redraft.bench.shapes import table

    text = table({"generation": {"all": 0.5, "shape": 0.5}, "vae_psnr": 30.0, "inversion_and_editing": {}})
    assert "generation (all attributes right, guidance 7.5): 50.0%" in text and "editing: not run" in text and "nan" not in text


def test_controls_by_kind_reach_only_that_kinds_edits():
    """`by_kind` overrides the controls of its kinds' edits only (the demo's: no feature injection for
    background edits); every other edit, batched apart from them, keeps the common controls."""
    editor = redraft.load(device="cpu")
    calls = []
    edit = editor.edit

    def spy(inversion, prompts, **controls):
        calls.append(([prompts] if isinstance(prompts, str) else list(prompts), controls["feature_replace_steps"]))
        return edit(inversion, prompts, **controls)

    editor.edit = spy
    background = ("background", "add-background")
    inversion_and_editing(editor, 1, ["direct"], steps=4, feature_replace_steps=0.7,
                          by_kind={kind: {"feature_replace_steps": 0.0} for kind in background})
    scene, rng = world.scenes(4, 1, split="test")[0], random.Random(0)  # the bench's first scene and edits
    kinds: dict[str, set] = {}
    for kind in world.EDIT_KINDS:
        kinds.setdefault(world.random_edit(scene, kind, rng).target_prompt, set()).add(kind)
    made = [(kinds[p], steps) for prompts, steps in calls for p in prompts]
    assert {k for ks, _ in made for k in ks} == set(world.EDIT_KINDS)
    assert all(steps == (0.0 if ks <= set(background) else 0.7) for ks, steps in made), made


def test_describing_measures_the_describer_or_says_there_is_none(tiny_folder):
    from redraft.bench.shapes import describing, table

    result = describing(redraft.load(device="cpu"), 32)  # the shipped describer: 98% of 256 exactly right
    assert result["n"] == 32 and result["exact_prompt"] >= 0.85 and min(result[a] for a in world.ATTRIBUTES) >= 0.9
    missing = describing(redraft.load(str(tiny_folder), device="cpu"), 32)
    assert "has no describer" in missing["not_run"]
    text = table({"generation": None, "vae_psnr": 30.0, "describe": missing, "inversion_and_editing": {}})
    assert "describe: not run (the model" in text
