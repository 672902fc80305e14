"""How a model edits best when the caller sets no control: its editing recipe.

A model folder's redraft.json can carry one beside its guidance scale:

    {"guidance_scale": 5.0,
     "editing": {"controls": {"direct": true, "self_replace_steps": 0.7},
                 "by_kind": {"refine": {"renoise_step": 0.6}, "global": {"feature_replace_steps": 0.0}},
                 "chosen": "how and on which scenes these were chosen"}}

`controls` are `Controls` fields (JSON values) plus the switches of `Editor.edit`: `direct` (Direct
Inversion, for edits of inverted images) and `mask_stop` (where a user mask's latent blend ends,
`p2p.region`; used only when a mask is given); `by_kind` overrides them per kind of edit (`p2p.kinds.EditKind.keys`: "local", "global",
"replace", "refine", "reweight", then "replace/local" and the like), applied from the most general key
to the most specific. The kind is read from the prompts' words, and its extent (local or global) from
the source's attention maps only when some key needs it. A model without a recipe edits with `REFERENCE`:
Prompt-to-Prompt's published defaults (`Controls()`, the reference notebooks' layer rule).

Who passes nothing gets the recipe; keyword controls override it field by field; a whole `Controls` (or
`controls="paper"`, the P2P paper's values as a neutral baseline) replaces it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..checks import finite
from ..errors import InputError
from .controls import Controls
from .kinds import EXTENTS, STRUCTURES, EditKind, edit_kinds, structure_kind

PAPER = "paper"  # `controls="paper"`: the P2P paper's values, whatever the model's recipe
KEYS = (*EXTENTS, *STRUCTURES, *(f"{s}/{e}" for s in STRUCTURES for e in EXTENTS))
# Recipe settings that are arguments of `Editor.edit`, not `Controls` fields, with their values when neither
# the caller nor the recipe sets them: no Direct Inversion, and Blended Latent Diffusion's blend at every step.
SWITCHES = {"direct": False, "mask_stop": 1.0}


def check_switches(switches: dict, where: str = "edit") -> dict:
    """`switches` checked: `direct` a bool, `mask_stop` a fraction in [0, 1]."""
    if "direct" in switches and not isinstance(switches["direct"], bool):
        raise InputError(f"{where}: direct is true or false; got {switches['direct']!r}.")
    if "mask_stop" in switches:
        finite("mask_stop", switches["mask_stop"], 0, 1, fix="1 blends at every step (Blended Latent Diffusion)")
    return switches


@dataclass(frozen=True)
class Recipe:
    """Default controls of a model and their overrides per kind of edit (see the module's docstring)."""

    controls: dict = field(default_factory=dict)
    by_kind: dict = field(default_factory=dict)
    chosen: str = "Prompt-to-Prompt's published defaults (the reference code's)"

    def __post_init__(self):
        names = {n for n, _, _ in Controls.fields()} | set(SWITCHES)
        for where, settings in [("controls", self.controls), *((f"by_kind[{k!r}]", v) for k, v in self.by_kind.items())]:
            if not isinstance(settings, dict):
                raise InputError(f"the editing recipe's {where} is a JSON object of controls; got {settings!r}.")
            unknown = sorted(set(settings) - names)
            if unknown:
                raise InputError(f"the editing recipe's {where} has unknown control(s) {', '.join(unknown)}; "
                                 f"the controls are: {', '.join(sorted(names))}.")
            merged = {**self.controls, **settings}
            Controls.make(**{k: v for k, v in merged.items() if k not in SWITCHES})
            check_switches({k: v for k, v in merged.items() if k in SWITCHES}, f"the editing recipe's {where}")
        bad = sorted(set(self.by_kind) - set(KEYS))
        if bad:
            raise InputError(f"the editing recipe's by_kind has unknown kind(s) {', '.join(bad)}; "
                             f"the kinds are: {', '.join(KEYS)}.")

    @property
    def needs_extent(self) -> bool:
        """Whether some key of `by_kind` depends on the edit's extent (then the source's maps are read)."""
        return any(e in key.split("/") for key in self.by_kind for e in EXTENTS)

    def settings(self, kind: EditKind | None) -> dict:
        """The recipe's settings for an edit of `kind` (None: its default controls only)."""
        out = dict(self.controls)
        for key in (kind.keys if kind is not None else ()):
            out.update(self.by_kind.get(key, {}))
        return out

    def defaults(self) -> Controls:
        """The recipe's default controls, before any kind's overrides (where a front-end's inputs start)."""
        return Controls.make(None, **{k: v for k, v in self.controls.items() if k not in SWITCHES})

    def to_json(self) -> dict:
        return {"controls": self.controls, "by_kind": self.by_kind, "chosen": self.chosen}

    @classmethod
    def from_json(cls, data, where: str = "the editing recipe") -> "Recipe":
        if not isinstance(data, dict) or set(data) - {"controls", "by_kind", "chosen"}:
            raise InputError(f"{where} is a JSON object with \"controls\", \"by_kind\" and \"chosen\"; got {data!r}.")
        return cls(json.loads(json.dumps(data.get("controls", {}))), json.loads(json.dumps(data.get("by_kind", {}))),
                   str(data.get("chosen", "")))


REFERENCE = Recipe()


def in_effect(recipe: Recipe, kind: EditKind | None, controls: Controls | str | None, overrides: dict,
              switches: dict, drop: tuple = ()) -> tuple[Controls, dict]:
    """(Controls, switches) of one edit: the recipe's for its kind with `overrides` on top when `controls`
    is None; `controls` itself (a `Controls`, or the paper's for "paper") with `overrides` otherwise.
    `switches` ({"direct": ..., "mask_stop": ...}) set by the caller; None values: the recipe's (when
    `controls` is None), else `SWITCHES`' defaults."""
    given = check_switches({k: v for k, v in switches.items() if v is not None}, "Editor.edit")
    if isinstance(controls, str):
        if controls != PAPER:
            raise InputError(f"controls is a Controls, None (the model's recipe) or {PAPER!r}; got {controls!r}.")
        return Controls.make(None, **overrides), {**SWITCHES, **given}
    if controls is not None:
        return Controls.make(controls, **overrides), {**SWITCHES, **given}
    settings = {k: v for k, v in recipe.settings(kind).items() if k not in drop}  # `drop`: what the inversion cannot take
    from_recipe = {k: settings.pop(k) for k in SWITCHES if k in settings}
    return Controls.make(None, **{**settings, **overrides}), {**SWITCHES, **from_recipe, **given}


def per_edit(recipe: Recipe, tokenizer, prompts: list[str], controls: Controls | str | None, overrides: dict,
             switches: dict, probe, drop: tuple = ()) -> list[tuple[Controls, dict]]:
    """(Controls, switches) of each edit prompts[0] -> prompts[k], k >= 1 (`in_effect` of its kind).

    The kinds are read only when the recipe decides by kind and the caller passed no `Controls`;
    `probe(maps)` gives the source's `kinds.Probe` (its predictions, and its attention maps when `maps`:
    only re-weightings need them) and is called only when some key needs the extent (it costs one UNet
    pass per prompt)."""
    if controls is not None or not recipe.by_kind:
        return [in_effect(recipe, None, controls, overrides, switches, drop)] * (len(prompts) - 1)
    reweighted = tuple(overrides.get("reweight", {}))
    kinds = [structure_kind(prompts[0], target, reweighted) for target in prompts[1:]]
    if recipe.needs_extent:
        kinds = edit_kinds(tokenizer, prompts, probe(any(k.structure == "reweight" for k in kinds)), reweighted)
    return [in_effect(recipe, kind, None, overrides, switches, drop) for kind in kinds]


def groups(rows: list[tuple[Controls, dict]]) -> list[tuple[Controls, dict, list[int]]]:
    """The edits that share their controls and switches (one sampling run each), in first-seen order."""
    out: dict[str, tuple[Controls, dict, list[int]]] = {}
    for k, (controls, switches) in enumerate(rows):
        key = json.dumps([controls.to_json(), switches], sort_keys=True)
        out.setdefault(key, (controls, switches, []))[2].append(k)
    return list(out.values())
