"""`Controls`: every setting of an edit, declared once (defaults: the Prompt-to-Prompt paper's).

Each field carries a `Spec` in its metadata: the mechanism it belongs to, its help, its type, its
range and its command-line flag. The command line's options, the batch manifest's columns and the web
app's inputs are all made from these specs (`fields()`), so a control added here reaches every
front-end. A `Controls` checks its values when it is made, can be written to and read from JSON
(`to_json`, `from_json`, `save`, `load`), and is what `Editor.edit` returns in its `EditResult`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import InputError

KINDS = ("replace", "refine", "reweight")
EDITORS = ("p2p", "masactrl", "pnp")  # `Controls.editing`: Prompt-to-Prompt, MasaCtrl, Plug-and-Play (`p2p.editors`)
DEFAULT_WORD = "default_"  # in a per-word window {word: window, "default_": window}: every other token
GROUPS = ("editor", "prompt edit", "attention windows", "LocalBlend", "layout guidance", "feature injection",
          "re-noising", "start", "MasaCtrl", "Plug-and-Play")


@dataclass(frozen=True)
class Spec:
    """What a front-end needs to know of one control.

    type: "choice" (one of `choices`, None = chosen from the prompts), "weights" ({word: factor}),
    "words" (a list of words), "names" (a list of module names), "window" (a fraction f of the steps,
    meaning steps 0 to f, or a (start, end) pair, in text "START,END" or "START:END"; with `per_word`, also
    {word: window, "default_": ...}, in text "red=0.5, default_=0.2:0.8"),
    "number" or "integer". range: (low, high), inclusive (None: unbounded; `high_open`: high excluded).
    optional: None is a value (the default's meaning is in the help). flag: the command-line option
    without its dashes; the manifest column is the flag with "_" for "-".
    """

    group: str
    help: str
    type: str
    flag: str
    range: tuple[float | None, float | None] | None = None
    high_open: bool = False
    choices: tuple[str, ...] = ()
    per_word: bool = False
    optional: bool = False
    needs_inversion: bool = False  # only an edit of an inverted image has it (not generation)

    @property
    def column(self) -> str:
        return self.flag.replace("-", "_")


def control(default, **spec) -> Any:
    """A dataclass field with its `Spec` (lists and dicts as defaults are copied per instance)."""
    meta = {"spec": Spec(**spec)}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Controls:
    """What a user can set on an edit. Defaults are the P2P paper's (Hertz et al. 2023, sec. 4), with
    every addition off; see each field's help (`Controls.spec(name).help`)."""

    # -- which editor (`redraft.p2p.editors`)
    editing: str = control(
        "p2p", group="editor", type="choice", flag="editing", choices=EDITORS,
        help="the editor: p2p (Prompt-to-Prompt's attention control), masactrl (mutual self-attention, for "
             "pose and shape), pnp (Plug-and-Play's feature and self-attention injection); masactrl and pnp "
             "use none of P2P's kind, reweight, attention windows and feature_replace_steps")
    # -- the prompt edit (P2P sec. 3.2)
    kind: str | None = control(
        None, group="prompt edit", type="choice", flag="kind", choices=KINDS, optional=True,
        help="replace (word swap), refine (words added or removed) or reweight; unset: chosen from the prompts")
    reweight: dict[str, float] = control(
        {}, group="prompt edit", type="weights", flag="reweight",
        help="attention re-weighting of target words, WORD=FACTOR (below 1 weakens, above 1 strengthens, "
             "negative removes)")
    # -- attention injection windows (P2P sec. 3.2: tau for cross- and self-attention)
    cross_replace_steps: float | tuple | dict = control(
        0.8, group="attention windows", type="window", flag="cross-steps", per_word=True,
        help="fraction of the steps (or START,END; or WORD=F,default_=F per word) in which the source's "
             "cross-attention maps replace the edits'")
    self_replace_steps: float | tuple = control(
        0.4, group="attention windows", type="window", flag="self-steps",
        help="fraction of the steps (or START,END) in which the source's self-attention replaces the edits'")
    self_max_resolution: int | None = control(
        None, group="attention windows", type="integer", flag="self-resolution", range=(0, None), optional=True,
        help="self-attention is injected in layers whose side is at most this many cells (unset: the reference "
             "code's rule: a quarter of the latent's side when generating, half when editing an inverted image)")
    # -- LocalBlend (P2P sec. 3.2, "local editing"; `redraft.p2p.blend`)
    blend: Sequence[str] = control(
        [], group="LocalBlend", type="words", flag="blend",
        help="words whose attention marks the region that may change; the rest is kept from the source")
    blend_exclude: Sequence[str] = control(
        [], group="LocalBlend", type="words", flag="blend-exclude",
        help="words whose region is kept from the source (P2P's substruct_words); alone: everything else "
             "may change")
    blend_threshold: float = control(
        0.3, group="LocalBlend", type="number", flag="blend-threshold", range=(0, 1),
        help="a cell is in the region where the words' normalised attention exceeds this")
    blend_start: float = control(
        0.2, group="LocalBlend", type="number", flag="blend-start", range=(0, 1),
        help="fraction of the steps after which blending starts (P2P: 0.2)")
    blend_stop: float = control(
        1.0, group="LocalBlend", type="number", flag="blend-stop", range=(0, 1),
        help="fraction of the steps at which blending stops; steps left after it mend the seam")
    blend_resolution: int | None = control(
        None, group="LocalBlend", type="integer", flag="blend-resolution", range=(1, None), optional=True,
        help="the attention maps' side the region is read from (unset: a quarter of the latent's, at least 8)")
    # -- layout guidance (`redraft.p2p.layout`)
    layout_guidance: float = control(
        0.0, group="layout guidance", type="number", flag="layout-guidance", range=(0, None),
        help="step size with which each edit's latent is moved so that its cross-attention maps follow the "
             "source's, keeping objects in place (0: off)")
    layout_guidance_steps: float | tuple = control(
        0.5, group="layout guidance", type="window", flag="layout-steps",
        help="fraction of the steps (or START,END) that layout guidance acts on")
    # -- Plug-and-Play feature injection (Tumanyan et al. 2023, tau_f; `redraft.p2p.features`)
    feature_replace_steps: float | tuple = control(
        0.0, group="feature injection", type="window", flag="feature-steps",
        help="fraction of the steps (or START,END) in which the source's decoder features replace the edits' "
             "(Plug-and-Play; 0: off)")
    feature_layers: Sequence[str] = control(
        ["up_blocks.1.resnets.1"], group="feature injection", type="names", flag="feature-layers",
        help="the UNet blocks whose output is injected (Plug-and-Play: SD's up_blocks.1.resnets.1)")
    # -- one re-noised step (DDIM eq. 12; `redraft.p2p.renoise`)
    renoise_step: float | None = control(
        None, group="re-noising", type="number", flag="renoise-step", range=(0, 1), high_open=True, optional=True,
        help="fraction of the steps after which the edits take one step with partly fresh noise, which frees "
             "a new size from the source's outline (unset: never)")
    renoise_strength: float = control(
        1.0, group="re-noising", type="number", flag="renoise-strength", range=(0, 1),
        help="share of fresh noise in the re-noised step")
    renoise_seed: int = control(
        0, group="re-noising", type="integer", flag="renoise-seed", range=(0, None),
        help="seed of the re-noised step's fresh noise")
    # -- where the edit starts (edit-friendly DDPM's T_skip, Huberman-Spiegelglas et al. 2024, sec. 4)
    skip_steps: float = control(
        0.0, group="start", type="number", flag="skip-steps", range=(0, 1), high_open=True, needs_inversion=True,
        help="fraction of the first steps skipped: the edits start from the inversion's pivot there "
             "(SDEdit's strength is 1 - this)")
    target_guidance: float | None = control(
        None, group="start", type="number", flag="target-guidance", range=(0, None), optional=True,
        help="guidance scale of the edits, the source keeping its own (edit-friendly DDPM's cfg_tar; "
             "unset: the inversion's)")
    # -- MasaCtrl (Cao et al., ICCV 2023, sec. 3.2-3.3; `redraft.p2p.masactrl`)
    masactrl_step: int = control(
        4, group="MasaCtrl", type="integer", flag="masactrl-step", range=(0, None),
        help="MasaCtrl's start step S: from this step on (0 is the first, noisiest) the edits' self-attention "
             "queries read the source's keys and values (official: 4 of 50)")
    masactrl_layer: int = control(
        10, group="MasaCtrl", type="integer", flag="masactrl-layer", range=(0, 16),
        help="MasaCtrl's start layer L, counted in SD's 16 transformer blocks (official: 10, the decoder's "
             "last 6); another UNet takes the same fraction of its own blocks")
    masactrl_mask: Sequence[str] = control(
        [], group="MasaCtrl", type="words", flag="masactrl-mask",
        help="words whose cross-attention marks the object in the source and the target prompt: the mask-guided "
             "variant, foreground reading foreground and background background (none: no masks)")
    masactrl_mask_threshold: float = control(
        0.1, group="MasaCtrl", type="number", flag="masactrl-mask-threshold", range=(0, 1),
        help="a cell is in a MasaCtrl mask where the words' min-max normalised attention exceeds this (official: 0.1)")
    # -- Plug-and-Play (Tumanyan et al., CVPR 2023, sec. 4; `redraft.p2p.pnp`)
    pnp_f_t: float | tuple = control(
        0.8, group="Plug-and-Play", type="window", flag="pnp-f-t",
        help="Plug-and-Play's tau_f: fraction of the steps (or START,END) in which the source's features replace "
             "the edits' in feature_layers (official pnp_f_t: 0.8)")
    pnp_attn_t: float | tuple = control(
        0.5, group="Plug-and-Play", type="window", flag="pnp-attn-t",
        help="Plug-and-Play's tau_A: fraction of the steps (or START,END) in which the source's self-attention "
             "queries and keys replace the edits' in the decoder's layers but its first (official pnp_attn_t: 0.5)")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            setattr(self, f.name, _checked(f.name, f.metadata["spec"], getattr(self, f.name)))

    # -- the schema
    @staticmethod
    def fields() -> list[tuple[str, Spec, Any]]:
        """(name, spec, default) of every control, in declaration order (grouped by mechanism)."""
        out = []
        for f in dataclasses.fields(Controls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            out.append((f.name, f.metadata["spec"], default))
        return out

    @staticmethod
    def spec(name: str) -> Spec:
        return next(s for n, s, _ in Controls.fields() if n == name)

    @classmethod
    def make(cls, base: "Controls | None" = None, **overrides) -> "Controls":
        """`base` (default: the paper's) with `overrides` set field by field; an unknown name is an error
        that lists the controls."""
        names = [n for n, _, _ in cls.fields()]
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise InputError(f"unknown control(s) {', '.join(unknown)}; the controls are: {', '.join(names)}.")
        return dataclasses.replace(base or cls(), **overrides)

    def changed(self) -> dict:
        """The controls that differ from the paper's defaults, as JSON values."""
        paper = Controls().to_json()
        return {k: v for k, v in self.to_json().items() if paper[k] != v}

    # -- text and JSON
    @classmethod
    def from_strings(cls, values: dict[str, Any], base: "Controls | None" = None) -> "Controls":
        """Controls from front-end values keyed by field name or manifest column: text is parsed by the
        field's type (`parse`), other values are taken as they are; None or "" leave a field as in `base`
        (the text "none" sets an optional control to None)."""
        return cls.make(base, **cls.given_strings(values))

    @classmethod
    def given_strings(cls, values: dict[str, Any]) -> dict[str, Any]:
        """{field: value} of the front-end values that set a field (`from_strings` without a base)."""
        by_key = {s.column: n for n, s, _ in cls.fields()} | {n: n for n, _, _ in cls.fields()}
        unknown = sorted(set(values) - set(by_key))
        if unknown:
            raise InputError(f"unknown control(s) {', '.join(unknown)}; the controls are: {', '.join(by_key)}.")
        given = {}
        for key, value in values.items():
            name = by_key[key]
            if isinstance(value, (list, tuple)) and cls.spec(name).type == "weights":
                value = " ".join(map(str, value))  # ["red=0.5", "blue=2"]
            if isinstance(value, str):
                value = parse(name, value)
                if value is UNSET:
                    continue
            elif value is None:  # not given ("none" sets an optional control to None)
                continue
            given[name] = value
        return given

    def to_json(self) -> dict:
        """Plain JSON values (tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_json(cls, data: dict, base: "Controls | None" = None) -> "Controls":
        if not isinstance(data, dict):
            raise InputError(f"controls are a JSON object {{name: value}}; got {type(data).__name__}.")
        return cls.make(base, **data)

    def save(self, path: str | Path) -> Path:
        from ..io.files import write_json

        return write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path, base: "Controls | None" = None) -> "Controls":
        """Controls saved by `save` (a .json file), or echoed into a picture redraft wrote (its "redraft"
        PNG text entry holds them)."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such controls file; give a .json written by redraft (or one of its PNGs).")
        try:
            if path.suffix.lower() == ".png":
                from PIL import Image

                with Image.open(path) as im:
                    data = json.loads(im.text["redraft"])["controls"]
            else:
                data = json.loads(path.read_text(encoding="utf-8"))
        except (KeyError, ValueError, OSError) as e:
            raise InputError(f"{path} holds no redraft controls ({e}); give a .json of controls "
                             "(Controls.save, or a result's controls.json) or a PNG redraft wrote.") from None
        return cls.from_json(data, base)


# ---------------------------------------------------------------------------------------- values

UNSET = object()
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def parse(name: str, text: str):
    """A control's value from text (a command-line option, a CSV cell, a web textbox); "" is unset,
    and "none" (or "auto" for the kind) is None for the optional ones."""
    spec = Controls.spec(name)
    text = text.strip()
    if not text:
        return UNSET
    if spec.optional and text.lower() in ("none", "auto", "off"):
        return None
    if spec.type in ("words", "names"):
        return [w for w in re.split(r"[,\s]+", text) if w]
    if spec.type == "weights":
        return _weights(name, re.split(r"[,\s]+", text))
    if spec.type == "choice":
        return text
    if spec.type == "window":
        if text.startswith(("{", "[", "(")):
            try:
                return json.loads(text.replace("(", "[").replace(")", "]"))
            except ValueError:
                raise InputError(f"{name}: {text!r} is not JSON; write a fraction (0.8), START,END (0.2,0.8)"
                                 f"{' or WORD=F,default_=F' if spec.per_word else ''}.") from None
        parts = [p for p in re.split(r"[,\s]+", text) if p]
        if spec.per_word and any("=" in p for p in parts):
            return {w: _window_text(name, f) for w, f in (_pair(name, p) for p in parts)}
        if len(parts) == 2:
            return tuple(_number(name, p) for p in parts)
        return _window_text(name, text)
    number = _number(name, text)
    return int(number) if spec.type == "integer" and float(number).is_integer() else number


def to_text(name: str, value) -> str:
    """A control's value as the text `parse` reads back (for text inputs); None is ""."""
    if value is None:
        return ""
    if isinstance(value, dict):  # per-word windows: a pair is START:END
        return ", ".join(f"{w}={':'.join(map(str, v)) if isinstance(v, (list, tuple)) else v}" for w, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def _window_text(name: str, text: str):
    """"0.8" -> 0.8, "0.2:0.8" -> (0.2, 0.8)."""
    if ":" in text:
        return tuple(_number(name, p) for p in text.split(":", 1))
    return _number(name, text)


def _pair(name: str, item: str) -> tuple[str, str]:
    word, sep, value = item.partition("=")
    if not sep or not word:
        raise InputError(f"{name} takes WORD=NUMBER items (e.g. red=0.5); got {item!r}.")
    return word, value


def _weights(name: str, items) -> dict[str, float]:
    return {w: _number(f"{name} of {w!r}", f) for w, f in (_pair(name, i) for i in items if i)}


def _number(name: str, text: str) -> float:
    if not _NUMBER.match(text.strip()):
        raise InputError(f"{name}: {text!r} is not a number.")
    return float(text)


def _checked(name: str, spec: Spec, value):
    """`value` in its canonical form (words a list, windows a float, a tuple or a dict), or an error that
    names the control, the value and what it may be."""
    if value is None and spec.optional:
        return None
    if spec.type == "choice":
        if value not in spec.choices:
            raise InputError(f"unknown {'edit ' if spec.optional else ''}{name} {value!r}; choose one of "
                             f"{', '.join(spec.choices)}"
                             f"{' (or leave it unset to choose from the prompts)' if spec.optional else ''}.")
        return value
    if spec.type in ("words", "names"):
        words = value.split() if isinstance(value, str) else value
        if not isinstance(words, (list, tuple)) or not all(isinstance(w, str) and w for w in words):
            raise InputError(f"{name} is a list of words; got {value!r}.")
        return list(words)
    if spec.type == "weights":
        if not isinstance(value, dict):
            raise InputError(f"{name} is {{word: factor}} (on the command line WORD=FACTOR); got {value!r}.")
        return {str(w): _finite(f"{name} of {w!r}", f, None) for w, f in value.items()}
    if spec.type == "window":
        if isinstance(value, dict):
            if not spec.per_word:
                raise InputError(f"{name} takes a fraction or a (start, end) pair, not per-word windows.")
            return {str(w): _window(f"{name} of {w!r}", v) for w, v in value.items()}
        return _window(name, value)
    number = _finite(name, value, spec.range, spec.high_open)
    if spec.type == "integer":
        if not float(number).is_integer():
            raise InputError(f"{name} is a whole number; got {value!r}.")
        return int(number)
    return number


def _window(name: str, value):
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise InputError(f"{name} is a fraction of the steps or a (start, end) pair; got {value!r}.")
        start, end = (_finite(name, v, (0, 1)) for v in value)
        if start > end:
            raise InputError(f"{name}: its start {start} is after its end {end}; give START <= END.")
        return (start, end)
    return _finite(name, value, (0, 1))


def _finite(name: str, value, bounds, high_open: bool = False) -> float:
    """`value` as a finite number within `bounds`, or an error saying what the control accepts."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    low, high = bounds or (None, None)
    if ok and low is not None:
        ok = value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        below = f"{name} {'<' if high_open else '<='} {high}"
        where = "a finite number" if low is None and high is None else \
            f"{name} >= {low}" if high is None else below if low is None else f"{low} <= {below}"
        raise InputError(f"{name} is {value!r}; it must be {where}.")
    return value
