"""Meaning, for questions that share few words with the passage that answers them, from two models that load
offline and never download anything:

- a static embedding model (WordLlama's l2_supercat, 256 dimensions, whose weights and tokenizer ship inside the
  `wordllama` wheel): a text's vector is a weighted mean of its tokens' vectors, so it costs microseconds;
- a contextual sentence encoder (all-MiniLM-L6-v2, `contextual.py`): far better at paraphrase, and about 11 ms a
  passage, so it is used only while the notes are few enough to embed each once and keep its vector in the ledger
  (search.py). There the two are blended: the mean of their cosine similarities, which on the labelled set finds
  paraphrases neither finds alone without answering more unanswerable questions.

The models load on the first search, not when Aria starts, so start-up and idle memory stay as they were until
notes are asked about. Vectors are kept by text in a bounded cache.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy is imported on the first search, not when Aria starts
    import numpy as np
    from numpy.typing import NDArray

    Vectors = NDArray[np.float32]

log = logging.getLogger(__name__)
CACHED_PASSAGES = 50_000  # vectors kept (256 float32 each: ~50 MB at most)
# Pseudo-relevance feedback: the question's vector moved this far towards the mean of its FEEDBACK_TOP nearest
# texts, so a passage worded like the best matches (rather than like the question) is found too. Picked on the
# labelled set's tuning half; the bench reports the held-out half beside it.
STATIC_NAME = "wordllama-l2_supercat-256"
CACHED_QUESTIONS = 16
FEEDBACK_TOP = 3
FEEDBACK_WEIGHT = 0.2


class Embedder:
    """Unit vectors for texts, so a dot product is their cosine similarity."""

    def __init__(self, model: Any, name: str, *, kept: bool = False) -> None:
        self._model = model
        self.name = name  # stored vectors are kept under this name: another model's are not used
        self.kept = kept  # its vectors are worth storing (they cost more to make than to read)
        self._cache: OrderedDict[str, Vectors] = OrderedDict()
        self._questions: OrderedDict[str, Vectors] = OrderedDict()
        self._lock = threading.Lock()  # searches may come from more than one thread

    def vectors(self, texts: Sequence[str]) -> Vectors:
        """One unit vector per text, in order (cached texts are not embedded again)."""
        import numpy as np

        if not texts:
            return np.zeros((0, 0), np.float32)
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
            found = dict(zip(missing, self.embed(missing), strict=True)) if missing else {}
            found.update((t, self._cache[t]) for t in texts if t not in found)
            for text, vector in found.items():  # the newest at the end, the oldest dropped first
                self._cache[text] = vector
                self._cache.move_to_end(text)
            while len(self._cache) > CACHED_PASSAGES:
                self._cache.popitem(last=False)
        return np.stack([found[t] for t in texts])

    def embed(self, texts: Sequence[str]) -> Vectors:
        """One unit vector per text, not cached."""
        import numpy as np

        # A text of no known token has no direction: its zero vector is similar to nothing (not NaN).
        with np.errstate(invalid="ignore", divide="ignore"):
            vectors = np.asarray(self._model.embed(list(texts), norm=True), dtype=np.float32)
        return np.nan_to_num(vectors, nan=0.0, posinf=0.0, neginf=0.0)

    def _question(self, query: str) -> Vectors:
        """The question's vector: a search compares it with every note, then with its candidates."""
        with self._lock:
            if query in self._questions:
                return self._questions[query]
        vector: Vectors = self.embed([query])[0]
        with self._lock:
            self._questions[query] = vector
            while len(self._questions) > CACHED_QUESTIONS:
                self._questions.popitem(last=False)
        return vector

    def holds(self, text: str) -> bool:
        """Whether `text`'s vector is in this process's cache."""
        with self._lock:
            return text in self._cache

    def prime(self, vectors: dict[str, Vectors]) -> None:
        """Take vectors embedded earlier (kept in the ledger) as this process's own, so they are not embedded again."""
        with self._lock:
            for text, vector in vectors.items():
                self._cache[text] = vector
            while len(self._cache) > CACHED_PASSAGES:
                self._cache.popitem(last=False)

    def forget(self) -> None:
        """Drop every cached vector (the bench measures cold searches)."""
        with self._lock:
            self._cache.clear()
            self._questions.clear()

    def similarities(self, query: str, texts: Sequence[str]) -> list[float]:
        """Cosine similarity of `query` to each text."""
        if not texts:
            return []
        question = self._question(query)
        return [float(s) for s in self.vectors(texts) @ question]

    def similarities_with_feedback(self, query: str, texts: Sequence[str]) -> tuple[list[float], list[float]]:
        """Cosine similarity of `query` to each text, and of the query moved towards its nearest texts (pseudo-
        relevance feedback: better for ranking, but not evidence that any text answers the question)."""
        import numpy as np

        if not texts:
            return [], []
        question = self._question(query)
        vectors = self.vectors(texts)
        plain = vectors @ question
        nearest = np.argsort(-plain)[:FEEDBACK_TOP]
        moved = question + FEEDBACK_WEIGHT * vectors[nearest].mean(axis=0)
        length = float(np.linalg.norm(moved))
        expanded = vectors @ (moved / length) if length > 0 else plain
        return [float(s) for s in plain], [float(s) for s in expanded]


class Blend:
    """Two models' unit vectors side by side, each scaled by √½, so the dot product of two blended vectors is the
    mean of the two models' cosine similarities (equal weights: the untuned choice; on the labelled set's tuning half
    a 0.3 share for the encoder ties with it, and 0.7 finds less)."""

    def __init__(self, static: Embedder, contextual: Any) -> None:
        self.static, self.contextual = static, contextual

    def embed(self, texts: Sequence[str], norm: bool = True) -> Vectors:
        import numpy as np

        half = np.float32(math.sqrt(0.5))
        blended: Vectors = np.concatenate([self.static.embed(texts) * half, self.contextual.embed(texts) * half],
                                          axis=1)
        return blended


@cache
def blended_embedder() -> Embedder | None:
    """The static model blended with the sentence encoder; the static model alone when the encoder is missing (with
    a warning); None when neither loads."""
    from aria.knowledge.contextual import NAME, load_contextual

    static = static_embedder()
    if static is None:
        return None
    contextual = load_contextual()
    if contextual is None:
        return static
    return Embedder(Blend(static, contextual), f"{static.name}+{NAME}", kept=True)


@cache
def static_embedder() -> Embedder | None:
    """The process's static embedder, loaded once from the wheel's own files; None (lexical search only) when the
    package or its files are missing."""
    try:
        import wordllama  # imports numpy, tokenizers and safetensors: only when notes are first searched
        from wordllama import WordLlama

        # The wheel keeps its tokenizer in `tokenizers/`, which `load()` looks for only under a cache folder:
        # the package's own folder is that cache, and downloads stay off.
        model = WordLlama.load(cache_dir=Path(wordllama.__file__).parent, disable_download=True)
    except (ImportError, OSError, ValueError) as exc:
        log.warning("notes are searched by their words only: the embedding model did not load (%s)", exc)
        return None
    return Embedder(model, STATIC_NAME)
