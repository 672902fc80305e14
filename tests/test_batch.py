"""`redraft batch`: manifests, per-item outputs and failures, resuming, PIE-Bench items, and two processes."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import redraft
from redraft.apps import batch as B
from redraft.eval import metrics
from redraft.apps.cli import main
from redraft.errors import InputError
from redraft.io.inversion_file import Inversion
from redraft.p2p.controls import Controls


def _pictures(folder: Path, n: int, size: int = 16) -> list[str]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size]
    names = []
    for k in range(n):
        a = np.stack([x * (255 // size), y * (255 // size), np.full_like(x, 40 * k)], -1).astype(np.uint8)
        a = np.clip(a + rng.integers(0, 30, a.shape), 0, 255).astype(np.uint8)
        names.append(f"im{k}.png")
        Image.fromarray(a).save(folder / names[-1])
    return names


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _batch(tiny_folder, *args):
    return CliRunner().invoke(main, ["--model", str(tiny_folder), "--device", "cpu", "batch", *args])


# ---------------------------------------------------------------- manifests

def test_csv_manifest_fields_and_defaults(tmp_path):
    _pictures(tmp_path, 1)
    (tmp_path / "items.csv").write_text(
        "image,prompt,targets,blend,blend_exclude,reweight,steps,method,direct,cross_steps,self_resolution,"
        "layout_guidance,feature_steps,renoise_step,renoise_strength\n"
        "im0.png,a photo of a cat,a photo of a dog | a photo of a red cat,cat dog,photo,red=2 dog=-1,5,ddim,true,0.5,16,"
        "0.05,0.7,0.6,0.9\n"
        "im0.png,,a photo of a dog,,,,,,,,,,,,\n"
        "im0.png,a cat,a dog,,,,x,,,,,,,,\n")
    items = B.read_manifest(tmp_path / "items.csv", B.Defaults(steps=7, controls={"self_replace_steps": 0.3}))
    first, second, third = items
    assert [i.id for i in items] == ["00001", "00002", "00003"]
    assert first.image == str(tmp_path / "im0.png")
    assert first.targets == ["a photo of a dog", "a photo of a red cat"]
    assert (first.steps, first.method, first.direct) == (5, "ddim", True)
    given = dict(blend=["cat", "dog"], blend_exclude=["photo"], reweight={"red": 2.0, "dog": -1.0},
                 cross_replace_steps=0.5, self_replace_steps=0.3, self_max_resolution=16, layout_guidance=0.05,
                 feature_replace_steps=0.7, renoise_step=0.6, renoise_strength=0.9)
    assert first.controls == {n: v for n, v in Controls(**given).to_json().items() if n in given}  # the set ones only
    assert not first.whole  # over the model's editing recipe
    assert second.prompt is None and second.steps == 7 and second.method == "negative-prompt"
    # nothing set but the run's option: every other control is the model's recipe's (`Editor.edit`), direct too
    assert second.controls == {"self_replace_steps": 0.3} and second.direct is None and second.error is None
    assert "steps must be a number" in third.error  # one bad value fails that item only


@pytest.mark.parametrize("lines, message", [
    ([{"image": "a.png", "traget": "x"}], "unknown field"),
    ([{"id": "a", "image": "a.png", "target": "x"}, {"id": "a", "image": "b.png", "target": "y"}], "used twice"),
    ([{"id": "../up", "image": "a.png", "target": "x"}], "cannot name a folder"),
    ([], "no items"),
])
def test_manifest_problems_are_input_errors(tmp_path, lines, message):
    with pytest.raises(InputError, match=message):
        B.read_manifest(_jsonl(tmp_path / "m.jsonl", lines))


def test_pie_bench_mapping_file(tmp_path):
    mapping = {
        "000000000001": {"image_path": "0_random/1.jpg", "original_prompt": "a [cat] sitting on the grass",
                         "editing_prompt": "a [dog] sitting on the grass", "editing_instruction": "make it a dog",
                         "editing_type_id": "1", "blended_word": "cat dog", "mask": [0, 4]},
        "000000000002": {"image_path": "0_random/2.jpg", "original_prompt": "a red house",
                         "editing_prompt": "a [blue] house", "editing_type_id": "0", "blended_word": "", "mask": []},
    }
    (tmp_path / "mapping_file.json").write_text(json.dumps(mapping))
    cat, house = B.read_manifest(tmp_path / "mapping_file.json")
    assert (cat.id, cat.prompt, cat.targets, cat.editing_type) == (
        "000000000001", "a cat sitting on the grass", ["a dog sitting on the grass"], "1")
    assert cat.image == str(tmp_path / "annotation_images" / "0_random" / "1.jpg")
    # PIE-Bench's Prompt-to-Prompt settings: 0.4 / 0.6, blend the two words, the target word x 2
    assert cat.controls == Controls(blend=["cat", "dog"], reweight={"dog": 2.0}, cross_replace_steps=0.4,
                                    self_replace_steps=0.6).to_json()
    assert house.controls["blend"] == [] and house.controls["reweight"] == {} and house.mask == []
    other = B.read_manifest(tmp_path / "mapping_file.json", B.Defaults(controls={"cross_replace_steps": 0.7}), images=tmp_path / "imgs")
    assert other[0].controls["cross_replace_steps"] == 0.7 and other[0].image == str(tmp_path / "imgs/0_random/1.jpg")


def test_edit_masks_follow_the_image_crop():
    item = B.Item(id="x", image="", prompt="p", targets=["t"], controls={}, method="ddim", steps=2, guidance=7.5)
    w, h = 32, 24
    item.mask = [v for r in range(h) for v in (r * w, 16)]  # run-length pairs of the left half, row by row
    clean, framed = B.edit_masks(item, Image.new("RGB", (w, h)), (16, 16))
    # centre crop to 24 x 24 (columns 4..27), then 16 x 16: the left half becomes the first 8 columns
    assert clean.shape == (16, 16)
    assert clean[:, :8].all() and not clean[:, 8:].any()
    assert framed[0].all() and framed[-1].all() and not framed[1:-1, 8:].any()


# ---------------------------------------------------------------- one process: outputs, failures, resume

def test_bad_items_fail_alone_and_resume_retries_only_them(tiny_folder, tmp_path, monkeypatch):
    names = _pictures(tmp_path, 2)
    good = {"id": "good", "image": names[0], "prompt": "a photo of a cat", "targets": ["a photo of a dog",
            "a photo of a big cat"], "steps": 3}
    records = [
        good,
        {"id": "missing", "image": "nowhere.png", "prompt": "a photo of a cat", "target": "a photo of a dog", "steps": 3},
        {"id": "long-source", "image": names[1], "prompt": "cat " * 90, "target": "a dog", "steps": 3},
        {"id": "long-target", "image": names[1], "prompt": "a cat", "target": "dog " * 90, "steps": 3},
        {"id": "bad-kind", "image": names[1], "prompt": "a cat", "target": "a big red dog", "kind": "replace", "steps": 3},
        {"id": "no-prompt", "image": names[1], "target": "a photo of a dog", "steps": 3},
    ]
    manifest = _jsonl(tmp_path / "items.jsonl", records)
    out = tmp_path / "out"
    r = _batch(tiny_folder, str(manifest), "-o", str(out), "--lpips", str(tmp_path / "no-lpips.safetensors"))
    assert r.exit_code == 1, r.output  # items failed: scripts can tell
    assert "1 ok, 5 failed of 6 items" in r.output and "5 item(s) failed" in r.output
    rows = {row["id"]: row for row in _rows(out)}
    assert list(rows) == [rec["id"] for rec in records]
    errors = {k: row["error"] for k, row in rows.items()}
    assert rows["good"]["status"] == "ok" and errors["good"] == ""
    assert "no such file" in errors["missing"]
    assert "source prompt" in errors["long-source"] and "has 90 tokens" in errors["long-source"]
    assert "target prompt" in errors["long-target"] and "has 90 tokens" in errors["long-target"]
    assert "words" in errors["bad-kind"]
    assert "has no describer" in errors["no-prompt"] and "give the source prompt" in errors["no-prompt"]
    assert all(rows[k]["status"] == "failed" for k in errors if k != "good")
    # a failure writes no outputs; in particular no inversion was run for a bad target
    assert not (out / "items" / "long-target" / "inversion.safetensors").exists()
    # the good item: inversion, reconstruction, both edits and the grid, and its metrics
    folder = out / "items" / "good"
    for name in ("inversion.safetensors", "reconstruction.png", "edit-1.png", "edit-2.png", "grid.png"):
        assert (folder / name).is_file(), name
    inv = Inversion.load(folder / "inversion.safetensors")
    assert (inv.method, inv.steps, inv.prompt) == ("negative-prompt", 3, "a photo of a cat")
    ok = rows["good"]
    source, recon = inv.image, np.asarray(Image.open(folder / "reconstruction.png"))
    assert ok["recon_psnr"] == pytest.approx(metrics.psnr(source, recon), abs=1e-9)
    assert ok["recon_ssim"] == pytest.approx(metrics.ssim(source, recon), abs=1e-9)
    assert math.isfinite(ok["vae_psnr"]) and ok["unet_forward"] == 3 and ok["targets"] == good["targets"]
    assert ok["recon_lpips"].startswith("unavailable: lpips weights") and "no such file" in ok["recon_lpips"]
    assert ok["edit2_clip"] == "unavailable: no clip weights given"
    csv_text = (out / "results.csv").read_text()
    assert csv_text.count("\n") == 7 and "a photo of a dog | a photo of a big cat" in csv_text
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["ok"], summary["failed"]) == (1, 5) and summary["means"]["recon_psnr"] == pytest.approx(ok["recon_psnr"])

    # again, with a describer: the good item is skipped, the failures are tried again, the described one works
    class Described:
        prompt = "a photo of a cat"

    monkeypatch.setattr(redraft.Editor, "describe", lambda self, image: Described(), raising=False)
    before = (folder / "row.json").stat().st_mtime_ns
    r = _batch(tiny_folder, str(manifest), "-o", str(out))
    assert r.exit_code == 1, r.output
    assert "2 ok, 4 failed of 6 items (1 already done)" in r.output
    report = json.loads((out / "processes" / "0.json").read_text())
    assert report["done"] == ["no-prompt"] and "good" not in report["failed"]
    assert (folder / "row.json").stat().st_mtime_ns == before
    described = {row["id"]: row for row in _rows(out)}["no-prompt"]
    assert (described["status"], described["prompt_from"], described["source_prompt"]) == \
        ("ok", "describe", "a photo of a cat")

    # changed settings of a done item: refused, unless --force
    good["targets"] = ["a photo of a bird"]
    _jsonl(manifest, records)
    r = _batch(tiny_folder, str(manifest), "-o", str(out))
    assert r.exit_code == 2 and "other settings" in r.output and "--force" in r.output
    r = _batch(tiny_folder, str(manifest), "-o", str(out), "--force")
    assert r.exit_code == 1, r.output  # the four bad items still fail
    assert {row["id"]: row for row in _rows(out)}["good"]["targets"] == ["a photo of a bird"]
    assert not (folder / "edit-2.png").exists()  # the redone item's old outputs are gone


def test_refuses_a_folder_that_is_not_a_batch_folder(tiny_folder, tmp_path):
    names = _pictures(tmp_path, 1)
    manifest = _jsonl(tmp_path / "m.jsonl", [{"image": names[0], "prompt": "a cat", "target": "a dog"}])
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    r = _batch(tiny_folder, str(manifest), "-o", str(out))
    assert r.exit_code == 2 and "not a redraft batch folder" in r.output
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_pie_bench_items_with_learned_metrics(tiny_folder, tiny_clip_folder, tiny_dino_folder, tmp_path):
    from conftest import build_tiny_lpips

    images = tmp_path / "annotation_images" / "0_random"
    images.mkdir(parents=True)
    names = _pictures(images, 2)
    edit = np.zeros((16, 16), bool)
    edit[4:12, 3:9] = True
    runs = [int(v) for r in range(4, 12) for v in (r * 16 + 3, 6)]
    mapping = {
        "000000000001": {"image_path": f"0_random/{names[0]}", "original_prompt": "a [cat] sitting on the grass",
                         "editing_prompt": "a [dog] sitting on the grass", "editing_type_id": "1",
                         "blended_word": "cat dog", "mask": runs},
        "000000000002": {"image_path": f"0_random/{names[1]}", "original_prompt": "a red house",
                         "editing_prompt": "a [blue] house", "editing_type_id": "0", "blended_word": "", "mask": runs},
    }
    (tmp_path / "mapping_file.json").write_text(json.dumps(mapping))
    lpips = build_tiny_lpips(tmp_path / "lpips.safetensors")
    out = tmp_path / "out"
    r = _batch(tiny_folder, str(tmp_path / "mapping_file.json"), "-o", str(out), "--steps", "2",
               "--clip", str(tiny_clip_folder), "--dino", str(tiny_dino_folder), "--lpips", str(lpips))
    assert r.exit_code == 0, r.output
    rows = _rows(out)
    assert [row["status"] for row in rows] == ["ok", "ok"], [row["error"] for row in rows]
    assert rows[0]["source_prompt"] == "a cat sitting on the grass" and rows[0]["editing_type"] == "1"
    clip = metrics.ClipScore.load(tiny_clip_folder)
    dino = metrics.StructureDistance.load(tiny_dino_folder)
    framed = metrics.decode_rle_mask(runs, (16, 16), border=True)
    assert framed.sum() > edit.sum()
    for row in rows:
        folder = out / "items" / row["id"]
        source = Inversion.load(folder / "inversion.safetensors").image
        edited = np.asarray(Image.open(folder / "edit-1.png"))
        target = row["targets"][0]
        # background preservation recomputed from the saved pictures: both ways, with their own masks
        clean = metrics.background(source, edited, edit)
        pie = metrics.pie_bench_background(source, edited, framed)
        for name in ("psnr", "mse", "ssim"):
            assert row[f"edit1_bg_{name}"] == pytest.approx(clean[name], rel=1e-9)
            assert row[f"edit1_bg_{name}_pie"] == pytest.approx(pie[name], rel=1e-9)
        assert row["edit1_bg_psnr_pie"] > row["edit1_bg_psnr"]  # the zeroed edit region counts as perfect
        assert row["edit1_clip"] == pytest.approx(clip(edited, target), abs=1e-4)
        assert row["edit1_clip_edited"] == pytest.approx(clip(edited, target, framed), abs=1e-4)
        assert row["edit1_structure"] == pytest.approx(dino(source, edited), rel=1e-5)
        assert row["edit1_structure"] > 0
        # the 16 px tiny model is too small for LPIPS: reported, not crashed on
        assert row["edit1_bg_lpips"].startswith("unavailable: LPIPS needs images of at least 32 px")
    by_type = json.loads((out / "summary.json").read_text())["by_editing_type"]
    assert sorted(by_type) == ["0", "1"]
    assert by_type["1"]["edit1_bg_psnr"] == pytest.approx(rows[0]["edit1_bg_psnr"])


# ---------------------------------------------------------------- two processes

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_share_the_items_and_a_second_run_does_nothing(tiny_folder, tmp_path, monkeypatch):
    names = _pictures(tmp_path, 3)
    records = [
        {"image": names[0], "prompt": "a photo of a cat", "target": "a photo of a dog", "steps": 2},
        {"image": names[1], "prompt": "a photo of a cat", "targets": ["a photo of a dog", "a photo of a red cat"],
         "blend": ["cat", "dog"], "steps": 2},
        {"image": names[2], "prompt": "a red house", "target": "a blue house", "method": "ddim", "direct": True,
         "steps": 2},
        {"image": names[0], "prompt": "a photo of a cat", "target": "a photo of a big cat", "method": "null-text",
         "steps": 2},
    ]
    ids = ["00001", "00002", "00003", "00004"]
    manifest = _jsonl(tmp_path / "items.jsonl", records)
    out = tmp_path / "out"
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1",
               "--main_process_port", str(_free_port()), "-m", "redraft",
               "--model", str(tiny_folder), "--device", "cpu", "batch", str(manifest), "-o", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    assert "4 ok, 0 failed of 4 items" in done.stdout  # printed once, by the main process
    assert done.stdout.count("results.csv") == 1
    reports = [json.loads((out / "processes" / f"{i}.json").read_text()) for i in (0, 1)]
    assert [rep["processes"] for rep in reports] == [2, 2]
    work = [item for rep in reports for item in rep["done"]]
    assert sorted(work) == ids and all(rep["done"] for rep in reports)  # each item once, both processes worked
    rows = _rows(out)
    assert [row["id"] for row in rows] == ids and all(row["status"] == "ok" for row in rows)
    for row in rows:
        assert row["id"] in reports[row["process"]]["done"]
        assert math.isfinite(row["recon_psnr"]) and math.isfinite(row["vae_psnr"])
    assert [row["method"] for row in rows] == ["negative-prompt", "negative-prompt", "ddim + direct", "null-text"]
    assert Inversion.load(out / "items" / "00004" / "inversion.safetensors").cost.unet_backward > 0
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 5 and [line.split(",")[0] for line in csv_lines[1:]] == ids

    # a second run finds everything done: it does not even load the model, and rewrites no item file
    stamps = {p: p.stat().st_mtime_ns for p in (out / "items").rglob("*")}

    def no_model(*args, **kwargs):
        raise AssertionError("the resumed run loaded the model")

    monkeypatch.setattr(redraft, "load", no_model)
    r = _batch(tiny_folder, str(manifest), "-o", str(out))
    assert r.exit_code == 0, r.output
    assert "4 ok, 0 failed of 4 items (4 already done)" in r.output
    assert json.loads((out / "processes" / "0.json").read_text())["done"] == []
    assert {p: p.stat().st_mtime_ns for p in (out / "items").rglob("*")} == stamps
    assert [row["id"] for row in _rows(out)] == ids


def test_a_second_run_into_a_folder_in_use_is_refused_at_once(tiny_folder, tmp_path):
    """While a run holds the folder (its OS lock), another is refused before any work, naming the holder;
    once the lock is gone (a run that ended, or was killed), the folder is free again."""
    import fcntl

    names = _pictures(tmp_path, 1)
    manifest = _jsonl(tmp_path / "m.jsonl", [{"image": names[0], "prompt": "a photo of a cat",
                                              "target": "a photo of a dog", "steps": 2}])
    out = tmp_path / "out"
    out.mkdir()
    (out / "batch.json").write_text(json.dumps({"format": B.FORMAT}))
    with open(out / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 12345 on elsewhere")
        held.flush()
        r = _batch(tiny_folder, str(manifest), "-o", str(out))
        assert r.exit_code == 2 and "another redraft batch (pid 12345 on elsewhere)" in r.output
        assert not (out / "items").exists()
    r = _batch(tiny_folder, str(manifest), "-o", str(out))
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("value, message", [("nan", "guidance is nan"), ("inf", "finite"), ("-1", "at least 0")])
def test_a_bad_guidance_fails_its_item(tmp_path, value, message):
    (tmp_path / "m.csv").write_text(f"image,prompt,target,guidance\nim.png,a cat,a dog,{value}\n")
    (item,) = B.read_manifest(tmp_path / "m.csv")
    assert message in item.error


# ---------------------------------------------------------------- inversion x editor

def test_inversions_by_editors_one_row_per_pair_and_resume(tiny_folder, tmp_path):
    """--inversions a,b --editors x,y: every item run once per pair, one row each, resumed as a whole;
    a method's --method-setting reaches its inversions (EDICT's mix in the saved file)."""
    names = _pictures(tmp_path, 1)
    manifest = _jsonl(tmp_path / "items.jsonl", [{"id": "cat", "image": names[0], "prompt": "a photo of a cat",
                                                  "target": "a photo of a dog", "steps": 3}])
    out = tmp_path / "out"
    args = [str(manifest), "-o", str(out), "--inversions", "negative-prompt,edict", "--editors", "p2p,masactrl",
            "--method-setting", "edict:mix=0.9"]
    r = _batch(tiny_folder, *args)
    assert r.exit_code == 0, r.output
    rows = {row["id"]: row for row in _rows(out)}
    pairs = [(m, e) for m in ("negative-prompt", "edict") for e in ("p2p", "masactrl")]
    assert list(rows) == [f"cat--{m}--{e}" for m, e in pairs]
    assert [(row["method"], row["editor"]) for row in rows.values()] == pairs
    assert all(row["status"] == "ok" for row in rows.values())
    # exact passes per method: NPI 1 per step; EDICT 2 chains x (uncond, cond) per step
    assert [row["unet_forward"] for row in rows.values()] == [3, 3, 12, 12]
    for e in ("p2p", "masactrl"):  # EDICT reconstructs exactly (the random VAE's ceiling is low: NPI is near it too)
        assert rows[f"cat--edict--{e}"]["recon_psnr"] == pytest.approx(rows[f"cat--edict--{e}"]["vae_psnr"], abs=0.1)
    # the editors differ: MasaCtrl's target reads the source's keys and values, P2P's its attention maps
    assert not np.array_equal(np.asarray(Image.open(out / "items" / "cat--edict--p2p" / "edit-1.png")),
                              np.asarray(Image.open(out / "items" / "cat--edict--masactrl" / "edit-1.png")))
    inv = Inversion.load(out / "items" / "cat--edict--p2p" / "inversion.safetensors")
    assert inv.method == "edict" and inv.options["mix"] == 0.9
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["by_pair"]) == [f"{m} x {e}" for m, e in pairs]
    r = _batch(tiny_folder, *args)
    assert r.exit_code == 0 and "4 ok, 0 failed of 4 items (4 already done)" in r.output
    # another mix: those items' settings changed, so they are not done (refused without --force)
    r = _batch(tiny_folder, *args[:-1], "edict:mix=0.95")
    assert r.exit_code == 2 and "2 item(s)" in r.output and "--force" in r.output


@pytest.mark.parametrize("extra, message", [
    (["--inversions", "ddim,edict2"], "the inversions are: ddim"),
    (["--inversions", "ddim", "--editors", "p2p,ip2p"], "the editors are: p2p, masactrl, pnp"),
    (["--editors", "p2p"], "--editors goes with --inversions"),
    (["--inversions", "ddim,edict", "--method-setting", "edict:p=0.9"], "mix (default 0.93)"),
    (["--inversions", "ddim", "--method-setting", "mix=0.9"], "no chosen inversion has a setting 'mix'"),
])
def test_bad_pairs_and_settings_are_refused_before_any_work(tiny_folder, tmp_path, extra, message):
    names = _pictures(tmp_path, 1)
    manifest = _jsonl(tmp_path / "items.jsonl", [{"image": names[0], "prompt": "a cat", "target": "a dog", "steps": 2}])
    r = _batch(tiny_folder, str(manifest), "-o", str(tmp_path / "out"), *extra)
    assert r.exit_code == 2 and message in r.output, r.output
    assert not (tmp_path / "out").exists()
