"""The word vocabulary and its multi-hot targets (Reverse Stable Diffusion, Croitoru et al. 2024,
method: "joint prompt regression and multi-label vocabulary classification").

The paper adds a classification task to the embedding regression: predict which of the 1,000 most
frequent adjectives, nouns and verbs of the training prompts occur in a prompt. Words are lower
case, alphabetic, with stopwords removed.

Finding adjectives, nouns and verbs needs a part-of-speech tagger, and both usual taggers need
data downloaded at run time (spaCy's `en_core_web_sm`, NLTK's perceptron tagger). `Vocabulary.build`
uses one when it is installed and works, and otherwise keeps the most frequent words of any part of
speech. The rule used is recorded in `Vocabulary.rule` and in the saved file.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import InputError

# NLTK's English stopword list (179 words), built in because NLTK's data cannot be downloaded here.
# It includes the pieces that splitting on non-letters leaves from contractions: "don't" -> don, t.
STOPWORDS: frozenset[str] = frozenset("""
i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself yourselves
he him his himself she she's her hers herself it it's its itself they them their theirs themselves
what which who whom this that that'll these those am is are was were be been being have has had
having do does did doing a an the and but if or because as until while of at by for with about
against between into through during before after above below to from up down in out on off over
under again further then once here there when where why how all any both each few more most other
some such no nor not only own same so than too very s t can will just don don't should should've
now d ll m o re ve y ain aren aren't couldn couldn't didn didn't doesn doesn't hadn hadn't hasn
hasn't haven haven't isn isn't ma mightn mightn't mustn mustn't needn needn't shan shan't shouldn
shouldn't wasn wasn't weren weren't won won't wouldn wouldn't
""".split())

_LETTERS = re.compile(r"[^\W\d_]+")  # runs of letters (any alphabet); digits, "_" and the rest split

RULES = ("auto", "pos:spacy", "pos:nltk", "frequency")


def words(text: str) -> list[str]:
    """The runs of letters in `text`, in order, case kept: "Red, 8k circle!" -> [Red, k, circle]."""
    return _LETTERS.findall(text)


def normalise(prompt: str) -> list[str]:
    """The prompt as the paper's words: lower case, alphabetic only, stopwords removed.

    "A Red, circle!" -> ["red", "circle"]. Splitting is on every non-letter, so "8k" gives "k" and
    "don't" gives "don", "t" (both stopwords). Repeated words are kept, in order.
    """
    if not isinstance(prompt, str):
        raise InputError(f"a prompt must be a string, not {type(prompt).__name__}: pass the prompt text")
    return [w for w in (w.lower() for w in words(prompt)) if w not in STOPWORDS]


@dataclass
class Vocabulary:
    """The classification vocabulary: `words[i]` is class i; `rule` says how the words were chosen.

    `rule` is "pos:spacy" or "pos:nltk" (most frequent adjectives, nouns and verbs, as in the paper)
    or "frequency" (most frequent normalised words of any part of speech, when no tagger is usable).
    """

    words: list[str]
    rule: str
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        self.words = list(self.words)
        self.index = {w: i for i, w in enumerate(self.words)}
        if len(self.index) != len(self.words):
            repeated = sorted(w for w, n in Counter(self.words).items() if n > 1)
            raise InputError(f"vocabulary words repeat: {repeated[:10]}; give each word once")

    def __len__(self) -> int:
        return len(self.words)

    @classmethod
    def build(cls, prompts: Iterable[str], size: int = 1000, rule: str = "auto") -> Vocabulary:
        """The `size` most frequent words of the prompts, ties broken alphabetically.

        rule="auto" uses a part-of-speech tagger if one is usable (spaCy with `en_core_web_sm`,
        else NLTK with its tagger data) and keeps adjectives, nouns and verbs; otherwise it counts
        all normalised words ("frequency"). Pass rule="frequency" (or a "pos:..." rule) to choose.
        Words are counted once per occurrence, as in the reference. Fewer than `size` distinct words
        give a smaller vocabulary.
        """
        if not isinstance(size, int) or size < 1:
            raise InputError(f"size must be a positive integer, not {size!r}")
        if rule not in RULES:
            raise InputError(f"unknown vocabulary rule {rule!r}; use one of {list(RULES)}")
        if isinstance(prompts, str):
            raise InputError("prompts must be a list of prompts, not one string: wrap it in a list")
        rule, tagged_words = _word_reader(rule)
        counts = Counter(w for prompt in prompts for w in tagged_words(prompt))
        if not counts:
            raise InputError("the prompts contain no words outside the stopwords: pass the training prompts")
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        return cls(words=[w for w, _ in ranked[:size]], rule=rule)

    def targets(self, prompts: list[str]) -> torch.Tensor:
        """Multi-hot targets [B, V] (float32): 1 where a vocabulary word occurs in the prompt.

        Prompts go through the same `normalise` as building, so "Red, circle!" marks "red" and
        "circle". (The reference code builds the vocabulary from lower-cased words but looks up the
        raw NLTK tokens, so capitalised words never match; we do not copy that.)
        """
        if isinstance(prompts, str):
            raise InputError("targets() takes a list of prompts, not one string: wrap it in a list")
        out = torch.zeros(len(prompts), len(self.words), dtype=torch.float32)
        for row, prompt in enumerate(prompts):
            columns = [self.index[w] for w in normalise(prompt) if w in self.index]
            out[row, columns] = 1.0
        return out

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as JSON: {"rule": ..., "words": [...]}."""
        Path(path).write_text(json.dumps({"rule": self.rule, "words": self.words}, indent=0) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """Read a vocabulary written by `save`."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"no vocabulary file at {path}: build one with Vocabulary.build(...).save(path)")
        try:
            data = json.loads(path.read_text())
            return cls(words=data["words"], rule=data["rule"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise InputError(f"{path} is not a vocabulary file ({e}); write it with Vocabulary.save") from None


# --- Which words to count -------------------------------------------------------------------------

# Adjectives, nouns and verbs: spaCy's coarse tags, and the Penn Treebank tag prefixes NLTK gives.
_SPACY_POS = {"ADJ", "NOUN", "PROPN", "VERB"}  # PROPN: Penn's NNP (a proper noun) is an NN* too
_PENN_PREFIXES = ("JJ", "NN", "VB")


def _word_reader(rule: str) -> tuple[str, Callable[[str], list[str]]]:
    """(rule actually used, function prompt -> the words to count), following `Vocabulary.build`."""
    taggers = (("pos:spacy", _spacy_reader, "spaCy and its model: "
                "pip install spacy && python -m spacy download en_core_web_sm"),
               ("pos:nltk", _nltk_reader, "NLTK and its tagger data: "
                "pip install nltk && python -m nltk.downloader averaged_perceptron_tagger_eng"))
    for name, load_reader, needs in taggers:
        if rule in ("auto", name):
            reader = load_reader()
            if reader is not None:
                return name, reader
            if rule == name:
                raise InputError(f"rule {name!r} needs {needs}")
    return "frequency", normalise


def _spacy_reader() -> Callable[[str], list[str]] | None:
    try:
        import spacy

        nlp = spacy.load("en_core_web_sm", disable=["parser", "ner", "lemmatizer"])
    except (ImportError, OSError):  # OSError: spaCy is there but the model is not
        return None

    def read(prompt: str) -> list[str]:
        # Each tagged token goes through `normalise`, so the words are the ones `targets` will look for.
        return [w for token in nlp(prompt) if token.pos_ in _SPACY_POS for w in normalise(token.text)]

    return read


def _nltk_reader() -> Callable[[str], list[str]] | None:
    try:
        import nltk

        nltk.pos_tag(["a", "red", "circle"])  # raises LookupError when the tagger data is missing
    except (ImportError, LookupError):
        return None

    def read(prompt: str) -> list[str]:
        # Our own split into letter runs (NLTK's word_tokenize needs more downloaded data).
        tagged = nltk.pos_tag(words(prompt))
        return [w.lower() for w, tag in tagged if tag.startswith(_PENN_PREFIXES) and w.lower() not in STOPWORDS]

    return read
