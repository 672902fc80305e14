"""Saved inversions (redraft.io.inversion_file): forged, mis-shaped or changed files are refused on load
with an InputError naming the problem; inversion files are recognised by their content."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from redraft.errors import InputError
from redraft.io.inversion_file import FORMAT, Cost, Inversion, checksum, is_inversion_file

STEPS = 3


def _inversion(steps: int = STEPS, nulls: int | None = None) -> Inversion:
    g = torch.Generator().manual_seed(0)
    return Inversion(
        method="null-text", prompt="a cat", steps=steps, guidance_scale=7.5,
        pivots=torch.randn(steps + 1, 4, 2, 2, generator=g), null_embeddings=torch.randn(nulls or steps, 5, 8, generator=g),
        prompt_embedding=torch.randn(5, 8, generator=g), image=np.full((16, 16, 3), 7, np.uint8),
        model_id="tiny", model_fingerprint="abc", options={"inner_steps": 2}, cost=Cost(1.5, 10, 4))


def _rewrite(path, tensors=None, **header):
    """Rewrite a saved inversion with other tensors or header entries (None: removed)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    meta = {k: v for k, v in {**meta, **header}.items() if v is not None}
    save_file(tensors or load_file(str(path)), str(path), metadata=meta)


def test_save_load_round_trip_with_a_checksum(tmp_path):
    inv = _inversion()
    path = inv.save(tmp_path / "x.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = Inversion.load(path)
    assert back.cost == inv.cost and back.options == inv.options and back.steps == STEPS
    torch.testing.assert_close(back.pivots, inv.pivots, rtol=0, atol=0)
    assert np.array_equal(back.image, inv.image)
    assert _inversion(nulls=1).save(tmp_path / "one-null.safetensors") and Inversion.load(tmp_path / "one-null.safetensors")


@pytest.mark.parametrize("meta, missing", [
    ({}, "method, prompt, steps, guidance_scale, model_id, model_fingerprint, options, cost"),
    ({"method": "ddim", "prompt": "a cat", "steps": 3}, "guidance_scale, model_id, model_fingerprint, options, cost"),
])
def test_forged_metadata_names_the_missing_fields(tmp_path, meta, missing):
    path = _inversion().save(tmp_path / "x.safetensors")
    _rewrite(path, inversion=json.dumps(meta))
    with pytest.raises(InputError, match=f"its metadata has no {missing}. Invert the image again"):
        Inversion.load(path)


@pytest.mark.parametrize("entry, value, message", [
    ("inversion", None, "its header has no inversion metadata \\(method, prompt, steps"),
    ("inversion", "{", "its metadata is not JSON"),
    ("inversion", "[1, 2]", "not a JSON object"),
    ("steps", 0, "steps is 0, but it must be a whole number of at least 1"),
    ("steps", True, "steps is True"),
    ("guidance_scale", float("nan"), "guidance_scale is nan, but it must be a finite number"),
    ("method", "magic", "its method is 'magic', not one of ddim, null-text, negative-prompt"),
    ("prompt", 3, "its prompt is 3, not text"),
    ("cost", {"dollars": 1}, "its cost is"),
])
def test_bad_metadata_values(tmp_path, entry, value, message):
    path = _inversion().save(tmp_path / "x.safetensors")
    if entry == "inversion":
        _rewrite(path, inversion=value)
    else:
        meta = json.loads(_header(path)["inversion"])
        _rewrite(path, inversion=json.dumps({**meta, entry: value}))
    with pytest.raises(InputError, match=message):
        Inversion.load(path)


def _header(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata()


def _tensors(inv: Inversion) -> dict:
    return {"pivots": inv.pivots, "null_embeddings": inv.null_embeddings,
            "prompt_embedding": inv.prompt_embedding, "image": torch.from_numpy(inv.image)}


@pytest.mark.parametrize("name, value, message", [
    ("pivots", torch.zeros(STEPS, 4, 2, 2), r"its pivots is float32 \[3, 4, 2, 2\], but an inversion of 3 steps "
                                            r"has \[4, C, H, W\]"),
    ("pivots", torch.zeros(STEPS + 1, 4, 2), "its pivots is float32"),
    ("null_embeddings", torch.zeros(2, 5, 8), r"has \[3 or 1, 5, 8\]"),
    ("null_embeddings", torch.zeros(STEPS, 6, 8), r"its null_embeddings is float32 \[3, 6, 8\]"),
    ("prompt_embedding", torch.zeros(1, 5, 8), r"its prompt_embedding is float32 \[1, 5, 8\], .* has \[L, D\]"),
    ("image", torch.zeros(16, 16, 3), r"its image is float32 \[16, 16, 3\], .* has uint8 \[H, W, 3\]"),
])
def test_tensors_that_do_not_match_the_steps_are_refused(tmp_path, name, value, message):
    path = _inversion().save(tmp_path / "x.safetensors")
    tensors = {**_tensors(_inversion()), name: value}
    _rewrite(path, tensors, sha256=checksum(tensors))  # a consistent checksum: the shapes are what is wrong
    with pytest.raises(InputError, match=message + ".*Invert the image again"):
        Inversion.load(path)


def test_a_missing_tensor_is_named(tmp_path):
    path = _inversion().save(tmp_path / "x.safetensors")
    tensors = {k: v for k, v in _tensors(_inversion()).items() if k != "image"}
    _rewrite(path, tensors, sha256=None)
    with pytest.raises(InputError, match="it has no image tensor"):
        Inversion.load(path)


def test_tensor_data_changed_in_place_is_refused(tmp_path):
    path = _inversion().save(tmp_path / "x.safetensors")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # the last pixel of the image
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="its tensors were changed since it was saved"):
        Inversion.load(path)


def test_a_file_without_a_checksum_loads_with_a_warning(tmp_path):
    path = _inversion().save(tmp_path / "x.safetensors")
    _rewrite(path, sha256=None)
    with pytest.warns(UserWarning, match="has no checksum"):
        back = Inversion.load(path)
    assert back.steps == STEPS


def test_is_inversion_file_reads_the_header_only(tmp_path):
    inv = _inversion()
    assert is_inversion_file(inv.save(tmp_path / "x.inv"))  # any suffix
    assert is_inversion_file(inv.save(tmp_path / "x.safetensors"))
    save_file({"a": torch.zeros(2)}, str(tmp_path / "other.safetensors"), metadata={"format": "pt"})
    (tmp_path / "text.txt").write_text("hello, this is not a safetensors file")
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "huge").write_bytes((10**12).to_bytes(8, "little") + b"{}")
    (tmp_path / "list").write_bytes((2).to_bytes(8, "little") + b"[]")
    for name in ("other.safetensors", "text.txt", "empty", "huge", "list", "missing"):
        assert not is_inversion_file(tmp_path / name), name
    assert FORMAT == "redraft.inversion/1"
