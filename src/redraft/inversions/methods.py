"""The inversions of issue 33 behind one interface: their settings, their inversion, and the hooks
with which the one sampling loop replays or edits them (`Editor.invert`, `replay`, `edit`).

| method | inversion | replay / edit |
| --- | --- | --- |
| edit-friendly | independent x_t, solved noise maps z_t (`edit_friendly`) | DDPM steps with the z_t (`noise` hook) |
| edict | coupled x, y sequences, float64 (`edict`) | `edict.coupled_denoise` |
| proxnpi | NPI: the DDIM pivot at guidance 1 | proximal guidance `rule` + inversion guidance `callback` |
| spdinv | fixed-point pivots (`spdinv`) | as proxnpi |
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Sequence

import torch

from ..checks import finite, whole
from ..core.ddim import Schedule
from ..core.sampling import CountedUNet, denoise
from ..errors import InputError
from . import edict, edit_friendly, proxnpi, spdinv
from .ddim import ddim_inversion

SETTINGS: dict[str, dict] = {  # the official code's defaults (docs/inversions.md: sources, and what differs)
    "edit-friendly": {"seed": 0, "eta": 1.0},
    "edict": {"mix": edict.MIX},
    "proxnpi": dict(proxnpi.DEFAULTS),
    "spdinv": {**spdinv.DEFAULTS, **proxnpi.DEFAULTS},
}
NEW = tuple(SETTINGS)
_RANGES = {"seed": (0, None), "eta": (0, 1), "mix": (0.5, 1), "quantile": (-1e9, 1), "recon_t": (0, 1000),
           "recon_lr": (0, 1), "dilate": (0, 16), "rounds": (0, 1000), "lr": (0, 1), "delta": (0, None),
           "weight_decay": (0, None)}
_MIX = "it is EDICT's mixing weight p, 0.5 < p <= 1 (the paper's 0.93)"


def settings(method: str, given: dict | None) -> dict:
    """The method's settings: its defaults with `given` over them, checked (an unknown name or a value
    out of range is an InputError naming what is allowed)."""
    given = dict(given or {})
    if method not in SETTINGS:
        if given:
            raise InputError(f"the {method} inversion takes no settings; {', '.join(NEW)} do.")
        return {}
    defaults = SETTINGS[method]
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise InputError(f"unknown {method} setting(s) {', '.join(unknown)}; it has "
                         + ", ".join(f"{k} (default {v!r})" for k, v in defaults.items()) + ".")
    out = {**defaults, **given}
    for k, v in out.items():
        if k == "prox":
            if v not in ("l0", "l1"):
                raise InputError(f"{method} setting prox is 'l0' or 'l1' (the official code's operators); got {v!r}.")
        elif k == "inversion_guidance":
            if not isinstance(v, bool):
                raise InputError(f"{method} setting inversion_guidance is true or false; got {v!r}.")
        elif k in ("seed", "recon_t", "dilate", "rounds"):
            out[k] = whole(f"{method} setting {k}", v, *_RANGES[k])
        else:
            low, high = _RANGES[k]
            out[k] = finite(f"{method} setting {k}", v, low, high, fix=_MIX if k == "mix" else "")
    if method == "edict" and not 0.5 < out["mix"] <= 1:
        raise InputError(f"edict setting mix is {out['mix']!r}, but {_MIX}.")
    return out


def parse_settings(pairs: Sequence[str], methods: Sequence[str]) -> dict[str, dict]:
    """`[METHOD:]KEY=VALUE` texts (the command line's --method-setting) as {method: settings}, each
    checked by `settings`. Without METHOD a key goes to every method of `methods` that has it; a key no
    chosen method has is an InputError naming the keys each one takes. VALUE is JSON (true, 0.9, "l1")
    or else plain text."""
    import json

    out: dict[str, dict] = {m: {} for m in methods}
    for pair in pairs:
        name, eq, text = pair.partition("=")
        method, colon, key = name.rpartition(":")
        if not eq or not key.strip():
            raise InputError(f"a method setting is KEY=VALUE or METHOD:KEY=VALUE (e.g. edict:mix=0.9); got {pair!r}.")
        key = key.strip()
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text.strip()
        targets = [method.strip()] if colon else [m for m in methods if key in SETTINGS.get(m, {})]
        for m in targets:
            if m not in out:
                raise InputError(f"the setting {pair!r} names the method {m!r}, which is not chosen here; "
                                 f"the chosen ones are {', '.join(methods)}.")
            out[m][key] = value
        if not targets:
            takes = "; ".join(f"{m}: {', '.join(SETTINGS[m])}" for m in methods if m in SETTINGS)
            raise InputError(f"no chosen inversion has a setting {key!r}; "
                             + (f"the keys are {takes}." if takes else f"{', '.join(methods)} take no settings; "
                                f"{', '.join(NEW)} do."))
    return {m: settings(m, given) for m, given in out.items() if given}


def invert(method: str, model: CountedUNet, schedule: Schedule, latents: torch.Tensor, cond: torch.Tensor,
           empty: torch.Tensor, guidance_scale: float, options: dict, progress: bool = True):
    """Invert a batch of latents: (pivots [N + 1, B, ...], null embeddings [1, B, L, D], extra tensors
    {name: [*, B, ...]}, options to save). Pass counts per image and step: edit-friendly 2 F, edict 4 F
    (2 and 2 at guidance 1), proxnpi 1 F, spdinv 1 F + rounds x (1 F + 1 B)."""
    if method == "edit-friendly":
        xts = edit_friendly.sample_xts(schedule, latents.float(), options["seed"])
        pivots, zs = edit_friendly.noise_maps(model, schedule, xts, cond, empty, guidance_scale,
                                              options["eta"], progress=progress)
        return pivots, empty[None], {"noise_maps": zs}, options
    if method == "edict":
        xs, ys = edict.edict_inversion(model, schedule, latents, cond, empty, guidance_scale, options["mix"],
                                       progress=progress)
        return xs, empty[None], {"pivots_y": ys}, options
    if method == "proxnpi":
        return ddim_inversion(model, schedule, latents, cond, progress=progress), cond[None], {}, options
    pivots, _ = spdinv.spd_inversion(model, schedule, latents, cond, rounds=options["rounds"], lr=options["lr"],
                                     delta=options["delta"], weight_decay=options["weight_decay"], progress=progress)
    return pivots, cond[None], {}, options


@dataclass
class Hooks:
    """How the sampling loop replays an inversion: the loop itself and its hooks (None: none)."""

    loop: Callable = denoise
    noise: Callable | None = None
    rule: Callable | None = None
    callback: Callable | None = None


# recipe settings an inversion cannot take (EDICT: no single DDIM pivot, coupled steps): left at their defaults
NOT_FROM_RECIPE = {"edict": ("direct", "layout_guidance", "renoise_step")}
SOURCE_NULLS = ("negative-prompt", "null-text")  # nulls that stand in for the source; Direct edits use ""


def hooks(inversions: Sequence, rows: int, schedule: Schedule, device, start: int = 0, direct: bool = False) -> Hooks:
    """The hooks for a batch of `rows` latents: one row per inversion (replay), or every row from one
    inversion (an edit batch [source, target...]), from step `start`; `direct`: Direct Inversion too."""
    method = inversions[0].method
    if method not in NEW:
        return Hooks()
    options = settings(method, {k: v for k, v in inversions[0].options.items() if k in SETTINGS[method]})

    def stacked(get) -> torch.Tensor:  # [*, rows, ...]
        t = torch.stack([get(x) for x in inversions], dim=1).to(device)
        return t.expand(-1, rows, *t.shape[2:]) if len(inversions) == 1 else t

    if method == "edit-friendly":
        return Hooks(noise=edit_friendly.replay_noise(schedule, stacked(lambda x: x.extras["noise_maps"]),
                                                      options["eta"]))
    if method == "edict":
        if direct:
            raise InputError("Direct Inversion keeps a DDIM pivot; an EDICT inversion has its own exact pair of "
                             "sequences. Leave direct off, or invert with --method ddim.")
        return Hooks(loop=partial(edict.coupled_denoise, y=start_y(inversions, start, rows, device), mix=options["mix"]))
    guidance = proxnpi.ProximalGuidance(schedule, stacked(lambda x: x.pivots.float()),
                                        **{k: options[k] for k in proxnpi.DEFAULTS})
    return Hooks(rule=guidance.rule, callback=guidance.callback)


def start_y(inversions: Sequence, start: int, rows: int, device) -> torch.Tensor:
    """EDICT's second chain at step `start`, [rows, ...]."""
    y = torch.stack([x.extras["pivots_y"][start] for x in inversions]).to(device)
    return y.expand(rows, *y.shape[1:]) if len(inversions) == 1 else y
