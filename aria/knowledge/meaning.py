"""Meaning, for questions that share few words with the passage that answers them: a static embedding model
(WordLlama's l2_supercat, 256 dimensions, whose weights and tokenizer ship inside the `wordllama` wheel, so it
loads offline in a fraction of a second and never downloads anything).

The model loads on the first search, not when Aria starts, so start-up and idle memory stay as they were until
notes are asked about. Passages are embedded when they are first ranked and kept by text in a bounded cache: a
search embeds the candidates BM25 found and, while the notes are few (search.py), every note once.
"""

from __future__ import annotations

import logging
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
FEEDBACK_TOP = 3
FEEDBACK_WEIGHT = 0.2


class Embedder:
    """Unit vectors for texts, so a dot product is their cosine similarity."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self._cache: OrderedDict[str, Vectors] = OrderedDict()
        self._lock = threading.Lock()  # searches may come from more than one thread

    def vectors(self, texts: Sequence[str]) -> Vectors:
        """One unit vector per text, in order (cached texts are not embedded again)."""
        import numpy as np

        if not texts:
            return np.zeros((0, 0), np.float32)
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
            found = dict(zip(missing, self._embed(missing), strict=True)) if missing else {}
            found.update((t, self._cache[t]) for t in texts if t not in found)
            for text, vector in found.items():  # the newest at the end, the oldest dropped first
                self._cache[text] = vector
                self._cache.move_to_end(text)
            while len(self._cache) > CACHED_PASSAGES:
                self._cache.popitem(last=False)
        return np.stack([found[t] for t in texts])

    def _embed(self, texts: list[str]) -> Vectors:
        import numpy as np

        # A text of no known token has no direction: its zero vector is similar to nothing (not NaN).
        with np.errstate(invalid="ignore", divide="ignore"):
            vectors = np.asarray(self._model.embed(texts, norm=True), dtype=np.float32)
        return np.nan_to_num(vectors, nan=0.0, posinf=0.0, neginf=0.0)

    def forget(self) -> None:
        """Drop every cached vector (the bench measures cold searches)."""
        with self._lock:
            self._cache.clear()

    def similarities(self, query: str, texts: Sequence[str]) -> list[float]:
        """Cosine similarity of `query` to each text."""
        if not texts:
            return []
        question = self._embed([query])[0]
        return [float(s) for s in self.vectors(texts) @ question]

    def similarities_with_feedback(self, query: str, texts: Sequence[str]) -> tuple[list[float], list[float]]:
        """Cosine similarity of `query` to each text, and of the query moved towards its nearest texts (pseudo-
        relevance feedback: better for ranking, but not evidence that any text answers the question)."""
        import numpy as np

        if not texts:
            return [], []
        question = self._embed([query])[0]
        vectors = self.vectors(texts)
        plain = vectors @ question
        nearest = np.argsort(-plain)[:FEEDBACK_TOP]
        moved = question + FEEDBACK_WEIGHT * vectors[nearest].mean(axis=0)
        length = float(np.linalg.norm(moved))
        expanded = vectors @ (moved / length) if length > 0 else plain
        return [float(s) for s in plain], [float(s) for s in expanded]


@cache
def shared_embedder() -> Embedder | None:
    """The process's embedder, loaded once from the wheel's own files; None (lexical search only) when the
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
    return Embedder(model)
