"""`redraft serve` driven in a real browser: headless Chromium (Debian's `chromium`) through Playwright.

The server is the real command on the built-in model; the page is used as a person would: upload a
file that is not a picture (refused, in the page), then a shapes scene, describe it, invert and edit
it in 10 steps, and fetch the edited picture and the inversion back. Skipped (with the reason) when Chromium or Playwright is missing, unless
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
