"""The inversion methods' settings on the command line (`--method-setting` of invert and edit, checked
before any work), `redraft bench inversion --list`, and `redraft bench matrix` end to end on the
built-in model at its smallest."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
from PIL import Image
from click.testing import CliRunner

from redraft.apps.cli import main
from redraft.io.inversion_file import Inversion

PROMPT = "a photo of a cat"


@pytest.fixture
def run(tiny_folder):
    def go(*args):
        return CliRunner().invoke(main, ["--model", str(tiny_folder), "--device", "cpu", *args])

    return go


@pytest.fixture
def picture(image, tmp_path):
    path = tmp_path / "in.png"
    image.save(path)
    return str(path)


# ---------------------------------------------------------------- invert

def test_invert_method_setting_reaches_the_saved_inversion(run, picture, tmp_path):
    """mix=0.9 is recorded in the file and used: EDICT's second chain differs from the default mix's."""
    files = {}
    for name, extra in [("default", []), ("plain", ["--method-setting", "mix=0.9"]),
                        ("named", ["--method-setting", "edict:mix=0.9"])]:
        files[name] = tmp_path / f"{name}.safetensors"
        r = run("invert", picture, "-p", PROMPT, "-m", "edict", "--steps", "3", *extra, "-o", str(files[name]))
        assert r.exit_code == 0, r.output
    inv = {name: Inversion.load(path) for name, path in files.items()}
    assert inv["default"].method == "edict" and inv["default"].options["mix"] == pytest.approx(0.93)
    for name in ("plain", "named"):
        assert inv[name].method == "edict" and inv[name].options["mix"] == 0.9
    assert torch_equal(inv["plain"].extras["pivots_y"], inv["named"].extras["pivots_y"])
    assert not torch_equal(inv["plain"].extras["pivots_y"], inv["default"].extras["pivots_y"])


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())


@pytest.mark.parametrize("method, setting, message", [
    ("edict", "p=0.9", "the keys are edict: mix"),                          # unknown key: the valid ones named
    ("edict", "edict:p=0.9", "it has mix (default 0.93)"),
    ("edit-friendly", "mix=0.9", "the keys are edit-friendly: seed, eta"),
    ("ddim", "mix=0.9", "ddim take no settings; edit-friendly, edict, proxnpi, spdinv do"),
    ("edict", "mix=2", "0.5 < p <= 1"),                                     # bad values: the range named
    ("edict", "mix=0.3", "0.5 < p <= 1"),
    ("edict", "mix=lots", "a finite number"),
    ("edit-friendly", "seed=1.5", "a whole number"),
    ("edict", "proxnpi:quantile=0.5", "which is not chosen here"),
    ("edict", "mix", "KEY=VALUE or METHOD:KEY=VALUE"),
])
def test_invert_bad_method_settings_are_refused_before_the_model_loads(picture, tmp_path, method, setting, message):
    """Exit 2, one line naming what is allowed, nothing written; checked before the model is loaded (a
    model folder that does not exist would otherwise be the error)."""
    out = tmp_path / "out.safetensors"
    r = CliRunner().invoke(main, ["--model", str(tmp_path / "no-such-model"), "invert", picture, "-p", PROMPT,
                                  "-m", method, "--steps", "3", "--method-setting", setting, "-o", str(out)])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output and "no-such-model" not in r.output
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


def test_invert_bad_value_with_a_real_model_writes_nothing(run, picture, tmp_path):
    out = tmp_path / "out.safetensors"
    r = run("invert", picture, "-p", PROMPT, "-m", "edict", "--steps", "3", "--method-setting", "mix=1.5",
            "-o", str(out))
    assert r.exit_code == 2 and "edict setting mix" in r.output and "Traceback" not in r.output, r.output
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


# ---------------------------------------------------------------- edit

def _edit(run, source, out, *extra):
    return run("edit", source, "-p", PROMPT, "--steps", "3", *extra, "--target", "a photo of a dog", "-o", str(out))


def test_edit_with_method_setting_writes_its_outputs(run, picture, tmp_path):
    """edict with mix=0.9: the edit and its grid written, and the mix changes the edit (it reaches the inversion)."""
    out = tmp_path / "edit.png"
    r = _edit(run, picture, out, "-m", "edict", "--method-setting", "mix=0.9")
    assert r.exit_code == 0, r.output
    assert out.is_file() and (tmp_path / "edit.grid.png").is_file()
    edited = np.asarray(Image.open(out))
    assert edited.shape == (16, 16, 3) and edited.std() > 0
    other = tmp_path / "other.png"
    r = _edit(run, picture, other, "-m", "edict", "--method-setting", "mix=0.99")
    assert r.exit_code == 0, r.output
    assert not np.array_equal(edited, np.asarray(Image.open(other)))


@pytest.mark.parametrize("extra, message", [
    (["-m", "edict", "--method-setting", "edict:p=0.9"], "mix (default 0.93)"),
    (["-m", "edict", "--method-setting", "mix=0"], "0.5 < p <= 1"),
    (["--method-setting", "mix=0.9"], "no chosen inversion has a setting 'mix'"),  # the default: negative-prompt
])
def test_edit_bad_method_settings_write_nothing(picture, tmp_path, extra, message):
    out = tmp_path / "edit.png"
    r = CliRunner().invoke(main, ["--model", str(tmp_path / "no-such-model"), "edit", picture, "-p", PROMPT,
                                  *extra, "--target", "a photo of a dog", "-o", str(out)])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output
    assert not out.exists() and not (tmp_path / "edit.grid.png").exists()


def test_edit_of_a_saved_inversion_refuses_method_settings(run, picture, tmp_path):
    inv = tmp_path / "in.safetensors"
    assert run("invert", picture, "-p", PROMPT, "-m", "edict", "--steps", "3", "-o", str(inv)).exit_code == 0
    out = tmp_path / "edit.png"
    r = run("edit", str(inv), "--method-setting", "mix=0.9", "--target", "a photo of a dog", "-o", str(out))
    assert r.exit_code == 2 and "saved inversion keeps the settings" in r.output, r.output
    assert not out.exists()
    r = run("edit", str(inv), "--target", "a photo of a dog", "-o", str(out))
    assert r.exit_code == 0 and out.is_file(), r.output


# ---------------------------------------------------------------- bench

def test_bench_inversion_list_names_methods_and_settings(tmp_path):
    """--list prints every label with its settings' defaults, and stops before any model is loaded."""
    from redraft.bench.inversion import METHODS
    from redraft.inversions.methods import SETTINGS

    r = CliRunner().invoke(main, ["--model", str(tmp_path / "no-such-model"), "bench", "inversion", "--list",
                                  "--out", str(tmp_path / "bench")])
    assert r.exit_code == 0, r.output
    lines = {line.split("  ")[0]: line for line in r.output.splitlines() if line.strip()}
    assert list(lines) == list(METHODS)
    assert "mix=0.93" in lines["edict"] and "eta=1.0" in lines["edit-friendly"] and "rounds=" in lines["spdinv"]
    for label, kwargs in METHODS.items():
        known = SETTINGS.get(kwargs["method"], {})
        assert all(f"{k}={v!r}" in lines[label] for k in known for v in [known[k]])
        assert ("(no settings)" in lines[label]) == (not known)
    assert not (tmp_path / "bench").exists()


def test_bench_matrix_smallest_run(tmp_path):
    """Built-in model, 2 scenes, 3 steps, one edit kind, 3 inversions x 1 editor: the table has a row per
    pair, the CSV one per scene x pair, the chart is a picture; EDICT and edit-friendly reconstruct at the
    VAE ceiling while DDIM at 3 steps is far below it."""
    out = tmp_path / "bench"
    pairs = [("ddim", "p2p"), ("edit-friendly", "p2p"), ("edict", "p2p")]
    r = CliRunner().invoke(main, ["--device", "cpu", "bench", "matrix", "--scenes", "2", "--steps", "3",
                                  "--inversions", "ddim,edit-friendly,edict", "--editors", "p2p", "--kinds", "color",
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output
    ceiling = float(re.search(r"VAE ceiling ([\d.]+) dB", r.output).group(1))
    rows = {}
    for line in r.output.splitlines():
        cells = line.split()
        if len(cells) > 3 and (cells[0], cells[1]) in pairs:
            rows[(cells[0], cells[1])] = float(cells[2])
    assert list(rows) == pairs
    assert 20 < ceiling < 60
    for method in ("edit-friendly", "edict"):
        assert abs(rows[(method, "p2p")] - ceiling) <= 0.1, (method, rows, ceiling)
    assert rows[("ddim", "p2p")] < ceiling - 3  # the exact inversions are what reach the ceiling

    with open(out / "matrix.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 2 * len(pairs)
    assert sorted((t["inversion"], t["editor"], t["scene"]) for t in table) == sorted(
        (m, e, s) for m, e in pairs for s in ("0", "1"))
    assert all(t["kind"] == "color" and t["target_prompt"] != t["source_prompt"] for t in table)
    for pair, printed in rows.items():  # the table's column is the mean of the CSV's rows
        mean = np.mean([float(t["reconstruction_psnr"]) for t in table if (t["inversion"], t["editor"]) == pair])
        assert printed == pytest.approx(mean, abs=0.006)
    saved = json.loads((out / "matrix.json").read_text())
    assert saved["vae_psnr"] == pytest.approx(ceiling, abs=0.006) and len(saved["pairs"]) == len(pairs)
    with Image.open(out / "matrix.png") as chart:
        assert chart.width > 0 and chart.height > 0
        assert np.asarray(chart.convert("L")).std() > 0
