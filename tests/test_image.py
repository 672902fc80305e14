"""redraft.image: loading any file, mode or array as RGB; EXIF orientation; fit; tensor round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from redraft.errors import InputError
from redraft.io.image import fit, load_image, to_pil, to_tensor, to_uint8

WHITE = [255, 255, 255]


def _px(im: Image.Image, x: int, y: int) -> list[int]:
    assert im.mode == "RGB"
    return np.asarray(im)[y, x].tolist()


def _close(a, b, tol: int = 12) -> bool:
    return bool(np.all(np.abs(np.asarray(a, int) - np.asarray(b, int)) <= tol))


# ---------------------------------------------------------------- files

def _picture(w: int = 40, h: int = 30) -> Image.Image:
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = (200, 30, 30)
    a[:, w // 2 :] = (30, 30, 200)
    return Image.fromarray(a)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_load_from_a_path(tmp_path, suffix):
    path = tmp_path / f"pic{suffix}"
    _picture().save(path)
    for p in (path, str(path)):
        im = load_image(p)
        assert im.mode == "RGB" and im.size == (40, 30)
        tol = 0 if suffix == ".png" else 12
        assert _close(_px(im, 5, 15), (200, 30, 30), tol)
        assert _close(_px(im, 35, 15), (30, 30, 200), tol)


def test_load_a_16_bit_png(tmp_path):
    a = np.full((6, 5), 1000, np.uint16)
    a[0, 0] = 65535
    Image.fromarray(a).save(tmp_path / "deep.png")
    im = load_image(tmp_path / "deep.png")
    assert im.mode == "RGB" and im.size == (5, 6)
    assert _px(im, 0, 0) == WHITE
    assert _px(im, 1, 1) == [4, 4, 4]  # 1000 / 257, not stretched to the image's max


def test_text_file_named_png_is_not_an_image(tmp_path):
    path = tmp_path / "x.png"
    path.write_text("hello, I am text")
    with pytest.raises(InputError, match="not an image"):
        load_image(path)


def test_missing_path(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_image(tmp_path / "nowhere.png")
    with pytest.raises(InputError):
        load_image(tmp_path)  # a folder is no image either


def _exif_jpeg(path) -> None:
    """A 60x40 JPEG whose stored top-left 12x12 corner is red, with EXIF Orientation 6 (rotate 90 CW to view)."""
    a = np.full((40, 60, 3), 128, np.uint8)
    a[:12, :12] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(path, exif=exif, quality=95)


def test_exif_orientation_from_a_path(tmp_path):
    path = tmp_path / "rotated.jpg"
    _exif_jpeg(path)
    with Image.open(path) as raw:
        assert raw.size == (60, 40) and raw.getexif()[0x0112] == 6
    im = load_image(path)
    assert im.size == (40, 60)  # transposed
    # rotating 90 degrees clockwise takes the stored top-left corner to the top-right
    assert _close(_px(im, 40 - 6, 6), (255, 0, 0), 30)
    assert _close(_px(im, 6, 6), (128, 128, 128), 30)
    assert _close(_px(im, 40 - 6, 60 - 6), (128, 128, 128), 30)


def test_exif_orientation_from_an_open_pil_image(tmp_path):
    path = tmp_path / "rotated.jpg"
    _exif_jpeg(path)
    with Image.open(path) as raw:
        im = load_image(raw)
    assert im.size == (40, 60)
    assert _close(_px(im, 40 - 6, 6), (255, 0, 0), 30)


# ---------------------------------------------------------------- PIL modes

def test_rgba_is_composited_over_white():
    a = np.zeros((2, 3, 4), np.uint8)
    a[..., :3] = (10, 20, 30)
    a[0, 0, 3] = 0  # transparent
    a[0, 1, 3] = 255  # opaque
    a[0, 2, 3] = 128  # half
    im = load_image(Image.fromarray(a, "RGBA"))
    assert im.mode == "RGB" and im.size == (3, 2)
    assert _px(im, 0, 0) == WHITE
    assert _px(im, 1, 0) == [10, 20, 30]
    assert _close(_px(im, 2, 0), (132, 137, 142), 2)  # about (c * 128 + 255 * 127) / 255


def test_la_and_l():
    la = Image.new("LA", (2, 1), (50, 255))
    la.putpixel((1, 0), (50, 0))
    im = load_image(la)
    assert _px(im, 0, 0) == [50, 50, 50] and _px(im, 1, 0) == WHITE
    im = load_image(Image.new("L", (3, 2), 77))
    assert im.mode == "RGB" and im.size == (3, 2) and _px(im, 2, 1) == [77, 77, 77]


def test_l_with_a_transparent_value():
    l_im = Image.new("L", (2, 1), 0)
    l_im.putpixel((1, 0), 9)
    l_im.info["transparency"] = 0
    im = load_image(l_im)
    assert _px(im, 0, 0) == WHITE and _px(im, 1, 0) == [9, 9, 9]


def _palette_image() -> Image.Image:
    p = Image.new("P", (3, 1))
    p.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    for x in range(3):
        p.putpixel((x, 0), x)
    return p


def test_palette_without_transparency():
    im = load_image(_palette_image())
    assert [_px(im, x, 0) for x in range(3)] == [[255, 0, 0], [0, 255, 0], [0, 0, 255]]


def test_palette_with_transparency(tmp_path):
    p = _palette_image()
    p.info["transparency"] = 1  # index 1 (green) is transparent
    im = load_image(p)
    assert [_px(im, x, 0) for x in range(3)] == [[255, 0, 0], WHITE, [0, 0, 255]]
    p.save(tmp_path / "pal.png", transparency=1)  # and through a file
    im = load_image(tmp_path / "pal.png")
    assert [_px(im, x, 0) for x in range(3)] == [[255, 0, 0], WHITE, [0, 0, 255]]


def test_palette_with_alpha_pa():
    pa = _palette_image().convert("PA")
    pa.putpixel((2, 0), (2, 0))  # blue, fully transparent
    im = load_image(pa)
    assert [_px(im, x, 0) for x in range(3)] == [[255, 0, 0], [0, 255, 0], WHITE]


def test_i16():
    a = np.array([[0, 257 * 100, 65535]], np.uint16)
    im16 = Image.fromarray(a)
    assert im16.mode.startswith("I;16")
    im = load_image(im16)
    assert [_px(im, x, 0) for x in range(3)] == [[0, 0, 0], [100, 100, 100], WHITE]
    # a dark 16-bit image stays dark (values are not stretched to the image's own maximum)
    dark = load_image(Image.fromarray(np.full((2, 2), 2570, np.uint16)))
    assert _px(dark, 0, 0) == [10, 10, 10]


# ---------------------------------------------------------------- arrays and tensors

def test_hw_uint8_array():
    a = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    im = load_image(a)
    assert im.mode == "RGB" and im.size == (4, 3)
    assert _px(im, 3, 2) == [220, 220, 220]


def test_hwc_float_array():
    a = np.zeros((5, 6, 3), np.float64)
    a[..., 0] = 1.0
    a[..., 1] = 0.5
    a[0, 0] = (2.0, -1.0, 0.25)  # out of range: clipped
    im = load_image(a)
    assert im.size == (6, 5)
    assert _px(im, 1, 1) == [255, 128, 0]
    assert _px(im, 0, 0) == [255, 0, 64]


def test_hwc4_array_is_composited():
    a = np.full((2, 2, 4), 255, np.uint8)
    a[..., :3] = (0, 100, 0)
    a[1, 1, 3] = 0
    im = load_image(a)
    assert _px(im, 0, 0) == [0, 100, 0] and _px(im, 1, 1) == WHITE


def test_chw_array():
    a = np.zeros((3, 5, 7), np.uint8)
    a[2] = 200  # blue channel
    im = load_image(a)
    assert im.size == (7, 5) and _px(im, 6, 4) == [0, 0, 200]


def test_torch_tensor():
    t = torch.zeros(3, 4, 6)
    t[0] = 1.0
    t[1, 0, 0] = 1.0
    im = load_image(t)
    assert im.size == (6, 4)
    assert _px(im, 1, 1) == [255, 0, 0] and _px(im, 0, 0) == [255, 255, 0]
    im = load_image(t.requires_grad_())  # detached
    assert im.size == (6, 4)
    im = load_image(t.detach().to(torch.bfloat16))  # numpy has no bfloat16
    assert _px(im, 1, 1) == [255, 0, 0]


@pytest.mark.parametrize("bad", [np.zeros(10, np.uint8), np.zeros((5, 5, 2), np.uint8), np.zeros((0, 4), np.uint8),
                                 np.zeros((4, 4), np.int64)])
def test_bad_arrays(bad):
    with pytest.raises(InputError):
        load_image(bad)


def test_unknown_type():
    with pytest.raises(InputError):
        load_image(42)


# ---------------------------------------------------------------- fit

def _framed(w: int = 300, h: int = 200) -> Image.Image:
    """Red beyond the central h x h square, green inside it, a black dot in the very middle."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:] = (255, 0, 0)
    x0 = (w - h) // 2
    a[:, x0 : x0 + h] = (0, 255, 0)
    a[h // 2 - 20 : h // 2 + 20, w // 2 - 20 : w // 2 + 20] = 0
    return Image.fromarray(a)


def test_fit_centre_crops_to_a_square():
    out = fit(_framed(), 64)
    assert out.size == (64, 64)
    a = np.asarray(out).astype(int)
    assert _close(a[32, 32], (0, 0, 0), 5)  # the centre stays in the centre
    assert _close(a[5, 5], (0, 255, 0), 5) and _close(a[58, 58], (0, 255, 0), 5)
    assert a[:, 2:-2, 0].max() < 40  # the red sides were cropped away (a little ringing at the very edge at most)


def test_fit_keep_aspect():
    out = fit(_framed(), 64, keep_aspect=True)
    w, h = out.size
    assert w % 8 == 0 and h % 8 == 0
    assert w / h == pytest.approx(1.5, abs=0.1)
    assert 0.75 * 64 * 64 <= w * h <= 1.25 * 64 * 64
    a = np.asarray(out).astype(int)
    assert _close(a[h // 2, w // 2], (0, 0, 0), 5)
    assert a[h // 2, 1, 0] > 200  # the red sides are kept


# ---------------------------------------------------------------- tensors

def test_to_tensor_to_uint8_round_trip_is_exact():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    a.reshape(-1)[:256] = np.arange(256)  # every value at least once
    b = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    x = to_tensor([Image.fromarray(a), Image.fromarray(b)])
    assert x.shape == (2, 3, 16, 16) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert x[0, :, 0, 0].tolist() == pytest.approx([v / 127.5 - 1 for v in a[0, 0]])
    back = to_uint8(x)
    assert back.dtype == np.uint8 and back.shape == (2, 16, 16, 3)
    assert np.array_equal(back[0], a) and np.array_equal(back[1], b)
    pils = to_pil(x)
    assert np.array_equal(np.asarray(pils[1]), b)
