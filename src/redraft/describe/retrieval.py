"""Nearest known prompts for a predicted embedding (Reverse Stable Diffusion, Croitoru et al. 2024:
the model predicts a prompt *embedding*; to get text back we retrieve from a bank of known prompts,
as the Kaggle "Image to Prompts" entries the reference lists do), optionally re-ranked by the
vocabulary words the classification head predicts.

Scale: DiffusionDB has 1.5M unique prompts. The bank keeps their unit-norm embeddings as one float16
matrix (1.5M x 384 x 2 bytes = 1.2 GB) and searches it in chunks of rows: each chunk is turned to
float32, multiplied with the queries and cut to its top k with `torch.topk`, so extra memory stays
at one chunk. That is exact (brute-force) search, on the CPU: each call makes one pass over the
matrix whatever the number of queries, so search many queries per call. (No FAISS path: exact
search is simple and fast enough for a bank of this size.)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import InputError
from .vocabulary import Vocabulary, normalise

RERANK_CANDIDATES = 50  # re-ranking re-scores the top max(k, 50) prompts by cosine


class PromptBank:
    """Known prompts and their sentence embeddings: `search(query, k)` finds the nearest by cosine."""

    def __init__(self, prompts: list[str], embeddings: torch.Tensor):
        if isinstance(prompts, str):
            raise InputError("prompts must be a list of prompts, not one string: wrap it in a list")
        self.prompts = list(prompts)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(self.prompts):
            raise InputError(f"embeddings must be [number of prompts = {len(self.prompts)}, dim], "
                             f"not {list(embeddings.shape)}: embed every prompt once")
        # Unit rows, so that a dot product is the cosine; float16 halves the memory.
        self.embeddings = F.normalize(embeddings.detach().float().cpu(), dim=-1).half().contiguous()

    def __len__(self) -> int:
        return len(self.prompts)

    @classmethod
    def build(cls, prompts: list[str], embedder, batch_size: int = 256, block: int = 65536) -> PromptBank:
        """Embed the prompts with `embedder` (a `SentenceEmbedder`) into a bank. Repeated prompts are
        kept once (first occurrence). Embeds `block` prompts at a time, so float32 copies of the
        whole matrix never exist."""
        unique = list(dict.fromkeys(prompts))
        if not unique:
            raise InputError("no prompts to build a bank from: pass the known prompts")
        parts = [embedder.encode(unique[i:i + block], batch_size=batch_size).half()
                 for i in range(0, len(unique), block)]
        return cls(unique, torch.cat(parts))

    def search(self, query: torch.Tensor, k: int = 5, word_probs: torch.Tensor | None = None,
               vocabulary: Vocabulary | None = None, alpha: float = 0.3, threshold: float = 0.5,
               chunk_size: int = 65536) -> list[list[tuple[str, float]]]:
        """For each query embedding [B, D] (or one [D]), the k best prompts as (prompt, cosine).

        Without `word_probs`: the k nearest prompts by cosine, best first.

        With `word_probs` [B, V] (word probabilities, i.e. sigmoid of the logits) and the
        `vocabulary` they refer to: the top max(k, 50) prompts by cosine are re-scored and the best
        k by the new score returned (still paired with their cosine). For a candidate prompt with
        vocabulary words W (its `normalise`d words that are in the vocabulary) and the predicted
        words P = {w : p_w >= threshold}:

            score = cosine + alpha * (support - missed)
            support = mean of p_w over W (0 if W is empty): do the predictions back its words?
            missed  = sum of p_w over P not in W, divided by |P| (0 if P is empty): how much of
                      the predicted words it lacks.
        """
        if query.ndim == 1:
            query = query[None]
        if query.ndim != 2 or query.shape[1] != self.embeddings.shape[1]:
            raise InputError(f"query must be [B, {self.embeddings.shape[1]}] embeddings, not {list(query.shape)}")
        if not isinstance(k, int) or k < 1:
            raise InputError(f"k must be a positive integer, not {k!r}")
        if (word_probs is None) != (vocabulary is None):
            raise InputError("re-ranking needs both word_probs and the vocabulary they refer to (or neither)")
        if word_probs is not None:
            self._check_word_probs(word_probs, vocabulary, len(query))
        k = min(k, len(self))
        n_candidates = k if word_probs is None else min(len(self), max(k, RERANK_CANDIDATES))
        cosines, rows = self._nearest(F.normalize(query.detach().float().cpu(), dim=-1), n_candidates, chunk_size)
        results = []
        for b in range(len(query)):
            candidates = [(self.prompts[j], c) for j, c in zip(rows[b].tolist(), cosines[b].tolist())]
            if word_probs is not None:
                probs = word_probs[b].detach().float().cpu()
                candidates.sort(key=lambda pc: -(pc[1] + alpha * word_agreement(pc[0], probs, vocabulary, threshold)))
            results.append(candidates[:k])
        return results

    def _nearest(self, query: torch.Tensor, n: int, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(cosines, row numbers), each [B, n], best first: exact search over the bank in chunks."""
        best_cos = torch.empty(len(query), 0)
        best_row = torch.empty(len(query), 0, dtype=torch.long)
        for start in range(0, len(self), chunk_size):
            chunk = self.embeddings[start:start + chunk_size].float()
            cos, row = torch.topk(query @ chunk.T, min(n, len(chunk)), dim=1)
            # Keep the n best of (best so far + this chunk's best).
            best_cos, pick = torch.topk(torch.cat([best_cos, cos], 1), min(n, best_cos.shape[1] + cos.shape[1]), dim=1)
            best_row = torch.cat([best_row, row + start], 1).gather(1, pick)
        return best_cos, best_row

    @staticmethod
    def _check_word_probs(word_probs: torch.Tensor, vocabulary: Vocabulary, batch: int) -> None:
        if word_probs.shape != (batch, len(vocabulary)):
            raise InputError(f"word_probs must be [B = {batch}, V = {len(vocabulary)}], not {list(word_probs.shape)}")
        if word_probs.min() < 0 or word_probs.max() > 1:
            raise InputError("word_probs must be probabilities in [0, 1]: pass torch.sigmoid(logits)")

    def save(self, path: str | Path) -> None:
        """Write the bank to folder `path`: embeddings.safetensors (float16) and prompts.json."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({"embeddings": self.embeddings}, path / "embeddings.safetensors")
        (path / "prompts.json").write_text(json.dumps(self.prompts, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> PromptBank:
        """Read a bank written by `save`."""
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / "embeddings.safetensors").is_file() or not (path / "prompts.json").is_file():
            raise InputError(f"{path} is not a prompt bank (needs embeddings.safetensors and prompts.json): "
                             "write one with PromptBank.build(...).save(path)")
        prompts = json.loads((path / "prompts.json").read_text(encoding="utf-8"))
        return cls(prompts, load_file(path / "embeddings.safetensors")["embeddings"])


def word_agreement(prompt: str, probs: torch.Tensor, vocabulary: Vocabulary, threshold: float = 0.5) -> float:
    """support - missed for one candidate prompt and one row of word probabilities [V] (see `search`)."""
    own = {vocabulary.index[w] for w in normalise(prompt) if w in vocabulary.index}
    support = probs[list(own)].mean().item() if own else 0.0
    predicted = (probs >= threshold).nonzero().flatten().tolist()
    lacked = [i for i in predicted if i not in own]
    missed = probs[lacked].sum().item() / len(predicted) if predicted else 0.0
    return support - missed
