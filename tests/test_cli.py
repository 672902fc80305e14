"""The command line: outputs written, and each bad input gives one clear error and writes nothing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from click.testing import CliRunner

from redraft.apps.cli import main
from redraft.p2p.controls import Controls


@pytest.fixture
def run(tiny_folder):
    def go(*args):
        return CliRunner().invoke(main, ["--model", str(tiny_folder), "--device", "cpu", *args])

    return go


def test_invert_then_reconstruct(run, image, tmp_path):
    image.save(tmp_path / "in.png")
    inv = tmp_path / "in.safetensors"
    r = run("invert", str(tmp_path / "in.png"), "--prompt", "a photo of a cat", "--steps", "5", "-o", str(inv))
    assert r.exit_code == 0, r.output
    assert inv.is_file() and "5 UNet passes" in r.output
    out = tmp_path / "rec.png"
    r = run("reconstruct", str(inv), "-o", str(out))
    assert r.exit_code == 0, r.output
    assert out.is_file() and "PSNR" in r.output
    r = run("reconstruct", str(inv), "-o", str(out))  # exists: refused, unchanged
    assert r.exit_code == 2 and "--force" in r.output


@pytest.mark.parametrize("case, message", [
    ("not-an-image", "not an image"),
    ("empty-prompt", "empty"),
    ("long-prompt", "tokens"),
    ("not-a-pipeline", "model_index.json"),
])
def test_bad_input_writes_nothing(run, image, tmp_path, tiny_folder, case, message):
    good = tmp_path / "in.png"
    image.save(good)
    bad = tmp_path / "bad.png"
    bad.write_text("hello")
    args = {"not-an-image": [str(bad), "--prompt", "a cat"],
            "empty-prompt": [str(good), "--prompt", ""],
            "long-prompt": [str(good), "--prompt", "a cat " * 50],
            "not-a-pipeline": [str(good), "--prompt", "a cat"]}[case]
    out = tmp_path / "out.safetensors"
    if case == "not-a-pipeline":
        r = CliRunner().invoke(main, ["--model", str(tmp_path), "invert", *args, "-o", str(out)])
    else:
        r = run("invert", *args, "--steps", "3", "-o", str(out))
    assert r.exit_code == 2
    assert message in r.output and "Traceback" not in r.output
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


def test_reconstruct_refuses_a_file_that_is_not_an_inversion(run, tmp_path):
    f = tmp_path / "x.safetensors"
    f.write_bytes(b"not safetensors")
    r = run("reconstruct", str(f), "-o", str(tmp_path / "y.png"))
    assert r.exit_code == 2 and "not a saved inversion" in r.output


def test_edit_generate_and_attention_write_pictures(run, image, tmp_path):
    from PIL import Image

    image.save(tmp_path / "in.png")
    out = tmp_path / "edit.png"
    r = run("edit", str(tmp_path / "in.png"), "--prompt", "a photo of a cat", "--target", "a photo of a dog",
            "--target", "a photo of a big cat", "--reweight", "cat=2", "--steps", "4", "-o", str(out))
    assert r.exit_code == 0, r.output
    grid = Image.open(tmp_path / "edit.grid.png")
    assert Image.open(out).size == (16, 16)
    assert grid.width > 3 * 200  # input, reconstruction and two edits side by side
    r = run("generate", "--prompt", "a photo of a cat", "--target", "a photo of a lion", "--steps", "4",
            "-o", str(tmp_path / "gen.png"))
    assert r.exit_code == 0, r.output
    r = run("attention", str(tmp_path / "in.png"), "--prompt", "a photo of a cat", "--steps", "4",
            "-o", str(tmp_path / "maps.png"))
    assert r.exit_code == 0 and "5 words" in r.output, r.output


def test_generate_self_resolution_reaches_the_controls(run, tmp_path):
    """--self-resolution 0 injects self-attention in no layer (the same picture as --self-steps 0), 64 in all."""
    import numpy as np
    from PIL import Image

    def picture(name, *extra):
        r = run("generate", "--prompt", "a photo of a cat", "--target", "a photo of a dog", "--steps", "4",
                "--cross-steps", "0", *extra, "-o", str(tmp_path / name))
        assert r.exit_code == 0, r.output
        return np.asarray(Image.open(tmp_path / name)).astype(int)

    none = picture("none.png", "--self-steps", "0")
    assert np.array_equal(picture("zero.png", "--self-steps", "1", "--self-resolution", "0"), none)
    assert not np.array_equal(picture("all.png", "--self-steps", "1", "--self-resolution", "64"), none)


@pytest.mark.parametrize("extra, message", [
    (["--reweight", "cat=lots"], "not a number"),
    (["--reweight", "zebra=2"], "not a word of the prompt"),
    (["--kind", "replace", "--target", "a photo of a big red cat"], "words"),
    (["--blend", "cat", "--blend-exclude", "horse"], "horse"),
    (["--skip-steps", "1"], "skip_steps"),
])
def test_edit_errors_write_nothing(run, image, tmp_path, extra, message):
    image.save(tmp_path / "in.png")
    out = tmp_path / "edit.png"
    args = ["edit", str(tmp_path / "in.png"), "--prompt", "a photo of a cat", "--steps", "3", "-o", str(out)]
    if "--target" not in extra:
        args += ["--target", "a photo of a cat"]
    r = run(*args, *extra)
    assert r.exit_code == 2 and message in r.output, r.output
    assert not out.exists()


def test_generate_layout_guidance_reaches_the_controls(run, tmp_path):
    import numpy as np
    from PIL import Image

    def picture(name, *extra):
        r = run("generate", "--prompt", "a photo of a cat", "--target", "a photo of a dog", "--steps", "4",
                *extra, "-o", str(tmp_path / name))
        assert r.exit_code == 0, r.output
        return np.asarray(Image.open(tmp_path / name)).astype(int)

    off = picture("off.png")
    assert np.array_equal(picture("zero.png", "--layout-guidance", "0"), off)
    assert not np.array_equal(picture("on.png", "--layout-guidance", "0.5", "--layout-steps", "1"), off)
    assert not np.array_equal(picture("features.png", "--feature-steps", "1"), off)  # and feature injection's
    assert not np.array_equal(picture("renoise.png", "--renoise-step", "0.5", "--renoise-strength", "0.9"), off)
    r = run("generate", "--prompt", "a photo of a cat", "--target", "a photo of a dog", "--layout-guidance", "-1",
            "-o", str(tmp_path / "bad.png"))
    assert r.exit_code != 0 and "layout-guidance" in r.output and not (tmp_path / "bad.png").exists()


def test_bench_shapes_feature_options_reach_the_bench(run, tmp_path, monkeypatch):
    """`--background-feature-steps` becomes the background kinds' own controls; `--seed` the scenes' seed."""
    from redraft.bench import shapes

    seen = {}

    def fake_run(editor, n_generation, n_edit, methods, **kwargs):
        seen.update(kwargs)
        return {"generation": None, "vae_psnr": 30.0, "inversion_and_editing": {}}

    monkeypatch.setattr(shapes, "run", fake_run)
    r = run("bench", "shapes", "--feature-steps", "0.7", "--background-feature-steps", "0", "--seed", "11",
            "--out", str(tmp_path))
    assert r.exit_code == 0, r.output
    assert seen["seed"] == 11 and seen["feature_replace_steps"] == 0.7
    assert seen["by_kind"] == {"background": {"feature_replace_steps": 0.0}, "add-background": {"feature_replace_steps": 0.0}}
    run("bench", "shapes", "--feature-steps", "0.7", "--out", str(tmp_path))
    assert seen["by_kind"] == {} and seen["seed"] == 3  # every kind the same features; the benchmark's scenes
    seen.clear()
    assert run("bench", "shapes", "--recipe", "--out", str(tmp_path)).exit_code == 0
    # no control reaches the edits: the model's recipe chooses them per kind (`Editor.edit` with none)
    controls = {n for n, _, _ in Controls.fields()} - {"blend"}  # `blend` is also run()'s LocalBlend switch
    assert seen["by_kind"] == {} and not controls & set(seen), seen
    r = run("bench", "shapes", "--recipe", "--cross-steps", "0.5", "--out", str(tmp_path))
    assert r.exit_code == 2 and "--cross-steps" in r.output, r.output


def test_demo_refuses_to_replace_its_files_without_force(tmp_path):
    (tmp_path / "grid.png").write_bytes(b"mine")
    r = CliRunner().invoke(main, ["--device", "cpu", "demo", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "grid.png exists" in r.output and "--force" in r.output
    assert (tmp_path / "grid.png").read_bytes() == b"mine" and not (tmp_path / "summary.json").exists()


@pytest.mark.parametrize("args, message", [
    (["invert", "IMG", "-p", "a cat", "--guidance", "nan", "-o", "OUT.safetensors"], "--guidance"),
    (["invert", "IMG", "-p", "a cat", "--guidance", "inf", "-o", "OUT.safetensors"], "finite"),
    (["invert", "IMG", "-p", "a cat", "--guidance", "-1", "-o", "OUT.safetensors"], "at least 0"),
    (["invert", "IMG", "-p", "a cat", "--steps", "0", "-o", "OUT.safetensors"], "--steps"),
    (["edit", "IMG", "-p", "a cat", "-t", "a dog", "-o", "OUT.txt"], "unknown image type '.txt'"),
    (["edit", "IMG", "-p", "a cat", "-t", "a dog", "-o", "OUT.png"], "OUT.grid.png exists"),
    (["generate", "-p", "a cat", "-t", "a dog", "--steps", "0", "-o", "OUT.png"], "--steps"),
    (["attention", "IMG", "-p", "a cat", "-o", "OUT.gif"], "unknown image type"),
    (["example", "OUT.bmp"], "unknown image type"),
])
def test_arguments_and_outputs_are_checked_before_the_model_loads(image, tmp_path, args, message):
    """A model id that cannot load would be the error if anything got that far: these fail first."""
    image.save(tmp_path / "in.png")
    (tmp_path / "OUT.grid.png").write_bytes(b"someone's grid")
    args = [a.replace("IMG", str(tmp_path / "in.png")).replace("OUT", str(tmp_path / "out")) for a in args]
    if "OUT.grid.png exists" in message:
        (tmp_path / "out.grid.png").write_bytes(b"someone's grid")
        message = "out.grid.png exists"
    r = CliRunner().invoke(main, ["--model", str(tmp_path / "no-such-model"), *args])
    assert r.exit_code == 2 and message in r.output and "no-such-model" not in r.output, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.png", "OUT.grid.png"] +
                                                                (["out.grid.png"] if "grid" in message else []))


def test_an_inversion_saved_under_any_name_is_recognised_by_content(run, image, tmp_path):
    image.save(tmp_path / "in.png")
    saved = tmp_path / "scene.inv"
    r = run("invert", str(tmp_path / "in.png"), "-p", "a photo of a cat", "--steps", "3", "-o", str(saved))
    assert r.exit_code == 0, r.output
    r = run("edit", str(saved), "-t", "a photo of a dog", "-o", str(tmp_path / "dog.png"))
    assert r.exit_code == 0 and (tmp_path / "dog.png").is_file(), r.output
    r = run("reconstruct", str(saved), "-o", str(tmp_path / "rec.png"))
    assert r.exit_code == 0, r.output


def test_of_two_inversions_to_one_new_path_the_second_is_refused(run, image, tmp_path, monkeypatch):
    """The other run writes the file while this one inverts: this one fails and leaves it as it is."""
    import redraft

    image.save(tmp_path / "in.png")
    out = tmp_path / "x.safetensors"
    real = redraft.Editor.invert

    def invert_while_another_finishes(self, *args, **kwargs):
        inversion = real(self, *args, **kwargs)
        out.write_bytes(b"the other run's inversion")
        return inversion

    monkeypatch.setattr(redraft.Editor, "invert", invert_while_another_finishes)
    r = run("invert", str(tmp_path / "in.png"), "-p", "a photo of a cat", "--steps", "2", "-o", str(out))
    assert r.exit_code == 2 and "exists" in r.output, r.output
    assert out.read_bytes() == b"the other run's inversion" and not list(tmp_path.glob(".*tmp*"))


def test_the_newcomers_first_commands(tmp_path):
    """`redraft example` writes the README's scene.png (a held-out scene) and `redraft vocabulary` lists
    the built-in model's words, which the README's prompts use."""
    from redraft.shapes import world

    r = CliRunner().invoke(main, ["--device", "cpu", "example", str(tmp_path / "scene.png")])
    assert r.exit_code == 0 and "a large red circle on a white background (held out from training: True)" in r.output
    assert world.read(np.asarray(Image.open(tmp_path / "scene.png"))).shape == "circle"
    r = CliRunner().invoke(main, ["--device", "cpu", "vocabulary"])
    assert r.exit_code == 0 and "reads at most 14" in r.output, r.output
    words = r.output.strip().splitlines()[-1].split()
    assert {"red", "circle", "white", "background", "large"} <= set(words) and "cat" not in words
