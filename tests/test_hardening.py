import struct, zlib
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
