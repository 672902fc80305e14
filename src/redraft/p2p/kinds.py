"""What kind of edit two prompts ask for, read from what any model shows (no vocabulary of its own).

An edit has a *structure* and an *extent*:
- structure, from the prompts' words (P2P sec. 3.2): "replace" (a word swap: as many words, some
  differ), "refine" (words inserted or deleted), "reweight" (the same words; only attention factors);
- extent, from where the changed words act on the source image: "global" when it is most of the image
  (a background, a style), "local" when it is compact (an object's colour, shape or size). For a swap or
  an insertion, where they act is where the noise predicted under the target prompt differs from the
  one under the source prompt, |eps(z, c_target) - eps(z, c_source)| per latent cell (DiffEdit,
  Couairon et al., ICLR 2023, sec. 3.1, whose edit mask is this difference); for a re-weighting (the
  same prompt) it is the re-weighted words' cross-attention map. The spread of a map is its
  participation ratio (sum m)^2 / (n sum m^2): 1 for a uniform map, the covered share for a map that is
  flat over a region, 1/n for a single cell.

Both come from one conditional UNet pass of every prompt on the source latent (`probe`): for an edit
of an inverted image its pivot at `PROBE_AT` of the way to the image (where the prediction already
shows the image's layout), for generation x_T. A model's editing recipe (`p2p.recipe`) is keyed by these
kinds, so the same rule serves the built-in model and SD.

Why not the attention maps for swaps too: on the built-in model the changed words' maps spread over
nearly the whole image for every kind of edit (participation ratio 0.8 to 0.99 at every probe step,
colour swaps and background swaps alike), while the prediction difference separates them
(`python docs/experiments/edit_extent.py --seed 11`, validation: below 0.80 for every colour, shape and
size edit, above 0.81 for every background edit, probed at 0.8 of the steps).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import tokens as W
from .attention import AttentionControl, controlled

STRUCTURES = ("replace", "refine", "reweight")
EXTENTS = ("local", "global")
GLOBAL_SPREAD = 0.8  # a change acting over at least 80% of the image (participation ratio) is global (seed 11)
PROBE_AT = 0.8  # an edit of an inverted image is probed on its pivot at this fraction of the steps


@dataclass(frozen=True)
class EditKind:
    """The kind of one edit (source prompt -> target prompt)."""

    structure: str         # "replace", "refine" or "reweight"
    extent: str            # "local" or "global" ("unread" when no map was read: `structure_kind`)
    spread: float          # participation ratio of the changed words' mean attention map, in (0, 1]
    words: tuple[str, ...]  # the changed words (source's for swaps and deletions, target's for insertions)

    @property
    def keys(self) -> tuple[str, ...]:
        """Recipe keys from the most general to the most specific: extent, structure, structure/extent."""
        return (self.extent, self.structure, f"{self.structure}/{self.extent}")

    def __str__(self) -> str:
        return f"{self.structure}/{self.extent} (spread {self.spread:.2f} of {', '.join(self.words) or '-'})"


def changed_words(source: str, target: str, reweighted: tuple[str, ...] = ()) -> tuple[str, list[int], list[int]]:
    """(structure, changed word indices in the source, changed word indices in the target).

    Words are compared case- and punctuation-blind; a refinement's words are aligned globally
    (Needleman-Wunsch, as P2P's refinement mapper aligns tokens), and target words aligned to no equal
    source word are inserted, source words left unaligned are deleted. Re-weighting: the re-weighted
    words of the target.
    """
    src, tgt = [W._normal(w) for w in source.split()], [W._normal(w) for w in target.split()]
    if src == tgt:
        return "reweight", [], [i for i, w in enumerate(tgt) if w in {W._normal(r) for r in reweighted}]
    if len(src) == len(tgt):
        differ = [i for i, (a, b) in enumerate(zip(src, tgt)) if a != b]
        return "replace", differ, []
    aligned = W._align(src, tgt)
    kept = {s for t, s in enumerate(aligned) if s is not None and src[s] == tgt[t]}
    inserted = [t for t, s in enumerate(aligned) if s is None or src[s] != tgt[t]]
    deleted = [s for s in range(len(src)) if s not in kept]
    return "refine", deleted, inserted


def structure_kind(source: str, target: str, reweighted: tuple[str, ...] = ()) -> EditKind:
    """The kind of an edit read from its prompts alone (no maps: the extent is "unread")."""
    structure, in_source, in_target = changed_words(source, target, reweighted)
    words = tuple(source.split()[i] for i in in_source) + tuple(target.split()[i] for i in in_target)
    return EditKind(structure, "unread", float("nan"), words)


def spread(m: torch.Tensor) -> float:
    """Participation ratio (sum m)^2 / (n sum m^2) of a non-negative map [h, w]."""
    m = m.float().clamp(min=0).flatten()
    energy = float((m * m).sum())
    return float(m.sum() ** 2 / (m.numel() * energy)) if energy > 0 else 1.0


@dataclass(frozen=True)
class Probe:
    """One conditional UNet pass of every prompt on the source latent: what `edit_kinds` reads."""

    maps: torch.Tensor | None  # [B, h, w, L] cross-attention, averaged over layers and heads, at the finest
    #                            resolution (None: not recorded, `probe(maps=False)`)
    eps: torch.Tensor   # [B, C, h, w] the UNet's predictions (noise, or v for v-prediction models)


@torch.no_grad()
def probe(model, z: torch.Tensor, t, cond: torch.Tensor, step: int, maps: bool = True) -> Probe:
    """One conditional UNet pass of every prompt (cond [B, L, D]) on the source latent z [1, C, h, w]
    at timestep t: its predictions and, with `maps`, its cross-attention maps (only re-weightings read
    them; recording them holds every layer's attention). Costs B UNet passes."""
    def run():
        return model(z.expand(len(cond), -1, -1, -1), t, cond, step=step, cond_rows=slice(0, len(cond)))

    if not maps:
        return Probe(None, run().float())
    control = AttentionControl(tuple(z.shape[-2:]))
    with controlled(model, control):
        eps = run()
    return Probe(control.cross_maps(), eps.float())


def _shares(maps: torch.Tensor, words: list[list[int]]) -> torch.Tensor:
    """maps [h, w, L] as each cell's share of the attention it gives the prompt's words (start token and
    padding left out): which word a cell looks at, whatever its total."""
    positions = [p for w in words for p in w]
    total = maps[..., positions].sum(-1, keepdim=True)
    return maps / total.clamp(min=1e-12)


def _spread_of(m: torch.Tensor) -> float:
    return spread(m)  # looked up at call time (experiments swap the measure)


def edit_kinds(tokenizer, prompts: list[str], seen: Probe, reweighted: tuple[str, ...] = (),
               global_spread: float = GLOBAL_SPREAD) -> list[EditKind]:
    """The kind of each edit prompts[0] -> prompts[k], k >= 1, from the probe (module docstring): the
    spread of |eps_k - eps_0| per cell for swaps and insertions, of the words' attention for re-weightings."""
    source = prompts[0]
    kinds = []
    for row, target in enumerate(prompts[1:], start=1):
        structure, in_source, in_target = changed_words(source, target, reweighted)
        words = tuple(source.split()[i] for i in in_source) + tuple(target.split()[i] for i in in_target)
        if structure != "reweight":  # where the target's prediction differs from the source's (DiffEdit)
            s = _spread_of((seen.eps[row] - seen.eps[0]).pow(2).sum(0).sqrt())
        elif in_target:  # the re-weighted words' share of the attention
            tgt_tokens = W.word_tokens(tokenizer, target)
            shares = _shares(seen.maps[row], tgt_tokens)
            s = _spread_of(torch.cat([shares[..., tgt_tokens[i]] for i in in_target], dim=-1).mean(-1))
        else:  # nothing changed that a map could show (a re-weighting of no word)
            s = 0.0
        kinds.append(EditKind(structure, "global" if s >= global_spread else "local", round(s, 4), words))
    return kinds
