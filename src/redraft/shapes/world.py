"""The shapes world (spec: shared/specs/shapes-world.md).

One filled shape on a plain background, 64 x 64 RGB, whose truth is fully known. This module
draws scenes, samples them, writes and parses their prompts, makes edits with known outcomes,
reads the attributes back from pixels, and judges an edit by them. Pure numpy + PIL.

Coordinates: pixel (x, y) of the 64 x 64 canvas covers [x, x + 1) x [y, y + 1), so its centre is
(x + 0.5, y + 0.5). A scene's integer centre (cx, cy) therefore names the pixel the shape is
centred on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

# --- The attributes (spec: "A scene") ---------------------------------------------------------

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 50, 47),
    "green": (60, 170, 70),
    "blue": (40, 90, 220),
    "yellow": (240, 200, 40),
    "purple": (140, 70, 190),
    "pink": (240, 110, 170),
}
SIZES: dict[str, int] = {"small": 8, "large": 15}  # half-extent h in pixels
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (240, 240, 240),
    "black": (25, 25, 25),
    "gray": (128, 128, 128),
}
CANVAS = 64
SUPERSAMPLE = 4
MARGIN = 2  # the shape keeps this many pixels from every edge
TEST_FRACTION = 0.10  # share of all scenes held out as "test"


def position_range(size: str) -> tuple[int, int]:
    """Inclusive range [h + 2, 61 - h] of valid centre coordinates for a size (spec: position)."""
    h = SIZES[size]
    return h + MARGIN, CANVAS - 1 - MARGIN - h


ATTRIBUTES = ("shape", "color", "size", "background")  # what a prompt names and `read` gives back


@dataclass(frozen=True)
class Scene:
    """One scene: shape, its colour and size, the background colour, and the centre pixel."""

    shape: str
    color: str
    size: str
    background: str
    cx: int
    cy: int

    def __post_init__(self):
        for name, allowed in (("shape", SHAPES), ("color", COLORS), ("size", SIZES), ("background", BACKGROUNDS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; expected one of {list(allowed)}")
        lo, hi = position_range(self.size)
        if not (lo <= self.cx <= hi and lo <= self.cy <= hi):
            raise ValueError(f"centre ({self.cx}, {self.cy}) outside [{lo}, {hi}] for size {self.size!r}")

    def prompt(self, *, size: bool = True, background: bool = True) -> str:
        """`a [SIZE] COLOR SHAPE [on a BACKGROUND background]`, leaving out the parts switched off."""
        words = ["a", *([self.size] if size else []), self.color, self.shape]
        if background:
            words += ["on", "a", self.background, "background"]
        return " ".join(words)

    @property
    def split(self) -> str:
        """"test" for a fixed ~10% of all scenes, chosen by a hash of all six fields, else "train"."""
        digest = hashlib.sha256(repr(dataclasses.astuple(self)).encode()).digest()
        return "test" if int.from_bytes(digest[:8], "big") / 2**64 < TEST_FRACTION else "train"

    def replace(self, **changes) -> Scene:
        """`dataclasses.replace`, except that a change of size clamps the centre into the new valid range."""
        if "size" in changes:
            lo, hi = position_range(changes["size"])
            for axis in ("cx", "cy"):
                changes[axis] = min(max(changes.get(axis, getattr(self, axis)), lo), hi)
        return dataclasses.replace(self, **changes)


# --- Rendering (spec: "A scene", last two paragraphs) ----------------------------------------

# Centres of the supersampled pixels, in supersampled pixel units.
_SAMPLES = np.arange(CANVAS * SUPERSAMPLE) + 0.5


def shape_mask(scene: Scene) -> np.ndarray:
    """Boolean 256 x 256 mask of the shape at 4x, with hard edges.

    At 4x the box is centred on (4cx + 2, 4cy + 2) with half-extent H = 4h. Convention: a
    supersampled pixel belongs to the shape iff its centre lies inside the shape or on its border.
    We test pixel centres with numpy instead of using PIL's ImageDraw, whose coverage rules differ
    between ellipse, rectangle and polygon. Only the diamond has pixel centres exactly on its border
    (|dx| + |dy| = H); the square covers exactly the 4x pixels [4cx + 2 - H, 4cx + 2 + H).
    """
    return _mask(scene.shape, SIZES[scene.size], scene.cx, scene.cy)


def _mask(shape: str, h: int, cx: float, cy: float) -> np.ndarray:
    s, H = SUPERSAMPLE, SUPERSAMPLE * h
    dx = np.abs(_SAMPLES - (s * cx + s / 2))[None, :]  # distance from the centre, per column
    dy = (_SAMPLES - (s * cy + s / 2))[:, None]  # signed offset from the centre, per row (down +)
    if shape == "circle":  # the disc inscribed in the box
        return dx**2 + dy**2 <= H**2
    if shape == "square":  # the box itself
        return (dx <= H) & (np.abs(dy) <= H)
    if shape == "triangle":  # apex at (0, -H), base from (-H, H) to (H, H): half-width (dy + H) / 2
        return (dy <= H) & (2 * dx <= dy + H)
    return dx + np.abs(dy) <= H  # diamond through the four edge midpoints


def render(scene: Scene) -> Image.Image:
    """The scene as a 64 x 64 RGB image: hard-edged at 4x, then 4 x 4 block averages (Image.BOX).

    Because the box is centred on a pixel centre (cx + 0.5) and has an even side 2h, its edges fall
    on half pixels: a square covers pixels cx - h + 1 .. cx + h - 1 fully and the columns (rows)
    cx - h and cx + h by half, so even the square has a one-pixel anti-aliased rim.
    """
    big = Image.fromarray(shape_mask(scene).astype(np.uint8))  # 0 = background, 1 = shape
    big.putpalette([*BACKGROUNDS[scene.background], *COLORS[scene.color]])  # (a palette image: fast)
    return big.convert("RGB").resize((CANVAS, CANVAS), Image.Resampling.BOX)


# --- Sampling -------------------------------------------------------------------------------


def random_scene(rng: random.Random, split: str | None = "train") -> Scene:
    """A uniformly random scene of the given split ("train", "test", or None for either)."""
    if split not in ("train", "test", None):
        raise ValueError(f"split must be 'train', 'test' or None, not {split!r}")
    while True:
        size = rng.choice(list(SIZES))
        lo, hi = position_range(size)
        scene = Scene(
            shape=rng.choice(SHAPES),
            color=rng.choice(list(COLORS)),
            size=size,
            background=rng.choice(list(BACKGROUNDS)),
            cx=rng.randint(lo, hi),
            cy=rng.randint(lo, hi),
        )
        if split is None or scene.split == split:
            return scene


def scenes(seed: int, n: int, split: str | None = "train") -> list[Scene]:
    """`n` random scenes of a split, the same for the same seed."""
    rng = random.Random(seed)
    return [random_scene(rng, split) for _ in range(n)]


def random_prompt(scene: Scene, rng: random.Random, p_size: float = 0.75, p_background: float = 0.75) -> str:
    """A prompt true of the scene, naming its size and its background each with the given probability."""
    return scene.prompt(size=rng.random() < p_size, background=rng.random() < p_background)


# --- Prompts (spec: "Its prompt") ------------------------------------------------------------


def parse_prompt(prompt: str) -> dict[str, str | None]:
    """Parse `a [SIZE] COLOR SHAPE [on a BACKGROUND background]` into its four attributes.

    An omitted optional part gives None. Case and extra whitespace are tolerated; anything else
    outside the grammar raises ValueError saying what is wrong.
    """
    words = prompt.lower().split()
    out: dict[str, str | None] = {"size": None, "color": None, "shape": None, "background": None}

    def take(expected, what: str) -> str:
        if not words:
            raise ValueError(f"{prompt!r}: ends where {what} was expected")
        word = words.pop(0)
        if word not in expected:
            raise ValueError(f"{prompt!r}: expected {what}, got {word!r}")
        return word

    take(("a",), "'a'")
    if words and words[0] in SIZES:
        out["size"] = words.pop(0)
    out["color"] = take(COLORS, f"a size or colour {list(SIZES) + list(COLORS)}" if out["size"] is None
                        else f"a colour {list(COLORS)}")
    out["shape"] = take(SHAPES, f"a shape {list(SHAPES)}")
    if words:
        take(("on",), "'on' or the end")
        take(("a",), "'a'")
        out["background"] = take(BACKGROUNDS, f"a background colour {list(BACKGROUNDS)}")
        take(("background",), "'background'")
    if words:
        raise ValueError(f"{prompt!r}: unexpected words after the prompt: {words}")
    return out


# --- Edits (spec: "Edits and what they must give") -------------------------------------------

SWAPS = ("color", "shape", "size", "background")  # word swaps: one attribute's word for another
EDIT_KINDS = (*SWAPS, "add-size", "add-background", "reweight")
BACKGROUND_KINDS = ("background", "add-background")  # the edits that change the background
SIZE_KINDS = ("size", "add-size")  # the edits that change the size
_VALUES = {"color": tuple(COLORS), "shape": SHAPES, "size": tuple(SIZES), "background": tuple(BACKGROUNDS)}


@dataclass(frozen=True)
class Edit:
    """An edit and its truth: `target` is what the edited image must show.

    `word` is the word the target prompt brings in (the new value of a swap, the added size word,
    the colour of the added background) or, for "reweight", the word whose weight changes; then
    target == source and target_prompt == source_prompt.
    """

    kind: str
    source_prompt: str
    target_prompt: str
    source: Scene
    target: Scene
    word: str | None = None


def random_edit(scene: Scene, kind: str, rng: random.Random) -> Edit:
    """A random edit of `kind` (one of EDIT_KINDS) starting from `scene`.

    Swaps ("color", "shape", "size", "background") change one word of the full prompt to another
    value of the same attribute. "add-size" / "add-background" go from a prompt without that part
    to one naming a value different from the source's, so the edit must change the image.
    "reweight" keeps the scene and names its colour word in a prompt without the size word.
    The position is kept, clamped into range when the size changes.
    """
    if kind == "reweight":
        prompt = scene.prompt(size=False)
        return Edit(kind, prompt, prompt, scene, scene, word=scene.color)
    if kind not in EDIT_KINDS:
        raise ValueError(f"unknown edit kind {kind!r}; expected one of {EDIT_KINDS}")
    attribute = kind.removeprefix("add-")
    value = rng.choice([v for v in _VALUES[attribute] if v != getattr(scene, attribute)])
    target = scene.replace(**{attribute: value})
    omit = {"add-size": {"size": False}, "add-background": {"background": False}}.get(kind, {})
    return Edit(kind, scene.prompt(**omit), target.prompt(), scene, target, word=value)


# --- Reading pixels back (spec: last paragraph) -----------------------------------------------

BACKGROUND_DISTANCE = 60  # shape pixels are farther than this (RGB Euclidean) from the background


@dataclass(frozen=True)
class Reading:
    """Attributes read from an image; shape, color and size are "none" if no shape pixel is found.

    cx, cy estimate the centre in Scene's convention (the shape's centre pixel), as floats.
    """

    shape: str
    color: str
    size: str
    background: str
    cx: float
    cy: float


def _nearest(palette: dict[str, tuple[int, int, int]], rgb: np.ndarray) -> str:
    """Name of the palette entry nearest (RGB Euclidean) to `rgb`."""
    return min(palette, key=lambda name: float(np.sum((np.array(palette[name]) - rgb) ** 2)))


def read(image) -> Reading:
    """Read a scene's attributes from a PIL image or H x W x 3 uint8 array (resized to 64 x 64 with BOX).

    As the spec says: background = median border colour; shape pixels = farther than 60 from it;
    colour = palette entry nearest their median. Shape and size: the template (shape x size) that
    best matches the pixels' coverage at their centroid, which weighs how much of its box the shape
    fills and where its rows are widest together (see below). Centre: the coverage-weighted centroid
    (a triangle's lies h/3 below its box centre, so it is moved up by that).
    """
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    image = image.convert("RGB")
    if image.size != (CANVAS, CANVAS):
        image = image.resize((CANVAS, CANVAS), Image.Resampling.BOX)
    pixels = np.asarray(image, dtype=np.float64)

    bg, inside = object_pixels(pixels)
    background = _nearest(BACKGROUNDS, bg)
    if not inside.any():
        return Reading("none", "none", "none", background, math.nan, math.nan)

    fg = np.median(pixels[inside], axis=0)
    color = _nearest(COLORS, fg)

    # Coverage of every pixel: its colour's position between the background and the shape's colour.
    axis = fg - bg
    coverage = np.clip((pixels - bg) @ axis / max(axis @ axis, 1e-9), 0, 1)
    coverage[~_near(inside) | (coverage < 0.25)] = 0  # ignore faint texture (decoders leave some)
    area = coverage.sum()
    gy, gx = np.mgrid[0:CANVAS, 0:CANVAS]
    cx, cy = float((coverage * gx).sum() / area), float((coverage * gy).sum() / area)

    # Shape and size: the spec's cues (how much of its box the shape fills, where its rows are widest)
    # judged all at once, by the template of each shape and size at the measured centre that best
    # matches the coverage. Robust to the softened corners of decoded images, where a hard threshold
    # on the fill ratio takes a square with rounded corners for a circle.
    best = None
    for shape in SHAPES:
        for size, h in SIZES.items():
            oy = h / 3 if shape == "triangle" else 0.0  # a triangle's centroid lies h/3 below its box centre
            template = _coverage(shape, h, round(cx), round(cy - oy))
            err = float(((coverage - template) ** 2).sum())
            if best is None or err < best[0]:
                best = (err, shape, size, oy)
    _, shape, size, oy = best
    return Reading(shape, color, size, background, cx, cy - oy)


def object_pixels(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The background colour (median of the border) and the [H, W] mask of the pixels farther than
    `BACKGROUND_DISTANCE` from it: what `read` takes for the shape, as the spec says."""
    border = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
    bg = np.median(border, axis=0)
    return bg, np.linalg.norm(pixels - bg, axis=2) > BACKGROUND_DISTANCE


def _near(inside: np.ndarray) -> np.ndarray:
    """The shape pixels' bounding box grown by 2 px."""
    ys, xs = np.nonzero(inside)
    near = np.zeros_like(inside)
    near[max(ys.min() - 2, 0): ys.max() + 3, max(xs.min() - 2, 0): xs.max() + 3] = True
    return near


def _coverage(shape: str, h: int, cx: int, cy: int) -> np.ndarray:
    """Share of each 64 x 64 pixel covered by a shape (the renderer's 4 x 4 block average)."""
    m = _mask(shape, h, cx, cy).astype(np.float64)
    return m.reshape(CANVAS, SUPERSAMPLE, CANVAS, SUPERSAMPLE).mean(axis=(1, 3))


def agrees(reading: Reading, prompt: str) -> dict[str, bool]:
    """For each attribute the prompt names, whether the reading has that value."""
    return {name: getattr(reading, name) == value for name, value in parse_prompt(prompt).items() if value is not None}


# --- Judging an edit (spec: an edit keeps the other attributes and the position) ------------------

POSITION_TOLERANCE = 3  # px: an edit keeps the object's place if its centre moved at most this far


def shift_of(reading: Reading, truth: Scene) -> float:
    """How far (px, the larger of x and y) a reading's centre is from `truth`'s."""
    shift = max(abs(reading.cx - truth.cx), abs(reading.cy - truth.cy))
    return shift if np.isfinite(shift) else float("inf")  # no object drawn: infinitely far


def outcome(image, truth: Scene) -> tuple[bool, float]:
    """Whether every attribute reads back as `truth`'s, and how far (px, the larger of x and y) the
    object's centre is from `truth`'s."""
    r = read(np.asarray(image))
    same = all(getattr(r, k) == getattr(truth, k) for k in ATTRIBUTES)
    return same, shift_of(r, truth)


def kept(image, truth: Scene) -> bool:
    """The spec's test of an edit: every attribute as `truth`'s, the position within `POSITION_TOLERANCE` px."""
    same, shift = outcome(image, truth)
    return same and shift <= POSITION_TOLERANCE
