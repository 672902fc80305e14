"""The editors an edit can use (`Controls.editing`), each a behaviour of the attention processors over the
one sampling loop, so any inversion's trajectory can be edited with any of them:

- "p2p": Prompt-to-Prompt (Hertz et al. 2023): cross- and self-attention of the source in the edits
  (`p2p.attention.EditPlan`), with Plug-and-Play's feature injection as an option (`feature_replace_steps`);
- "masactrl": MasaCtrl (Cao et al. 2023): the edits' self-attention queries read the source's keys and
  values (`p2p.masactrl`);
- "pnp": Plug-and-Play (Tumanyan et al. 2023): the source's decoder features and self-attention queries
  and keys in the edits (`p2p.pnp`, `p2p.features`).

LocalBlend, layout guidance, re-noising, skip_steps and Direct Inversion act with every editor.
"""

from __future__ import annotations

import dataclasses

import torch

from ..errors import InputError
from . import tokens as W
from .attention import EditPlan
from .controls import EDITORS, Controls
from .masactrl import masactrl_processors
from .pnp import pnp_processors

def check(controls: Controls) -> None:
    """An error for an editor that does not exist. The controls of the other editors are not used: with
    masactrl or pnp, P2P's kind, reweight, attention windows and feature_replace_steps have no effect
    (pnp injects the features for pnp_f_t of the steps), and the MasaCtrl and PnP controls act only
    with their own editor."""
    if controls.editing not in EDITORS:
        raise InputError(f"unknown editing {controls.editing!r}; choose one of {', '.join(EDITORS)}.")


def own_plan(plan: EditPlan, controls: Controls) -> EditPlan:
    """The P2P plan with its injection windows shut for the other editors: they keep its token mapping
    (which source word each target word stands for: layout guidance follows it) but not its attention."""
    if controls.editing == "p2p":
        return plan
    return dataclasses.replace(plan, cross_window=torch.zeros_like(plan.cross_window),
                               self_window=torch.zeros_like(plan.self_window))


def processors(unet, control, controls: Controls, tokenizer, prompts, steps: int) -> dict:
    """The attention processors the editor installs beside `control`'s (`attention.controlled`)."""
    check(controls)
    if controls.editing == "masactrl":
        return masactrl_processors(unet, control, controls, tokenizer, prompts)
    if controls.editing == "pnp":
        return pnp_processors(unet, control, controls, steps)
    return {}


def feature_window(controls: Controls, steps: int) -> torch.Tensor | None:
    """[steps] bool: the steps in which the source's features replace the edits' (None: never)."""
    if controls.editing == "pnp":
        window = W.step_window(controls.pnp_f_t, steps, "pnp_f_t")
    elif controls.feature_replace_steps:
        window = W.step_window(controls.feature_replace_steps, steps)
    else:
        return None
    return window if window.any() else None
