"""A small CLIP tokenizer (byte-level BPE, the format of SD's `tokenizer/` folder) for a fixed word list.

Every listed word becomes one token; any other word still tokenizes, into several pieces, exactly as
a rare word does in CLIP's 49,408-token vocabulary. Merges are built right to left ("e d</w>" then
"r ed</w>"): a merge always involves the end-of-word symbol, so in any word only its last pair can
ever merge, and no word's merges can break another word apart.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def byte_symbols() -> dict[int, str]:
    """GPT-2/CLIP byte-level BPE alphabet: printable bytes stand for themselves, the rest map to 256+."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = {}, 0
    for b in range(256):
        if b in printable:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    return symbols


def build_tokenizer(words: list[str], out_dir: str | Path, model_max_length: int = 77) -> CLIPTokenizer:
    """Write vocab.json, merges.txt and the tokenizer config to `out_dir` and return the tokenizer."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chars = list(byte_symbols().values())
    vocab: list[str] = chars + [c + "</w>" for c in chars]
    merges: list[str] = []
    for word in sorted(set(w.lower() for w in words)):
        symbols = [byte_symbols()[b] for b in word.encode("utf-8")]
        suffix = symbols[-1] + "</w>"
        for symbol in reversed(symbols[:-1]):
            merge = f"{symbol} {suffix}"
            suffix = symbol + suffix
            if merge not in merges:
                merges.append(merge)
                vocab.append(suffix)
    vocab = list(dict.fromkeys(vocab)) + [BOS, EOS]
    ids = {t: i for i, t in enumerate(vocab)}
    (out_dir / "vocab.json").write_text(json.dumps(ids, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(
        vocab=ids, merges=[tuple(m.split(" ")) for m in merges],
        bos_token=BOS, eos_token=EOS, unk_token=EOS, pad_token=EOS, model_max_length=model_max_length,
    )
    tokenizer.save_pretrained(out_dir)
    return tokenizer
