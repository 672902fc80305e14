"""Tests of the shapes world (spec: shared/specs/shapes-world.md)."""

import random

import numpy as np
import pytest
from PIL import Image

from redraft.shapes.world import (
    BACKGROUNDS,
    COLORS,
    EDIT_KINDS,
    SHAPES,
    SIZES,
    Scene,
    agrees,
    parse_prompt,
    position_range,
    random_edit,
    random_prompt,
    random_scene,
    read,
    render,
    scenes,
)

RED, WHITE = COLORS["red"], BACKGROUNDS["white"]


def pixel(image, x, y):
    return tuple(int(v) for v in np.asarray(image)[y, x])


def scene(shape, cx=30, cy=30, size="large"):
    return Scene(shape, "red", size, "white", cx, cy)


# --- Rendering, pixel by pixel ----------------------------------------------------------------


def test_render_size_and_mode():
    image = render(scene("circle"))
    assert image.size == (64, 64) and image.mode == "RGB"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", SIZES)
def test_centre_is_shape_colour_and_far_pixels_are_background(shape, size):
    for color in COLORS:
        for background in BACKGROUNDS:
            lo, hi = position_range(size)
            s = Scene(shape, color, size, background, lo, hi)
            image = render(s)
            assert pixel(image, s.cx, s.cy) == COLORS[color]
            for corner in [(0, 0), (63, 63), (0, 63), (63, 0)]:
                assert pixel(image, *corner) == BACKGROUNDS[background]


def test_square_has_exact_interior_and_half_covered_rim():
    # Box centred on pixel centre 30.5 with h = 15 spans [15.5, 45.5): pixels 16..44 fully, 15 and 45 by half.
    image = render(scene("square"))
    half = tuple((r + w) / 2 for r, w in zip(RED, WHITE))
    for i in range(16, 45):
        for j in (16, 30, 44):
            assert pixel(image, i, j) == RED and pixel(image, j, i) == RED
        for edge in (15, 45):
            assert pixel(image, i, edge) == pytest.approx(half, abs=1)  # top and bottom rim
            assert pixel(image, edge, i) == pytest.approx(half, abs=1)  # left and right rim
        for outside in (14, 46):
            assert pixel(image, i, outside) == WHITE and pixel(image, outside, i) == WHITE


def test_circle_corner_is_background_and_edge_is_anti_aliased():
    image = render(scene("circle"))
    assert pixel(image, 30, 30) == RED
    assert pixel(image, 30, 17) == RED  # just inside the top
    for corner in [(15, 15), (45, 15), (15, 45), (45, 45), (17, 17)]:
        assert pixel(image, *corner) == WHITE
    edge = np.array(pixel(image, 15, 30))  # the disc's left edge (x = 15.5) crosses this pixel
    assert np.all(edge >= np.minimum(RED, WHITE)) and np.all(edge <= np.maximum(RED, WHITE))
    assert tuple(edge) not in (RED, WHITE)


def test_triangle_bottom_corners_inside_top_corners_outside():
    image = render(scene("triangle"))
    # Base at y = 45.5, so row 44 is full height; its half-width there is >= 14.25 around x = 30.5.
    assert pixel(image, 17, 44) == RED and pixel(image, 43, 44) == RED
    assert pixel(image, 30, 44) == RED
    for x, y in [(15, 15), (45, 15), (17, 17), (43, 17)]:
        assert pixel(image, x, y) == WHITE
    assert pixel(image, 30, 14) == WHITE  # above the apex


def test_diamond_corners_background_centre_colour():
    image = render(scene("diamond"))
    assert pixel(image, 30, 30) == RED
    for x, y in [(15, 15), (45, 15), (15, 45), (45, 45), (20, 20), (40, 40)]:
        assert pixel(image, x, y) == WHITE
    for x, y in [(17, 30), (43, 30), (30, 17), (30, 43)]:  # near the four tips
        assert pixel(image, x, y) == RED


def test_shapes_are_mirror_symmetric_about_their_centre_pixel():
    for shape in SHAPES:
        a = np.asarray(render(scene(shape)))
        assert np.array_equal(a[:, 30 - 20 : 30 + 1], a[:, 30 + 20 : 30 - 1 : -1])  # left-right
        if shape != "triangle":
            assert np.array_equal(a[30 - 20 : 30 + 1], a[30 + 20 : 30 - 1 : -1])  # up-down


# --- Reading -----------------------------------------------------------------------------------


def test_reader_recovers_1000_random_renders():
    for s in scenes(seed=123, n=1000, split=None):
        r = read(render(s))
        assert (r.shape, r.color, r.size, r.background) == (s.shape, s.color, s.size, s.background), s
        assert abs(r.cx - s.cx) <= 0.5 and abs(r.cy - s.cy) <= 0.5, (s, r)


def test_reader_on_other_sizes_and_arrays():
    for s in scenes(seed=7, n=40, split=None):
        big = render(s).resize((256, 256), Image.Resampling.NEAREST)
        for image in (big, np.asarray(big), np.asarray(render(s))):
            r = read(image)
            assert (r.shape, r.color, r.size, r.background) == (s.shape, s.color, s.size, s.background)
            assert abs(r.cx - s.cx) <= 0.5 and abs(r.cy - s.cy) <= 0.5


def test_reader_on_blank_image_reads_none():
    r = read(Image.new("RGB", (64, 64), BACKGROUNDS["gray"]))
    assert (r.shape, r.color, r.size, r.background) == ("none", "none", "none", "gray")
    assert agrees(r, "a red circle") == {"color": False, "shape": False}


def test_agrees_names_only_attributes_in_the_prompt():
    r = read(render(Scene("square", "blue", "small", "black", 20, 40)))
    assert agrees(r, "a blue square") == {"color": True, "shape": True}
    assert agrees(r, "a large blue square on a black background") == {
        "size": False, "color": True, "shape": True, "background": True,
    }


# --- Prompts -----------------------------------------------------------------------------------


def test_prompt_forms():
    s = Scene("circle", "red", "large", "white", 30, 30)
    assert s.prompt() == "a large red circle on a white background"
    assert s.prompt(size=False) == "a red circle on a white background"
    assert s.prompt(background=False) == "a large red circle"
    assert s.prompt(size=False, background=False) == "a red circle"


@pytest.mark.parametrize("with_size", [True, False])
@pytest.mark.parametrize("with_background", [True, False])
def test_prompt_round_trip(with_size, with_background):
    for s in scenes(seed=1, n=50, split=None):
        parsed = parse_prompt(s.prompt(size=with_size, background=with_background))
        assert parsed == {
            "size": s.size if with_size else None,
            "color": s.color,
            "shape": s.shape,
            "background": s.background if with_background else None,
        }


def test_parse_tolerates_case_and_spaces():
    assert parse_prompt("  A  Small PINK   square on a   Gray background ") == {
        "size": "small", "color": "pink", "shape": "square", "background": "gray",
    }


@pytest.mark.parametrize(
    "prompt",
    ["a red", "a huge red circle", "a red circle on a background", "", "red circle", "a red circle please",
     "a red circle on a white", "a small large red circle", "a red circle on the white background"],
)
def test_parse_rejects_prompts_outside_the_grammar(prompt):
    with pytest.raises(ValueError):
        parse_prompt(prompt)


def test_random_prompt_is_true_of_its_scene():
    rng = random.Random(0)
    forms = set()
    for s in scenes(seed=2, n=200, split=None):
        parsed = parse_prompt(random_prompt(s, rng))
        assert all(getattr(s, k) == v for k, v in parsed.items() if v is not None)
        forms.add((parsed["size"] is None, parsed["background"] is None))
    assert len(forms) == 4


# --- Scenes and splits -------------------------------------------------------------------------


def test_scene_validates_attributes_and_position():
    with pytest.raises(ValueError):
        Scene("hexagon", "red", "large", "white", 30, 30)
    with pytest.raises(ValueError):
        Scene("circle", "red", "large", "white", 16, 30)  # large range is [17, 46]
    assert position_range("small") == (10, 53) and position_range("large") == (17, 46)


def test_random_scenes_stay_in_range_and_cover_all_values():
    seen = {k: set() for k in ("shape", "color", "size", "background")}
    for s in scenes(seed=3, n=2000, split=None):
        lo, hi = position_range(s.size)
        assert lo <= s.cx <= hi and lo <= s.cy <= hi
        for k in seen:
            seen[k].add(getattr(s, k))
    assert seen == {"shape": set(SHAPES), "color": set(COLORS), "size": set(SIZES), "background": set(BACKGROUNDS)}


def test_split_is_deterministic_and_about_ten_percent():
    # Pinned values: the hash must never change, or the held-out set would silently change.
    assert Scene("circle", "red", "large", "white", 30, 30).split == "train"
    assert Scene("circle", "red", "large", "black", 45, 33).split == "test"
    assert Scene("diamond", "yellow", "large", "gray", 37, 39).split == "test"
    many = scenes(seed=4, n=5000, split=None)
    assert [s.split for s in many] == [Scene(*vars(s).values()).split for s in many]
    assert 0.07 <= sum(s.split == "test" for s in many) / len(many) <= 0.13


@pytest.mark.parametrize("split", ["train", "test"])
def test_scenes_returns_only_its_split_deterministically(split):
    a = scenes(seed=5, n=300, split=split)
    assert a == scenes(seed=5, n=300, split=split)
    assert a != scenes(seed=6, n=300, split=split)
    assert all(s.split == split for s in a)
    assert random_scene(random.Random(9), split).split == split


def test_replace_clamps_position_on_size_change():
    s = Scene("circle", "red", "small", "white", 10, 53)
    assert s.replace(size="large") == Scene("circle", "red", "large", "white", 17, 46)
    assert s.replace(color="blue") == Scene("circle", "blue", "small", "white", 10, 53)


# --- Edits -------------------------------------------------------------------------------------


def _named(prompt):
    return {k: v for k, v in parse_prompt(prompt).items() if v is not None}


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_random_edit(kind):
    rng = random.Random(kind)
    fields = ("shape", "color", "size", "background")
    for source in scenes(seed=8, n=200, split=None):
        edit = random_edit(source, kind, rng)
        assert edit.kind == kind and edit.source == source
        changed = {f for f in fields if getattr(edit.target, f) != getattr(source, f)}
        attribute = kind.removeprefix("add-")
        assert changed == (set() if kind == "reweight" else {attribute})
        lo, hi = position_range(edit.target.size)
        assert (edit.target.cx, edit.target.cy) == (min(max(source.cx, lo), hi), min(max(source.cy, lo), hi))
        # Each prompt is true of its scene.
        assert all(getattr(edit.source, k) == v for k, v in _named(edit.source_prompt).items())
        assert all(getattr(edit.target, k) == v for k, v in _named(edit.target_prompt).items())
        if kind in ("color", "shape", "size", "background"):
            assert edit.source_prompt == source.prompt() and edit.target_prompt == edit.target.prompt()
            assert edit.word == getattr(edit.target, attribute)
        elif kind.startswith("add-"):
            assert attribute not in _named(edit.source_prompt)
            assert _named(edit.target_prompt)[attribute] == edit.word == getattr(edit.target, attribute)
        else:
            assert edit.target == source and edit.target_prompt == edit.source_prompt
            assert edit.word == source.color and _named(edit.source_prompt).get("size") is None
            assert source.color in edit.source_prompt.split()


def test_random_edit_rejects_unknown_kind():
    with pytest.raises(ValueError):
        random_edit(scene("circle"), "rotate", random.Random(0))
