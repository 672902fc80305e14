"""The controls that edit the built-in shapes model best, per kind of edit (`world.EDIT_KINDS`).

Measured in docs/shapes-model.md (`redraft bench shapes --methods direct --demo-controls`), chosen on
validation scenes (`redraft bench shapes --seed 11`, docs/experiments/swap_controls.py): Direct
Inversion, self-attention injected for 70% of the steps in every layer (16 x 16 too), layout guidance,
cross-attention for 40% of the steps, not P2P's 80%, and the source's decoder features for 70%
(Plug-and-Play).
"""

from __future__ import annotations

from . import world

EDITING = dict(direct=True, self_replace_steps=0.7, self_max_resolution=16, layout_guidance=0.05,
               cross_replace_steps=0.4, feature_replace_steps=0.7)
# A new background changes the whole picture's structure, which the injected features would keep: those edits
# go without. A new size changes the object's outline, which every injection keeps: those edits end all
# injections at 60% of the steps and there take one step whose noise is 90% fresh (`p2p.renoise.Renoise`);
# the object then keeps its place.
SIZE_RENOISE_STEP = 0.6  # where every injection window of a size edit ends, and its re-noised step is
EDITING_BY_KIND = {kind: dict(feature_replace_steps=0.0) for kind in world.BACKGROUND_KINDS} | {
    kind: dict(renoise_step=SIZE_RENOISE_STEP, renoise_strength=0.9, **{window: SIZE_RENOISE_STEP for window in (
        "self_replace_steps", "cross_replace_steps", "feature_replace_steps", "layout_guidance_steps")})
    for kind in world.SIZE_KINDS}


def editing(kind: str) -> dict:
    """The controls for an edit of `kind` (`world.EDIT_KINDS`), with `direct=True` (Direct Inversion)."""
    return {**EDITING, **EDITING_BY_KIND.get(kind, {})}
