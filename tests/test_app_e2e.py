"""`redraft serve` driven in a real browser: headless Chromium (Debian's `chromium`) through Playwright.

The server is the real command on the built-in model; the page is used as a person would: upload a
file that is not a picture (refused, in the page), then a shapes scene, describe it, invert and edit
it in 10 steps, and fetch the edited picture and the inversion back; and paint a mask with the brush by
mouse drags, edit, and check that the pixels outside it are the input's. Skipped (with the reason) when Chromium or Playwright is missing, unless
REDRAFT_REQUIRE_E2E=1 (CI), where that is a failure. Playwright never downloads a browser here.
"""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

import redraft
from redraft.shapes import world


def chromium() -> str:
    """The system Chromium, or skip (fail under REDRAFT_REQUIRE_E2E=1) saying what to install."""
    missing = []
    if importlib.util.find_spec("playwright") is None:
        missing.append("Playwright for Python (pip install -e '.[dev]')")
    path = os.environ.get("REDRAFT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        missing.append("Chromium (Debian/Ubuntu: sudo apt-get install chromium)")
    if missing:
        reason = "the browser test needs " + " and ".join(missing)
        if os.environ.get("REDRAFT_REQUIRE_E2E") == "1":
            pytest.fail(reason + " (REDRAFT_REQUIRE_E2E=1)")
        pytest.skip(reason)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`redraft serve` on a free port with the built-in model; yields its URL."""
    chromium()  # no server when the browser is missing
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "redraft", "--device", "cpu", "serve", "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                pytest.fail(f"redraft serve stopped (status {proc.returncode}):\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"redraft serve did not answer in 600 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_upload_describe_edit_and_download_in_a_browser(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    scene = world.scenes(3, 1, split="test")[0]
    source = scene.prompt()
    color = next(c for c in world.COLORS if c != scene.color)
    target = scene.replace(color=color).prompt()
    picture = tmp_path / "scene.png"
    world.render(scene).save(picture)
    outside = []

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), headless=True)
        try:
            page = browser.new_page()
            page.set_default_timeout(120_000)  # bounds failures only: a loaded machine is slow, not wrong
            expect.set_options(timeout=120_000)
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(
                (server.rstrip("/"), "data:", "blob:")) else None)
            page.goto(server)
            toast = page.locator(".toast-body")
            not_a_picture = tmp_path / "notes.png"
            not_a_picture.write_text("hello")
            page.locator("#image input[type=file]").set_input_files(str(not_a_picture))
            expect(toast.first).to_contain_text("not an image that can be read")  # checked on upload, said in the page
            expect(page.locator("#image img")).to_have_count(0)  # and taken away
            page.locator(".toast-close").first.click()
            expect(toast).to_have_count(0)

            page.locator("#image input[type=file]").set_input_files(str(picture))
            expect(page.locator("#image img")).to_be_visible()
            page.click("#describe")
            prompt = page.locator("#prompt textarea")
            deadline = time.monotonic() + 120
            while not prompt.input_value() and not toast.count() and time.monotonic() < deadline:
                time.sleep(0.2)
            if not hasattr(redraft.Editor, "describe"):
                expect(toast.first).to_contain_text("not in this version of redraft yet")
            assert prompt.input_value() or toast.count(), "Describe gave neither a prompt nor a message"
            if toast.count():  # a message in the page, never a traceback nor an unexpected failure
                text = toast.first.inner_text()
                assert "Traceback" not in text and "unexpected failure" not in text, text
            prompt.fill(source)  # the scene's truth, whatever the describer said

            page.fill("#steps input[type=number]", "10")
            page.locator("#steps input[type=number]").press("Enter")
            page.fill("#targets textarea", target)
            page.click("#edit")
            images = page.locator("#results img")
            expect(images).to_have_count(3, timeout=300_000)  # 10 steps: seconds on an idle machine
            expect(page.locator("#status")).to_contain_text("Inverted (negative-prompt, 10 steps)")

            edit_url = images.nth(2).get_attribute("src")
            response = page.request.get(edit_url)
            assert response.ok
            edited = np.asarray(Image.open(io.BytesIO(response.body())).convert("RGB"))
            assert edited.shape == (64, 64, 3)
            assert edited.astype(float).std(axis=(0, 1)).max() > 10  # a picture, not a blank

            link = page.locator("#inversion a").first
            with page.expect_download() as download:
                link.click()
            saved = tmp_path / "inversion.safetensors"
            download.value.save_as(saved)
            inversion = redraft.Inversion.load(saved)
            assert (inversion.prompt, inversion.method, inversion.steps) == (source, "negative-prompt", 10)
            assert np.array_equal(inversion.image, np.asarray(Image.open(picture).convert("RGB")))
        finally:
            browser.close()
    assert outside == [], f"the page made requests outside the server: {outside}"


def grown(mask: np.ndarray, r: int) -> np.ndarray:
    """A boolean mask grown by r px (a square max filter), by shifting."""
    out = np.zeros_like(mask, dtype=bool)
    padded = np.pad(mask.astype(bool), r)
    h, w = mask.shape
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out |= padded[dy:dy + h, dx:dx + w]
    return out


def test_paint_a_mask_with_the_brush_and_the_edit_stays_inside_it(server, tmp_path):
    """Real mouse drags with the page's brush over the object's box; the edit (10 steps) changes the
    object, and every pixel more than a few px from the painted region is the input's own."""
    from playwright.sync_api import expect, sync_playwright

    scene = world.scenes(3, 1, split="test")[0]  # a small shape on gray: the canvas around it is white
    h = world.SIZES[scene.size]
    target = scene.replace(color=next(c for c in world.COLORS if c != scene.color)).prompt()
    picture = tmp_path / "scene.png"
    world.render(scene).save(picture)
    source = np.asarray(Image.open(picture).convert("RGB"))
    rows = range(scene.cy - h, scene.cy + h + 1, 4)  # strokes over the object's box, 4 px apart
    x0, x1 = scene.cx - h, scene.cx + h
    stroked = np.zeros(source.shape[:2], bool)
    stroked[scene.cy - h:scene.cy + h + 1, x0:x1 + 1] = True  # where the brush's centre went
    radius = 3  # the page's brush on a 64 px model (web.build)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(120_000)
            expect.set_options(timeout=120_000)
            page.goto(server)
            page.locator("#image input[type=file]").set_input_files(str(picture))
            expect(page.locator("#image img")).to_be_visible()
            page.get_by_text("confine the edit to a region").click()
            canvas = page.locator("#mask canvas").first
            canvas.scroll_into_view_if_needed()

            def screen() -> np.ndarray:
                """The brush canvas as shown, sampled at the centre of each image pixel ([64, 64, 3])."""
                page.mouse.move(0, 0)  # the brush's cursor off the canvas
                shot = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB")).astype(int)
                ys, xs = (np.arange(64) + 0.5) * scale + top, (np.arange(64) + 0.5) * scale + left
                return shot[ys.astype(int)[:, None], xs.astype(int)[None, :]]

            deadline = time.monotonic() + 120  # the canvas gets the image from the server (`App.mask_canvas`)
            while True:
                box = canvas.bounding_box()
                zoom = page.locator("#mask .zoom-number").inner_text().strip().rstrip("%")
                scale = float(zoom) / 100 if zoom.replace(".", "").isdigit() else 1.0
                left, top = (box["width"] - 64 * scale) / 2, (box["height"] - 64 * scale) / 2  # centred
                off = np.abs(screen() - source).max(-1) if scale > 1 else None
                if off is not None and (off <= 3).mean() > 0.98 and off.max() <= 16:  # (the rim: rendering)
                    break  # the image is on the canvas, pixel for pixel where computed
                assert time.monotonic() < deadline, "the brush canvas never showed the uploaded image"
                time.sleep(0.5)

            for y in rows:  # a person's strokes: press, drag across the object's box, release
                page.mouse.move(box["x"] + left + (x0 + 0.5) * scale, box["y"] + top + (y + 0.5) * scale)
                page.mouse.down()
                page.mouse.move(box["x"] + left + (x1 + 0.5) * scale, box["y"] + top + (y + 0.5) * scale)
                page.mouse.up()
            shown = screen()
            tinted = (shown[..., 0] - shown[..., 1] > 60) & (shown[..., 2] - shown[..., 1] > 60)  # magenta
            assert tinted[stroked].mean() > 0.95, "the painted strokes do not show over the image"
            assert not tinted[~grown(stroked, radius + 1)].any(), "paint shows where no stroke went"

            page.fill("#prompt textarea", scene.prompt())
            page.fill("#steps input[type=number]", "10")
            page.locator("#steps input[type=number]").press("Enter")
            page.fill("#targets textarea", target)
            page.click("#edit")
            images = page.locator("#results img")  # input, reconstruction, edit, mask over the input
            expect(images).to_have_count(4, timeout=300_000)
            expect(page.locator("#status")).to_contain_text("the painted mask")

            def fetch(url: str) -> np.ndarray:
                response = page.request.get(url)
                assert response.ok, url
                return np.asarray(Image.open(io.BytesIO(response.body())).convert("RGB")).astype(int)

            edited, over = fetch(images.nth(2).get_attribute("src")), fetch(images.nth(3).get_attribute("src"))
            hrefs = [a.get_attribute("href") for a in page.locator("#files a").all()]
            mask = fetch(next(u for u in hrefs if u.endswith("/mask.png")))[..., 0] > 127
        finally:
            browser.close()

    # the mask the server used is what was painted: the object's box, at most the brush's radius more
    assert mask[scene.cy - h:scene.cy + h + 1, scene.cx - h:scene.cx + h + 1].all()
    assert not mask[~grown(stroked, radius + 1)].any(), "the mask reaches beyond the strokes and the brush"
    assert (over != source).any(-1)[mask].mean() > 0.95 and (over == source).all(-1)[~mask].all()
    # outside the mask and its feathered band (1 px; 3 px allowed): the input's pixels
    outside = ~grown(mask, 3)
    assert outside.mean() > 0.6
    assert np.abs(edited - source)[outside].max() <= 1, "the edit changed pixels outside the painted mask"
    inside = world.shape_mask(scene).reshape(64, 4, 64, 4).mean(axis=(1, 3)) > 0.99  # the object
    assert np.abs(edited - source)[inside].mean() > 30, "the object did not change inside the mask"
