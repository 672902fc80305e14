"""Hardening: every bad input is a clear InputError before any work, and no writer loses another's file
(images over the pixel cap or with NaN, unreachable hub ids, racing writers, output permissions)."""

from __future__ import annotations

import json
import os
import stat
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from redraft.errors import InputError
from redraft.io.image import MAX_PIXELS, check_size, load_image


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that claims width x height pixels: signature, IHDR, one tiny IDAT, IEND (never decodable in full)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("width, height", [(20000, 20000), (12000, 12000), (8000, 6000)])
def test_an_image_over_the_cap_is_refused_from_its_header(tmp_path, width, height):
    path = _png_header(tmp_path / "big.png", width, height)
    for call in (load_image, check_size):
        with pytest.raises(InputError, match=r"megapixels, more than the 40 allowed; downscale it first"):
            call(path)


def test_the_cap_names_the_size(tmp_path):
    path = _png_header(tmp_path / "big.png", 8000, 6000)
    with pytest.raises(InputError, match=r"big.png is 8000 x 6000 = 48.0 megapixels"):
        load_image(path)
    assert check_size(_png_header(tmp_path / "ok.png", 6000, 4000)) == (6000, 4000)  # 24 MP: header only
    assert MAX_PIXELS == 40_000_000


def test_the_cap_can_be_changed(tmp_path):
    path = tmp_path / "pic.png"
    Image.new("RGB", (40, 30)).save(path)
    with pytest.raises(InputError, match="40 x 30 = 0.0 megapixels"):
        load_image(path, max_pixels=1000)
    with pytest.raises(InputError, match="downscale"):
        load_image(Image.new("RGB", (40, 30)), max_pixels=1000)
    with pytest.raises(InputError, match="the image array is 40 x 30"):
        load_image(np.zeros((30, 40, 3), np.uint8), max_pixels=1000)
    assert load_image(path, max_pixels=1200).size == (40, 30)


def test_check_size_of_a_file_that_is_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("hello")
    with pytest.raises(InputError, match="not an image that can be read"):
        check_size(path)
    with pytest.raises(InputError, match="no such file"):
        check_size(tmp_path / "missing.png")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_an_array_with_nan_or_inf_is_refused(bad):
    a = np.full((8, 8, 3), 0.5, np.float32)
    a[2, 3, 1] = bad
    with pytest.raises(InputError, match=r"1 NaN or infinite values .*nan_to_num"):
        load_image(a)
    with pytest.raises(InputError, match=r"192 NaN or infinite values"):
        load_image(torch.full((3, 8, 8), float("nan")))


# ---------------------------------------------------------------- hub ids that cannot be fetched

def test_a_hub_id_that_cannot_be_fetched_offline(monkeypatch):
    import huggingface_hub.constants

    from redraft.io.loading import load_pipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once, at import
    with pytest.raises(InputError) as e:
        load_pipeline("nobody-at-all/no-such-model-3f9c", torch.device("cpu"), torch.float32)
    message = str(e.value)
    assert "nobody-at-all/no-such-model-3f9c is neither a local folder nor reachable on the hub" in message
    assert "HF_HUB_OFFLINE" in message and "local diffusers pipeline folder" in message
    assert "stacktrace" not in message


# ---------------------------------------------------------------- writing outputs

def _race(path: Path, writers: int = 2, replace: bool = False) -> list:
    """`writers` threads write to one new path at once, all past any check before any publishes."""
    import threading

    from redraft.io.files import atomic_path

    ready, results = threading.Barrier(writers), [None] * writers

    def write(k: int) -> None:
        try:
            with atomic_path(path, replace=replace) as tmp:
                tmp.write_text(f"writer {k}")
                ready.wait()
            results[k] = "won"
        except InputError as e:
            results[k] = e

    threads = [threading.Thread(target=write, args=(k,)) for k in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_of_two_writers_to_one_new_path_exactly_one_wins(tmp_path):
    for round in range(5):
        path = tmp_path / f"out-{round}.png"
        results = _race(path, writers=2)
        assert results.count("won") == 1
        loser = next(r for r in results if r != "won")
        assert isinstance(loser, InputError) and "exists" in str(loser) and "--force" in str(loser)
        assert path.read_text() == f"writer {results.index('won')}"
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp left


def test_replacing_writers_all_succeed(tmp_path):
    assert _race(tmp_path / "out.json", writers=3, replace=True) == ["won"] * 3


def test_save_image_and_write_json_without_replace(tmp_path):
    from redraft.io.files import save_image, write_json

    image = Image.new("RGB", (4, 4))
    save_image(image, tmp_path / "a.png", replace=False)
    write_json(tmp_path / "a.json", {"x": 1}, replace=False)
    with pytest.raises(InputError, match=r"a.png exists; choose another output path or pass --force"):
        save_image(image, tmp_path / "a.png", replace=False)
    with pytest.raises(InputError, match="exists"):
        write_json(tmp_path / "a.json", {"x": 2}, replace=False)
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    write_json(tmp_path / "a.json", {"x": 3})  # the default replaces, as before
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 3}


def test_without_hard_links_a_writer_still_never_replaces(tmp_path, monkeypatch):
    import errno

    from redraft.io.files import atomic_path

    def no_link(*args):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    with atomic_path(tmp_path / "a.txt", replace=False) as tmp:
        tmp.write_text("first")
    with pytest.raises(InputError, match="exists"):
        with atomic_path(tmp_path / "a.txt", replace=False) as tmp:
            tmp.write_text("second")
    assert (tmp_path / "a.txt").read_text() == "first"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_get_the_mode_of_a_normally_created_file(tmp_path, umask, mode):
    from redraft.io.files import save_image, write_json

    old = os.umask(umask)
    try:
        write_json(tmp_path / "a.json", {})
        save_image(Image.new("RGB", (4, 4)), tmp_path / "a.png", replace=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "a.png").stat().st_mode) == mode


def test_an_overwritten_file_keeps_its_mode(tmp_path):
    from redraft.io.files import write_json

    path = write_json(tmp_path / "a.json", {})
    path.chmod(0o640)
    write_json(path, {"x": 1})
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
