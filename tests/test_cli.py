"""The command line: outputs written, and each bad input gives one clear error and writes nothing."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from redraft.cli import main


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
