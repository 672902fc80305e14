"""The web app's callbacks, called directly (no browser) on the tiny random pipeline.

The browser test of the whole page is tests/test_app_e2e.py.
"""

from __future__ import annotations

import socket
import struct
import zlib

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from redraft.apps.web import App, open_upload, serve
from redraft.errors import InputError
from redraft.eval.metrics import psnr

SOURCE = "a photo of a cat"
TARGET = "a photo of a dog"


@pytest.fixture
def app(editor):
    return App(editor)


@pytest.fixture
def picture(image, tmp_path):
    path = tmp_path / "in.png"
    image.save(path)
    return str(path)


@pytest.fixture
def inversions(editor, monkeypatch):
    """Counts the calls of editor.invert (the real one runs)."""
    calls = []
    real = editor.invert

    def counted(*args, **kwargs):
        calls.append(kwargs.get("steps"))
        return real(*args, **kwargs)

    monkeypatch.setattr(editor, "invert", counted)
    return calls


def edit(app, cache, picture, target=TARGET, steps=4, method="negative-prompt", **controls):
    return app.edit(cache, picture, SOURCE, method, steps, target, controls=controls)


def test_edit_shows_input_reconstruction_and_edit_and_reuses_the_inversion(app, editor, picture, image, inversions):
    gallery, maps, files, inversion_file, cache, status = edit(app, {}, picture)
    assert inversions == [4] and status.startswith("Inverted")
    assert [c for _, c in gallery] == [f"input: {SOURCE}", "reconstruction (negative-prompt)", f"edit: {TARGET}"]
    shown = [np.asarray(Image.open(p)) for p, _ in gallery]
    assert all(a.shape == (16, 16, 3) for a in shown)
    (inv,) = cache.values()
    assert np.array_equal(shown[0], np.asarray(image))  # the model-sized input itself
    assert psnr(shown[1], editor.reconstruct(inv, progress=False)) > 40  # the real reconstruction
    assert np.abs(shown[2].astype(int) - shown[1]).mean() > 1  # the edit changed the picture

    # Another target, same image, prompt, method and steps: no new inversion.
    gallery2, *_, cache2, status2 = edit(app, cache, picture, target="a photo of a cow")
    assert inversions == [4] and status2.startswith("Reused")
    assert next(iter(cache2.values())) is inv
    # The source branch is the same reconstruction both times.
    assert np.array_equal(np.asarray(Image.open(gallery2[1][0])), shown[1])
    # Other steps: a new inversion, both kept.
    *_, cache3, _ = edit(app, cache2, picture, steps=5)
    assert inversions == [4, 5] and len(cache3) == 2


def test_the_session_keeps_only_the_newest_inversions(app, picture, inversions):
    cache = {}
    for steps in (2, 3, 4, 5):
        *_, cache, _ = edit(app, cache, picture, steps=steps)
    assert sorted(k[-1] for k in cache) == [3, 4, 5]


def test_downloads_are_the_pictures_and_an_inversion_that_loads(app, editor, picture):
    from redraft import Inversion

    gallery, maps, files, inversion_file, cache, _ = edit(app, {}, picture, target=f"{TARGET}\n{SOURCE} sleeping")
    names = [p.rsplit("/", 1)[1] for p in files]
    assert names == ["input.png", "reconstruction-negative-prompt.png", "edit-1.png", "edit-2.png", "grid.png",
                     "attention.png", "edit-1-controls.json", "edit-2-controls.json"]  # each edit's, in effect
    for p in files[:-2]:
        assert Image.open(p).format == "PNG"
    loaded = Inversion.load(inversion_file)
    (kept,) = cache.values()
    assert loaded.steps == 4 and loaded.prompt == SOURCE and torch_equal(loaded.pivots, kept.pivots)
    # One row of maps per prompt (source and two edits), one map per word after the image: 128 px cells.
    rows = Image.open(maps)
    words = max(len(p.split()) for p in (SOURCE, TARGET, f"{SOURCE} sleeping"))
    assert rows.width == 128 * (1 + words) and rows.height > 3 * 128


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def test_an_uploaded_inversion_is_used_without_inverting(app, editor, picture, tmp_path, inversions):
    inv = editor.invert(picture, SOURCE, method="ddim", steps=3, progress=False)
    path = inv.save(tmp_path / "saved.safetensors")
    inversions.clear()
    image, prompt, method, steps, cache, status = app.use_inversion(str(path), {})
    assert np.array_equal(np.asarray(image), inv.image)
    assert (prompt, method, steps["value"]) == (SOURCE, "ddim", 3) and "3 steps" in status
    # The page shows that image; an edit of it with those settings reuses the upload.
    shown = tmp_path / "shown.png"
    image.save(shown)
    *_, cache, status = app.edit(cache, str(shown), prompt, method, 3, TARGET)
    assert inversions == [] and status.startswith("Reused")


def test_an_inversion_of_another_model_is_refused(app, v_editor, picture, tmp_path):
    path = v_editor.invert(picture, SOURCE, steps=2, progress=False).save(tmp_path / "other.safetensors")
    with pytest.raises(gr.Error, match="made with model"):
        app.use_inversion(str(path), {})
    not_an_inversion = tmp_path / "x.safetensors"
    not_an_inversion.write_bytes(b"hello")
    with pytest.raises(gr.Error, match="not a saved inversion"):
        app.use_inversion(str(not_an_inversion), {})


@pytest.mark.parametrize("case, message", [
    ("not an image", "not an image that can be read"),
    ("icon", "ICO images are not accepted"),
    ("too many pixels", "more than the"),
    ("no image", "upload an image first"),
    ("no target", "write a target prompt"),
    ("no prompt", "write the source prompt"),
    ("unknown re-weight word", "dragon"),
    ("unknown blend word", "dragon"),
])
def test_bad_input_is_one_message_in_the_page(editor, picture, image, tmp_path, case, message):
    app = App(editor, max_pixels=255 if case == "too many pixels" else 10**6)
    path = picture
    if case == "not an image":
        path = str(tmp_path / "bad.png")
        open(path, "w").write("hello")
    elif case == "icon":
        path = str(tmp_path / "in.ico")
        image.save(path)
    elif case == "no image":
        path = None
    args = dict(cache={}, image_path=path, prompt="" if case == "no prompt" else SOURCE, method="ddim", steps=2,
                targets="" if case == "no target" else TARGET,
                controls=dict(reweight="dragon=2" if case == "unknown re-weight word" else "",
                              blend="dragon" if case == "unknown blend word" else ""))
    with pytest.raises(gr.Error) as e:
        app.edit(**args)
    assert message in e.value.message and "Traceback" not in e.value.message
    if path and case in ("not an image", "icon", "too many pixels"):  # also refused as soon as it is uploaded
        with pytest.raises(gr.Error, match=message):
            app.check_upload({"path": path})


def png_header(width: int, height: int) -> bytes:
    """The first chunks of a PNG of that size (greyscale), with no pixels: all a header check reads."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


@pytest.mark.parametrize("width, height", [(8000, 6000), (20000, 20000)])
def test_a_huge_upload_is_refused_from_its_header(tmp_path, width, height):
    path = tmp_path / "huge.png"
    path.write_bytes(png_header(width, height))  # 48 and 400 megapixels: never decoded
    with pytest.raises(InputError, match="megapixels"):
        open_upload(path)


def test_describe_says_why_a_model_without_a_describer_cannot(app, picture):
    with pytest.raises(gr.Error, match="has no describer") as e:  # the tiny model has none
        app.describe(picture)
    assert "give the source prompt" in e.value.message  # the fix (the built-in model's: tests/test_describe.py)


def test_the_server_listens_here_only_and_makes_no_outside_requests(editor, monkeypatch):
    import httpx

    asked = []
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost", "::1", None):
            asked.append(host)
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self, address):
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            asked.append(address)
        return real_connect(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    page, url = serve(editor, port=port, block=False)
    try:
        assert url.startswith(f"http://127.0.0.1:{port}")
        assert page.analytics_enabled is False
        r = httpx.get(url, timeout=30)
        assert r.status_code == 200 and "redraft" in r.text
    finally:
        page.close()
    assert asked == []


def test_a_port_in_use_is_one_message(editor):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(InputError, match="choose another --port"):
            serve(editor, port=taken.getsockname()[1], block=False)


def test_the_edit_says_and_saves_the_controls_in_effect(app, picture):
    """The status names the controls that differ from the paper's; the download has them as controls.json
    and in every edit's PNG, from which `Controls.load` gives them back (the wiring of every input to
    its control: tests/test_controls.py)."""
    from redraft.p2p.controls import Controls

    gallery, _, files, _, _, status = edit(app, {}, picture, renoise_step="0.5", blend="dog")
    assert "renoise_step 0.5" in status and "blend ['dog']" in status
    wanted = Controls(renoise_step=0.5, blend=["dog"])
    (saved,) = [f for f in files if f.endswith("controls.json")]
    assert Controls.load(saved) == wanted and Controls.load(gallery[2][0]) == wanted


def test_the_api_endpoints_check_uploads_themselves(editor, picture, tmp_path):
    """/describe and /edit called by a client (not the page) with a bad upload get redraft's message,
    not Gradio's silent {"error": null}; a good call of /edit returns the pictures."""
    from gradio_client import Client, handle_file

    bad = tmp_path / "bad.png"
    bad.write_text("hello")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    page, url = serve(editor, port=port, block=False)
    try:
        client = Client(url, verbose=False)
        unset = dict(self_max_resolution=None, blend_resolution=None, renoise_step=None, target_guidance=None)
        for api, args in (("/describe", dict(image_path=handle_file(str(bad)))),
                          ("/edit", dict(image=handle_file(str(bad)), prompt=SOURCE, targets=TARGET, **unset))):
            with pytest.raises(Exception, match="not an image that can be read"):
                client.predict(api_name=api, **args)
        gallery, *_, status = client.predict(api_name="/edit", image=handle_file(picture), prompt=SOURCE,
                                             targets=TARGET, steps=2, **unset)
        assert len(gallery) == 3 and status.startswith("Inverted (negative-prompt, 2 steps)")
    finally:
        page.close()


def test_painted_layers_become_the_mask_and_confine_the_edit(app, picture, image):
    """The brush's layers -> a mask (painted = may change; nothing painted = no mask), and the edit with
    it keeps the input's pixels exactly outside the feathered band (keep_outside="pixels")."""
    from redraft.apps.web import painted_mask
    from redraft.p2p.region import band

    layer = np.zeros((16, 16, 4), np.uint8)
    assert painted_mask({"layers": [layer]}) is None and painted_mask(None) is None
    layer[3:9, 4:12] = (255, 0, 255, 153)
    mask = painted_mask({"layers": [Image.fromarray(layer)]})
    assert mask.shape == (16, 16) and mask.sum() == 48 and mask[3:9, 4:12].all()
    gallery, _, files, _, _, status = app.edit({}, picture, SOURCE, "ddim", 4, TARGET,
                                               mask_layers={"layers": [layer]}, keep_outside="pixels")
    assert "painted mask" in status and any(f.endswith("mask.png") for f in files)
    edited = np.asarray(Image.open(gallery[2][0]))
    outside = band(mask, 0, 1) == 0  # 1 px feather on the tiny model's 2 px cells: default_band
    assert outside.sum() > 100 and np.array_equal(edited[outside], np.asarray(image)[outside])
    assert np.abs(edited[~outside].astype(int) - np.asarray(image)[~outside]).mean() > 1  # the inside changed
    white = np.full((16, 16, 4), 255, np.uint8)
    with pytest.raises(gr.Error, match="white everywhere"):
        app.edit({}, picture, SOURCE, "ddim", 4, TARGET, mask_layers={"layers": [white]})
